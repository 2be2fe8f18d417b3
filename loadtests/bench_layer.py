"""What a changes layer costs a scan: one-hash matching and ScanImage with an empty layer beside a
full-size one (snapshot/layering.py's LAYER_MAX_CHANGES), side by side, as ratios.

    python loadtests/bench_layer.py                      1M entries, a 10,000-entry layer
    python loadtests/bench_layer.py --entries 100000 --layer 10000 --rounds 200
    python loadtests/bench_layer.py --smoke              20,000 entries, 1,000-entry layer

Builds a PDQ bank shaped like a real list (make_snapshot.py) and publishes it: that version has no
layer. Then adds `--layer` PDQ entries (random codes, plus near-duplicates of the known photo's
hash so that the layer's side table reports matches too) and publishes again: a layered version
whose layer holds them all. Both are loaded as a server loads them (Delta.for_snapshot) and timed
in alternating order, so that a noisy neighbour on a shared machine slows both alike: matching
one PDQ hash (a query that matches nothing, as most uploads do, and the known photo's, which
matches), and ScanImage of the known photo (decode, 8 dihedral PDQ hashes, MD5, SHA-256, match).
Prints one JSON object: medians and p99s in milliseconds and the full/empty ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # run as `python loadtests/bench_layer.py`
    sys.path.insert(0, str(_ROOT))

import numpy as np  # noqa: E402

from hashsvc.hashing.algorithms import PDQ, HashValue  # noqa: E402
from hashsvc.hashing.imaging import Upload  # noqa: E402
from hashsvc.home import DataHome  # noqa: E402
from hashsvc.matching.delta import Delta  # noqa: E402
from hashsvc.matching.matcher import Matcher, Query  # noqa: E402
from hashsvc.scanner import Scanner  # noqa: E402
from hashsvc.snapshot import load_current, publish  # noqa: E402
from hashsvc.snapshot.layering import LAYER_MAX_CHANGES  # noqa: E402
from hashsvc.store import NewEntry, SqliteStore  # noqa: E402
from loadtests.loadgen import default_photo  # noqa: E402
from loadtests.make_snapshot import BANK, build_home  # noqa: E402


def _served(store: SqliteStore, home: DataHome) -> Matcher:
    snapshot = load_current(home.snapshots_dir)
    changes = store.changes_since(int(snapshot.manifest["store_revision"]))
    return Matcher(snapshot, Delta.for_snapshot(snapshot, changes, store.list_banks()))


def _time(task: Callable[[], object]) -> float:
    started = time.perf_counter()
    task()
    return (time.perf_counter() - started) * 1000


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"median_ms": round(statistics.median(ordered), 4),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 4)}


def run(home: Path, entries: int, layer: int, rounds: int) -> dict[str, Any]:
    build_home(home, entries)
    data_home = DataHome(home)
    photo = default_photo()
    image = photo.read_bytes()
    known = PDQ.compute(Upload(image)).value
    rng = np.random.default_rng(5)
    with SqliteStore(data_home.store_path) as store:
        empty = _served(store, data_home)
        codes = rng.integers(0, 256, size=(layer, 32), dtype=np.uint8)
        for i in range(min(20, layer)):  # near the known photo: the layer reports matches too
            bits = np.unpackbits(np.frombuffer(known, dtype=np.uint8))
            bits[rng.choice(256, size=i + 1, replace=False)] ^= 1
            codes[i] = np.packbits(bits)
        store.add_entries(BANK, [NewEntry("pdq", row.tobytes(), f"layer-{i}")
                                 for i, row in enumerate(codes)])
        result = publish(store, data_home.snapshots_dir)
        assert "layer" in result.manifest, "the change did not fit in a layer"
        full = _served(store, data_home)
    assert len(full.delta) == layer and len(empty.delta) == 0
    miss = Query(HashValue("pdq", rng.integers(0, 256, 32, dtype=np.uint8).tobytes()))
    hit = Query(HashValue("pdq", known))
    scanners = {"empty": Scanner(), "full": Scanner()}
    scanners["empty"].swap(empty.snapshot, empty.delta)
    scanners["full"].swap(full.snapshot, full.delta)
    matchers = {"empty": empty, "full": full}
    found = {name: len(m.match([hit]).matches) for name, m in matchers.items()}
    samples: dict[str, dict[str, list[float]]] = {
        kind: {"empty": [], "full": []} for kind in ("match_miss", "match_hit", "scan_image")}
    for round_ in range(rounds):
        order = ("empty", "full") if round_ % 2 == 0 else ("full", "empty")
        for name in order:
            matcher, scanner = matchers[name], scanners[name]
            samples["match_miss"][name].append(_time(partial(matcher.match, [miss])))
            samples["match_hit"][name].append(_time(partial(matcher.match, [hit])))
            samples["scan_image"][name].append(_time(partial(scanner.scan_image, image)))
    report: dict[str, Any] = {"entries": entries + 1, "layer_entries": layer, "rounds": rounds,
                              "photo": photo.name, "matches_of_the_photo_hash": found}
    for kind, by_layer in samples.items():
        summaries = {name: _summary(values) for name, values in by_layer.items()}
        report[kind] = {**summaries, "full_over_empty_median": round(
            summaries["full"]["median_ms"] / summaries["empty"]["median_ms"], 3)}
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--layer", type=int, default=LAYER_MAX_CHANGES,
                        help=f"entries in the full layer (default {LAYER_MAX_CHANGES:,}, the "
                        f"most a layer holds)")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--smoke", action="store_true", help="20,000 entries, 1,000 in the layer")
    args = parser.parse_args(argv)
    entries, layer, rounds = ((20_000, 1_000, 5) if args.smoke
                              else (args.entries, args.layer, args.rounds))
    with tempfile.TemporaryDirectory(prefix="hashsvc-bench-layer-") as scratch:
        report = run(Path(scratch) / "home", entries, layer, rounds)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
