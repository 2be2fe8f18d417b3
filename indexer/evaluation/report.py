"""The evaluation's outputs: JSON (every figure), a Markdown report, and PNG plots."""

from __future__ import annotations

import datetime as dt
import json
import statistics
from pathlib import Path
from typing import Any

from hashsvc.hashing.algorithms import get_algorithm
from indexer.evaluation import operating
from indexer.evaluation.metrics import recall_curve
from indexer.evaluation.run import Evaluation
from indexer.evaluation.same_photo import SAME_PHOTO_NCC, SIDE

CURVE_MAX = 64  # per-transform recall is published for thresholds 0..64 (the whole of pHash)
SWEEP = tuple(range(20, 42, 2))  # thresholds of the recall / false-match sweep in the report

# Thorn's perception benchmark, PDQ recall at 99.99% precision (the reference figures),
# keyed by the suite transform that applies the same edit.
THORN_PDQ = {"jpeg_q95": 99.9, "blur": 99.9, "overlay": 99.0, "rotate_4deg": 54.5,
             "crop_5": 9.0, "pad_20": 1.3}


def summarise(evaluation: Evaluation, point: dict[str, Any]) -> dict[str, Any]:
    """Every published figure, as plain data (the JSON output; the Markdown reads from it).
    `point` is `operating.analyse`'s: the thresholds for the per-upload target."""
    config = evaluation.config
    methods: dict[str, Any] = {}
    upload_threshold = {name: m["threshold_at_target"] for name, m in point["methods"].items()}
    for method in config.methods:
        pairs = evaluation.pairs[method.name]
        bits = get_algorithm(method.algorithm).bits
        at_target = pairs.threshold_for(config.target_fpr)
        every = [d for by_method in evaluation.distances.values() for d in by_method[method.name]]
        curve = recall_curve(every, bits)
        methods[method.name] = {
            "algorithm": method.algorithm,
            "description": method.description,
            "default_threshold": method.threshold,
            "false_positives_at_default": pairs.false_positives(method.threshold),
            "fpr_at_default": pairs.rate(method.threshold),
            "threshold_at_target": at_target,
            "fpr_at_target_threshold": pairs.rate(at_target) if at_target >= 0 else 0.0,
            "recall_at_default": _at(curve, method.threshold),
            "recall_at_target": _at(curve, at_target),
            "threshold_at_upload_target": upload_threshold[method.name],
            "recall_at_upload_target": _at(curve, upload_threshold[method.name]),
            "pair_histogram": pairs.histogram.tolist(),
            "recall_curve": [round(float(v), 6) for v in curve],
            # way of matching -> closest raw distance of each distinct pair through it
            "pair_histogram_by_way": {way: histogram.tolist()
                                      for way, histogram in (pairs.by_way or {}).items()},
        }
    transforms: dict[str, Any] = {}
    groups: dict[str, dict[str, list[int]]] = {}
    for transform in config.transforms:
        by_method = evaluation.distances[transform.name]
        row: dict[str, Any] = {"group": transform.group, "copies": 0,
                               "recall_at_default": {}, "recall_at_target": {},
                               "recall_at_upload_target": {},
                               "median_distance": {}, "recall_by_threshold": {}}
        for method in config.methods:
            values = by_method[method.name]
            row["copies"] = len(values)
            curve = recall_curve(values, get_algorithm(method.algorithm).bits)
            row["recall_at_default"][method.name] = _at(curve, method.threshold)
            row["recall_at_target"][method.name] = _at(
                curve, methods[method.name]["threshold_at_target"])
            row["recall_at_upload_target"][method.name] = _at(
                curve, upload_threshold[method.name])
            row["median_distance"][method.name] = statistics.median(values) if values else None
            row["recall_by_threshold"][method.name] = [  # [t] for t = 0..CURVE_MAX
                round(float(v), 4) for v in curve[: CURVE_MAX + 1]]
            groups.setdefault(transform.group, {}).setdefault(method.name, []).extend(values)
        transforms[transform.name] = row
    group_rows = {
        group: {
            "recall_at_default": {
                m.name: _at(recall_curve(by_method[m.name], get_algorithm(m.algorithm).bits),
                            m.threshold) for m in config.methods},
            "recall_at_target": {
                m.name: _at(recall_curve(by_method[m.name], get_algorithm(m.algorithm).bits),
                            methods[m.name]["threshold_at_target"]) for m in config.methods},
            "recall_at_upload_target": {
                m.name: _at(recall_curve(by_method[m.name], get_algorithm(m.algorithm).bits),
                            upload_threshold[m.name]) for m in config.methods},
        }
        for group, by_method in groups.items()
    }
    any_pairs = next(iter(evaluation.pairs.values()), None)
    return {
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "originals_folder": str(config.originals),
        "negatives_folders": [str(p) for p in config.negatives],
        "originals": evaluation.originals,
        "transformed_originals": evaluation.transformed,
        "negatives": evaluation.negatives,
        "copies": sum(r["copies"] for r in transforms.values()),
        "pairs": any_pairs.pairs if any_pairs else 0,
        "duplicates_skipped": evaluation.duplicates,
        "same_photo_skipped": [list(p) for p in evaluation.same_photo],
        "target_fpr": config.target_fpr,
        "seconds": round(evaluation.seconds, 1),
        "errors": evaluation.errors,
        "refused_copies": evaluation.refused,
        "methods": methods,
        "groups": group_rows,
        "transforms": transforms,
        "operating_point": point,
    }


