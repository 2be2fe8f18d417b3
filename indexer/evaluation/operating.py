"""The operating point: expected false matches per upload against a list of N entries.

Per algorithm and way of matching, the tail model (`indexer.evaluation.tail`) is chosen by the
held-out check, fitted on every comparison, and resampled over images for its uncertainty. Per
method and threshold t, the expected false matches per upload against N entries are
N · Σ_ways k_way · F_way(t - margin_way) (margin only for ways other than plain, as the
matcher applies it), where k_way is that method's comparisons per entry and upload. This is
the expected number of false matching entries (an upper bound on the chance of any false
alarm). Thresholds for a target are chosen on the bootstrap's 95th percentile, not its median.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import numpy as np
import numpy.typing as npt

from hashsvc.hashing.algorithms import get_algorithm
from hashsvc.matching.calibration import PLAIN
from hashsvc.matching.strategies import MatchStrategies
from indexer.evaluation.run import Evaluation
from indexer.evaluation.tail import (
    BOOTSTRAPS,
    FAMILIES,
    FIT_RATE,
    TailData,
    bootstrap_log_cdf,
    choose_family,
)

UPPER = 95  # percentile of the bootstrap used for decisions


def analyse(evaluation: Evaluation, replicates: int = BOOTSTRAPS) -> dict[str, Any]:
    """Every tail-model and per-upload figure, as plain data (part of results.json)."""
    config = evaluation.config
    algorithms: dict[str, Any] = {}
    bands: dict[str, dict[str, npt.NDArray[np.float64]]] = {}
    points: dict[str, dict[str, npt.NDArray[np.float64]]] = {}
    for algorithm, data in evaluation.tails.items():
        algorithms[algorithm], bands[algorithm], points[algorithm] = _fit_algorithm(
            data, replicates)
    methods: dict[str, Any] = {}
    for method in config.methods:
        bits = get_algorithm(method.algorithm).bits
        ways = evaluation.comparisons[method.name]
        median, upper = _per_upload(ways, bands[method.algorithm], points[method.algorithm],
                                    method.strategies, bits, config.list_size)
        allowed = np.flatnonzero(upper <= config.target_per_upload)
        at_target = int(allowed[-1]) if len(allowed) else -1
        methods[method.name] = {
            "comparisons_per_entry": {w: round(k, 4) for w, k in ways.items()},
            "per_upload": [float(f"{v:.4g}") for v in median],
            "per_upload_upper": [float(f"{v:.4g}") for v in upper],
            "threshold_at_target": at_target,
            "per_upload_at_default": float(f"{upper[method.threshold]:.4g}"),
        }
    return {
        "list_size": config.list_size,
        "target_per_upload": config.target_per_upload,
        "bootstrap_replicates": replicates,
        "upper_percentile": UPPER,
        "algorithms": algorithms,
        "methods": methods,
        "per_entry": {algorithm: {w: round(k, 4) for w, k in
                                  evaluation.comparisons[evaluation.references[algorithm]].items()}
                      for algorithm in evaluation.tails},
    }


def _fit_algorithm(data: TailData, replicates: int) -> tuple[
        dict[str, Any], dict[str, npt.NDArray[np.float64]], dict[str, npt.NDArray[np.float64]]]:
    ways: dict[str, Any] = {}
    bands: dict[str, npt.NDArray[np.float64]] = {}
    points: dict[str, npt.NDArray[np.float64]] = {}
    for way, counts in data.ways.items():
        full = counts.histogram.sum(axis=0).astype(np.float64)
        if full.sum() == 0:
            continue
        family, checks = choose_family(counts)
        fit = FAMILIES[family](full)
        points[way] = fit.log_cdf(data.bits)
        bands[way] = bootstrap_log_cdf(data, way, family, replicates)
        empirical = np.cumsum(full)
        ways[way] = {
            "family": family, "model": fit.family, "a": fit.a, "b": fit.b,
            "fit_cut": fit.fit_cut,
            "comparisons": int(full.sum()),
            "held_out": [{"family": c.family, "thresholds": c.thresholds,
                          "predicted": [round(p, 2) for p in c.predicted],
                          "observed": c.observed, "comparisons": c.comparisons,
                          "mean_abs_log10_error": round(c.error, 3)} for c in checks],
            "observed_cumulative": empirical.astype(np.int64).tolist(),
            "log10_rate": [round(float(v) / math.log(10), 3) for v in points[way]],
            "log10_rate_band": [
                [round(float(v) / math.log(10), 3) for v in np.percentile(bands[way], q, axis=0)]
                for q in (5, 50, UPPER)],
        }
    return ({"bits": data.bits, "images": data.images, "image_pairs": data.image_pairs,
             "fit_rate": FIT_RATE, "ways": ways}, bands, points)


def _per_upload(
    ways: dict[str, float], bands: dict[str, npt.NDArray[np.float64]],
    points: dict[str, npt.NDArray[np.float64]], strategies: MatchStrategies, bits: int,
    list_size: int,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(point estimate, bootstrap upper) expected false matches per upload, per threshold.
    A comparison is labelled by one way (the stored side's first, `way_of_matching`) and takes
    that way's margin; the matcher applies the largest margin of every way a match involves,
    so this never counts fewer false matches than the matcher allows."""
    thresholds = np.arange(bits + 1)
    point = np.zeros(bits + 1)
    replicas: npt.NDArray[np.float64] | None = None
    for way, k in ways.items():
        fallback = max(points, key=lambda w: points[w][bits // 4])  # unknown: most permissive
        name = way if way in points else fallback
        shift = 0 if way == PLAIN else strategies.margin(way)
        index = thresholds - shift
        valid = index >= 0
        rate = np.zeros(bits + 1)
        rate[valid] = np.exp(points[name][index[valid]])
        point += list_size * k * rate
        band = np.zeros((len(bands[name]), bits + 1))
        band[:, valid] = np.exp(bands[name][:, index[valid]])
        replicas = list_size * k * band if replicas is None else replicas + list_size * k * band
    upper = np.percentile(replicas, UPPER, axis=0) if replicas is not None else point
    return point, np.maximum(upper, point)


def calibration(analysis: dict[str, Any], comparisons: dict[str, dict[str, float]],
                reference: dict[str, str], command: str) -> dict[str, Any]:
    """The data file `hashsvc.matching.calibration` reads: per algorithm and way, the fitted
    beta-binomial and the comparisons per entry of `reference[algorithm]` (every strategy)."""
    return {
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": command,
        "note": "Written by `indexer evaluate --write-calibration`; see "
                "hashsvc/matching/calibration.py for what it means and its limits.",
        "algorithms": {
            algorithm: {
                "bits": entry["bits"], "images": entry["images"],
                "image_pairs": entry["image_pairs"],
                "ways": {
                    way: {"family": w["model"], "a": w["a"], "b": w["b"], "fitted_by": w["family"],
                          "comparisons_per_entry": round(
                              comparisons[reference[algorithm]].get(way, 1.0), 4),
                          "comparisons": w["comparisons"]}
                    for way, w in entry["ways"].items()
                },
            }
            for algorithm, entry in analysis["algorithms"].items()
        },
    }


def markdown(summary: dict[str, Any]) -> list[str]:
    """The report's first sections: the per-upload operating point and the tail model."""
    point = summary["operating_point"]
    size, target = point["list_size"], point["target_per_upload"]
    names = list(summary["methods"])
    lines = [
        f"## Operating point: false matches per upload against {size:,} entries", "",
        "Expected false matches per upload = N · Σ over ways of matching of k · F(t − margin): "
        "k = the method's hash comparisons per list entry and upload through that way (8 "
        "dihedral queries, trimmed queries, stored variants), F = the tail model's probability "
        "that one comparison of unrelated images is within that distance. Figures are the "
        f"{point['upper_percentile']}th percentile of a {point['bootstrap_replicates']}-replicate "
        "bootstrap over images (the point estimate is in results.json). Thresholds are the "
        f"largest whose figure stays ≤ {target:g} per upload.", "",
        f"| method | default threshold | false matches per upload at default | per million "
        f"uploads | threshold for ≤ {target:g} per upload | recall, all copies, at default / "
        "at that threshold |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in summary["methods"].items():
        p = point["methods"][name]
        at = p["per_upload_at_default"]
        lines.append(f"| {name} | {m['default_threshold']} | {at:.2g} | {1e6 * at:.2g} | "
                     f"{p['threshold_at_target']} | {_pct(m['recall_at_default'])} / "
                     f"{_pct(m['recall_at_upload_target'])} |")
    lines += ["", f"## Recall by transform group at ≤ {target:g} false matches per upload", "",
              "| | " + " | ".join(f"{n} ({point['methods'][n]['threshold_at_target']})"
                                  for n in names) + " |",
              "|---" * (len(names) + 1) + "|"]
    for group, row in summary["groups"].items():
        lines.append(f"| {group} | " + " | ".join(
            _pct(row["recall_at_upload_target"][n]) for n in names) + " |")
    lines += ["", "## Tail model", "",
              "Per algorithm and way of matching: every comparison of a query hash with a "
              "stored hash of a distinct image (negatives are queries only). Three model families "
              "(a beta-binomial by moments, a beta-binomial fitted to the lower tail, and a "
              "log-linear lower tail) compete on a held-out check: fitted on the comparisons "
              "within one random half of the images, each predicts the count within the other "
              "half at the six smallest thresholds where that half has at least 5; the one with "
              "the smaller "
              "mean |log10(predicted/observed)| is used, fitted again on every comparison. "
              "Below the smallest rate the data resolves (about 1/comparisons) the figures are "
              "an extrapolation of that family: trust them as an order of magnitude, with the "
              "bootstrap band as the sampling part of the error only.", "",
              "| algorithm | way | comparisons | per entry (every strategy) | family | held-out "
              "check (threshold: predicted/observed) | log10 rate per comparison at ¼, ⅛ of "
              "the bits (5–95%) |", "|---|---|---|---|---|---|---|"]
    for algorithm, entry in point["algorithms"].items():
        bits = entry["bits"]
        per_entry = point["per_entry"].get(algorithm, {})
        for way, w in entry["ways"].items():
            chosen = next(c for c in w["held_out"] if c["family"] == w["family"])
            check = ", ".join(f"{t}: {p:.3g}/{o}" for t, p, o in zip(
                chosen["thresholds"], chosen["predicted"], chosen["observed"], strict=True))
            band = "; ".join(
                f"{t}: {w['log10_rate'][t]:.1f} ({w['log10_rate_band'][0][t]:.1f} to "
                f"{w['log10_rate_band'][2][t]:.1f})" for t in (bits // 4, bits // 8))
            lines.append(f"| {algorithm} | {way} | {w['comparisons']:,} | "
                         f"{per_entry.get(way, 0):.3g} | "
                         f"{w['family']} (error {chosen['mean_abs_log10_error']}) | {check} | "
                         f"{band} |")
    return lines


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"
