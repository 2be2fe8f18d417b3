"""`indexer evaluate ORIGINALS`: recall and false positives of every matching method."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any, TypeVar

from hashsvc.errors import HashsvcError
from indexer.commands.common import add_command, home, say, show_progress
from indexer.evaluation import operating, report
from indexer.evaluation.hashing import METHODS
from indexer.evaluation.run import Config, evaluate
from indexer.evaluation.transforms import BY_NAME, SUITE

T = TypeVar("T")


def register(subcommands: Any) -> None:
    parser = add_command(
        subcommands, "evaluate",
        "Measure detection quality before switching a bank on: apply a deterministic suite of "
        "edits (re-encode, resize, crop, pad, letterbox, rotations, mirror, colour, blur, noise, "
        "overlay, screenshot, combinations) to each original, hash originals and copies with "
        "the product's own code for every method (PDQ, PDQ+dihedral, pHash, dHash, hashsvc's "
        "strategies), and report recall per transform and threshold, the false-positive rate "
        "over all pairs of distinct originals, and the threshold for a target rate. Writes "
        "report.md, results.json and PNG plots to --out.",
        "indexer evaluate ./photos --out ./eval --target-fpr 1e-6", _run,
    )
    parser.add_argument("originals", type=Path, help="a folder of distinct original images")
    parser.add_argument("--negatives", type=Path, action="append", default=[],
                        help="a folder of images distinct from every original: more pairs "
                        "for the false-positive rate and the tail model (repeatable)")
    parser.add_argument("--out", type=Path,
                        help="output folder (default ./evaluation)")
    parser.add_argument("--to-home", action="store_true",
                        help="write into <home>/evaluation instead, replacing the previous "
                        "report as a whole, where `hashsvc serve` shows it (GetEvaluationReport, "
                        "the console's Evaluation page)")
    parser.add_argument("--limit", type=int, help="use only the first N originals")
    parser.add_argument("--transformed", type=int, metavar="N",
                        help="apply the transform suite to the first N originals only "
                        "(default all; false positives always use every original)")
    parser.add_argument("--transforms", help="comma-separated subset of the suite: "
                        + ", ".join(t.name for t in SUITE))
    parser.add_argument("--methods", help="comma-separated subset of: "
                        + ", ".join(m.name for m in METHODS))
    parser.add_argument("--target-fpr", type=float, default=1e-6,
                        help="false-positive rate per pair to find thresholds for "
                        "(default 1e-6)")
    parser.add_argument("--list-size", type=int, default=10_000_000, metavar="N",
                        help="entries of the list an upload is compared with, for the expected "
                        "false matches per upload (default 10,000,000)")
    parser.add_argument("--target-per-upload", type=float, default=1e-6,
                        help="expected false matches per upload against --list-size entries "
                        "to find thresholds for (default 1e-6: one per million uploads)")
    parser.add_argument("--write-calibration", type=Path, metavar="PATH",
                        help="also write the tail model's parameters as the calibration data "
                        "file the server scores matches with (hashsvc/matching/calibration.json)")
    parser.add_argument("--workers", type=int, help="processes (default: number of cores)")


def _run(args: argparse.Namespace) -> int:
    if not args.originals.is_dir():
        raise HashsvcError(f"{args.originals}: not a folder of images")
    if not 0 < args.target_fpr < 1:
        raise HashsvcError(f"--target-fpr must be between 0 and 1, got {args.target_fpr}")
    if args.list_size < 1:
        raise HashsvcError(f"--list-size must be at least 1, got {args.list_size}")
    if not args.target_per_upload > 0:
        raise HashsvcError(f"--target-per-upload must be above 0, got {args.target_per_upload}")
    for folder in args.negatives:
        if not folder.exists():
            raise HashsvcError(f"--negatives {folder}: no such file or folder")
    if args.to_home and args.out is not None:
        raise HashsvcError("give --out or --to-home, not both")
    out: Path = home(args).evaluation_dir if args.to_home else args.out or Path("evaluation")
    config = Config(
        originals=args.originals, negatives=tuple(args.negatives), limit=args.limit,
        list_size=args.list_size, target_per_upload=args.target_per_upload,
        transformed=args.transformed,
        methods=_pick(args.methods, {m.name: m for m in METHODS}, "method"),
        transforms=_pick(args.transforms, BY_NAME, "transform"),
        target_fpr=args.target_fpr, workers=args.workers, progress=show_progress(),
    )
    # Said before the run (minutes long), and again with the results, not discovered after.
    if missing_plots := report.plots_unavailable():
        say(f"warning: plots will not be drawn: {missing_plots}")
    evaluation = evaluate(config)
    # To the home: written beside, then swapped in, so the server never reads half a report.
    written = out.with_name(f"{out.name}.new-{os.getpid()}") if args.to_home else out
    written.mkdir(parents=True, exist_ok=True)
    summary = report.summarise(evaluation, operating.analyse(evaluation))
    report.write_json(summary, written / "results.json")
    if args.write_calibration:
        command = "indexer " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        data = operating.calibration(summary["operating_point"], evaluation.comparisons,
                                     evaluation.references, command)
        args.write_calibration.write_text(json.dumps(data, indent=1) + "\n")
        say(f"calibration written to {args.write_calibration}")
    plots = report.plot(summary, written)
    (written / "report.md").write_text(report.markdown(summary, plots))
    if written != out:
        _swap_in(written, out)
    say(f"evaluated {summary['originals']:,} originals, {summary['copies']:,} copies, "
        f"{summary['pairs']:,} pairs in {summary['seconds']:.0f} s: {out / 'report.md'}")
    point = summary["operating_point"]
    for name, method in summary["methods"].items():
        upload = point["methods"][name]
        say(f"  {name:16} at {method['default_threshold']}: "
            f"{upload['per_upload_at_default']:.2g} false matches per upload against "
            f"{config.list_size:,}; recall {100 * method['recall_at_default']:.1f}% "
            f"(threshold {upload['threshold_at_target']} for <= {config.target_per_upload:g} "
            f"per upload: {100 * method['recall_at_upload_target']:.1f}%)")
    if missing_plots:
        say(f"warning: no plots were drawn: {missing_plots}; the report and results.json "
            "are complete")
    if summary["pairs"] * config.target_fpr < 1:
        say(f"warning: {summary['pairs']:,} pairs cannot resolve a false-positive rate of "
            f"{config.target_fpr:g}: the thresholds for it are optimistic; use more originals "
            "or --negatives")
    if summary["refused_copies"]:
        say(f"{len(summary['refused_copies'])} cop(ies) over a scan's limits counted as misses "
            "(see the report)")
    if summary["errors"]:
        say(f"{len(summary['errors'])} image(s) could not be evaluated (see the report)")
        return 3
    return 0


def _swap_in(new: Path, final: Path) -> None:
    """Replace `final` with the folder `new`: two renames, so a reader sees the old report or
    the new one, and for an instant none (it then answers NOT_FOUND), never a mix."""
    old = final.with_name(f"{final.name}.old-{os.getpid()}")
    if final.exists():
        final.rename(old)
    new.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _pick(text: str | None, known: dict[str, T], what: str) -> tuple[T, ...]:
    if not text:
        return tuple(known.values())
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise HashsvcError(f"unknown {what}(s) {', '.join(unknown)} (known: {', '.join(known)})")
    return tuple(known[n] for n in names)