def _at(curve: Any, threshold: int) -> float:
    return float(curve[threshold]) if 0 <= threshold < len(curve) else 0.0


def write_json(summary: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(summary, indent=1) + "\n")


def markdown(summary: dict[str, Any], plots: list[str]) -> str:
    names = list(summary["methods"])
    target = summary["target_fpr"]
    lines = [
        "# Detection quality",
        "",
        f"{summary['originals']:,} originals from `{summary['originals_folder']}`"
        + (f" and {summary['negatives']:,} negatives" if summary["negatives"] else "")
        + f": {summary['pairs']:,} ordered pairs of distinct images for false positives; "
        f"{summary['transformed_originals']:,} originals × {len(summary['transforms'])} "
        f"transforms = {summary['copies']:,} copies for recall. "
        f"{len(summary['duplicates_skipped'])} byte-identical duplicate pair(s) left out; "
        f"{len(summary['same_photo_skipped'])} pair(s) of files holding one photograph (grey "
        f"{SIDE}×{SIDE} thumbnails correlating ≥ {SAME_PHOTO_NCC} in some rotation/flip) "
        "left out"
        + "".join(f"{'; ' if i else ': '}{a} ~ {b} ({ncc})"
                  for i, (a, b, ncc) in enumerate(summary["same_photo_skipped"][:20]))
        + (" …" if len(summary["same_photo_skipped"]) > 20 else "")
        + f". Run time {summary['seconds']:.0f} s; {summary['created_at']}.",
        "",
        *operating.markdown(summary),
        "",
        "## Per pair (secondary view): methods",
        "",
        "| method | what | default threshold | false positives at default (rate) | "
        f"threshold for FPR ≤ {target:g} | recall, all copies, at default / at that threshold |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in summary["methods"].items():
        lines.append(
            f"| {name} | {m['description']} | {m['default_threshold']} | "
            f"{m['false_positives_at_default']:,} ({m['fpr_at_default']:.2g}) | "
            f"{m['threshold_at_target']} | {_pct(m['recall_at_default'])} / "
            f"{_pct(m['recall_at_target'])} |")
    for heading, key, rows in (
        ("Recall by transform group, default thresholds", "recall_at_default",
         summary["groups"]),
        (f"Recall by transform group, thresholds for FPR ≤ {target:g}", "recall_at_target",
         summary["groups"]),
        ("Recall by transform, default thresholds", "recall_at_default",
         summary["transforms"]),
    ):
        lines += ["", f"## {heading}", "", "| | " + " | ".join(names) + " |",
                  "|---" * (len(names) + 1) + "|"]
        for row_name, row in rows.items():
            lines.append(f"| {row_name} | "
                         + " | ".join(_pct(row[key][n]) for n in names) + " |")
    lines += _sweep(summary) + _ways(summary)
    lines += [
        "", "## Against Thorn's published PDQ figures", "",
        "Thorn's perception benchmark reports PDQ's recall at 99.99% precision on its own data; "
        f"here recall is at the threshold that keeps the false-positive rate ≤ {target:g} per "
        "pair on these originals (a stricter bar for a list of any size).", "",
        "| transform | Thorn, PDQ | " + " | ".join(names) + " |",
        "|---" * (len(names) + 2) + "|",
    ]
    for transform, thorn in THORN_PDQ.items():
        row = summary["transforms"].get(transform)
        if row is not None:
            lines.append(f"| {transform} | {thorn:.1f}% | "
                         + " | ".join(_pct(row["recall_at_target"][n]) for n in names) + " |")
    if summary["pairs"] * target < 1:
        lines[3:3] = ["", f"**Warning:** {summary['pairs']:,} pairs cannot resolve a "
                      f"false-positive rate of {target:g}; the thresholds for it below are "
                      "optimistic."]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    elif missing := plots_unavailable():
        lines += ["", "## Plots", "", f"Not drawn: {missing}."]
    if summary["refused_copies"]:
        lines += ["", "## Copies a scan refuses (counted as misses)", "",
                  "Their originals stay in recall and in the false-positive pairs.", ""]
        lines += [f"- {e}" for e in summary["refused_copies"]]
    if summary["errors"]:
        lines += ["", "## Errors", ""] + [f"- {e}" for e in summary["errors"]]
    return "\n".join(lines) + "\n"


def _sweep(summary: dict[str, Any]) -> list[str]:
    """Recall over all copies and false matches between distinct images, per threshold."""
    lines = ["", "## Recall and false matches over thresholds", "",
             "Recall over all copies / false matches among the distinct pairs, per threshold.",
             "", "| method | " + " | ".join(str(t) for t in SWEEP) + " |",
             "|---" * (len(SWEEP) + 1) + "|"]
    for name, m in summary["methods"].items():
        cumulative = _cumulative(m["pair_histogram"])
        lines.append(f"| {name} | " + " | ".join(
            f"{_pct(m['recall_curve'][t])} / {cumulative[t]:,}" for t in SWEEP) + " |")
    return lines


def _ways(summary: dict[str, Any]) -> list[str]:
    """Per way of matching, how close it brings distinct images: what each way costs."""
    lines = ["", "## False matches per way of matching", "",
             "Distinct pairs whose closest hashes *through that way only* (raw distance, no "
             "margin) are within the threshold, and those distances' low quantiles: what each "
             "way costs in false matches, to set its margin from.", "",
             "| method | way | minimum | 1 in 10⁴ pairs | median | "
             + " | ".join(f"≤ {t}" for t in SWEEP[::2]) + " |",
             "|---" * (5 + len(SWEEP[::2])) + "|"]
    for name, m in summary["methods"].items():
        for way, histogram in m.get("pair_histogram_by_way", {}).items():
            cumulative = _cumulative(histogram)
            total = sum(histogram[:-1])
            if not total:
                continue
            quantile = [next(d for d, c in enumerate(cumulative) if c >= share * total)
                        for share in (1e-12, 1e-4, 0.5)]
            lines.append(f"| {name} | {way} | " + " | ".join(map(str, quantile)) + " | "
                         + " | ".join(f"{cumulative[t]:,}" for t in SWEEP[::2]) + " |")
    return lines


def _cumulative(histogram: list[int]) -> list[int]:
    running, out = 0, []
    for count in histogram:
        running += count
        out.append(running)
    return out


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


PLOTS_EXTRA = "pip install 'hashsvc[evaluate]'"


def plots_unavailable() -> str | None:
    """Why the plots cannot be drawn (matplotlib, an optional extra, is missing), or None."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return f"matplotlib is not installed ({PLOTS_EXTRA})"
    return None


def plot(summary: dict[str, Any], directory: Path) -> list[str]:
    """recall_vs_fpr.png, recall_by_group.png and recall_by_transform.png; [] without
    matplotlib (`plots_unavailable` says so, for the caller to tell the user)."""
    try:
        import matplotlib  # optional: the `evaluate` extra
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    figure, axes = plt.subplots(figsize=(7, 4.5))
    total = summary["pairs"] or 1
    floor = 0.5 / total  # thresholds with no false positive at all are drawn here
    for name, m in summary["methods"].items():
        fpr, running = [], 0
        for count in m["pair_histogram"][:-1]:
            running += count
            fpr.append(max(running / total, floor))
        axes.plot(fpr, m["recall_curve"][: len(fpr)], label=name)
    axes.set_xscale("log")
    axes.set_xlim(floor / 2, 1)
    axes.axvline(summary["target_fpr"], color="grey", linestyle=":", linewidth=1)
    axes.set_xlabel(f"false-positive rate per pair of distinct images ({total:,} pairs; "
                    "none is drawn at 0.5/pairs)")
    axes.set_ylabel("recall over all transformed copies")
    axes.set_title("Recall vs false-positive rate (one point per threshold)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(directory / "recall_vs_fpr.png", dpi=110)
    plt.close(figure)

    for rows, title, name, width_inches in (
        (summary["groups"], "transform group", "recall_by_group.png", 10),
        (summary["transforms"], "transform", "recall_by_transform.png", 18),
    ):
        _bars(plt, rows, list(summary["methods"]), summary["target_fpr"], title,
              directory / name, width_inches)
    return ["recall_vs_fpr.png", "recall_by_group.png", "recall_by_transform.png"]


def _bars(plt: Any, rows: dict[str, Any], names: list[str], target: float, title: str,
          path: Path, width_inches: float) -> None:
    """Grouped bars: per row (a transform or a group), each method's recall at its threshold
    for the target false-positive rate."""
    labels = list(rows)
    figure, axes = plt.subplots(figsize=(width_inches, 5))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        values = [100 * rows[label]["recall_at_target"][name] for label in labels]
        axes.bar([x + i * width for x in range(len(labels))], values, width, label=name)
    axes.set_xticks([x + 0.4 - width / 2 for x in range(len(labels))], labels, rotation=40,
                    ha="right")
    axes.set_ylabel(f"recall (%) at FPR ≤ {target:g}")
    axes.legend(fontsize="small", ncol=len(names), loc="lower center",
                bbox_to_anchor=(0.5, 1.0), title=f"Recall by {title}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
