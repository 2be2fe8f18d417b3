"""Build a data home with a large PDQ bank and publish its snapshot, for load tests.

    python loadtests/make_snapshot.py --home /tmp/hashsvc-load --entries 1000000
    hashsvc serve --home /tmp/hashsvc-load --listen 127.0.0.1:50061

The bank `loadtest` holds `--entries` PDQ codes shaped like a real list (random codes, a quarter
of them near-duplicates of others: bench_core's `_clustered_codes`) plus the PDQ hash of one known
photo, the one loadgen.py upscales for its default image, so that image scans match. It also
writes HOME/loadtest-known-pdq.txt: that photo's hash and a sample of listed codes, for
`loadgen.py scan-hashes --known-hashes`, so that a share of hash scans match too. Prints one JSON
object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # run as `python loadtests/make_snapshot.py`: find `loadtests`
    sys.path.insert(0, str(_ROOT))

import numpy as np  # noqa: E402

from hashsvc.hashing.algorithms import PDQ  # noqa: E402
from hashsvc.hashing.imaging import Upload  # noqa: E402
from hashsvc.home import DataHome  # noqa: E402
from hashsvc.snapshot import publish  # noqa: E402
from hashsvc.store import NewEntry, SqliteStore  # noqa: E402
from loadtests.bench_core import _clustered_codes  # noqa: E402
from loadtests.loadgen import default_photo  # noqa: E402

BANK = "loadtest"
KNOWN_FILE = "loadtest-known-pdq.txt"
_CHUNK = 100_000  # rows per executemany: bounded memory, few round trips


def build_home(
    home: Path, entries: int = 1_000_000, *, photo: Path | None = None, known_sample: int = 1000,
    seed: int = 7, publish_snapshot: bool = True,
) -> dict[str, Any]:
    """Create the bank in a fresh data home, fill it in one transaction, publish a snapshot
    (unless not `publish_snapshot`: bench_snapshot.py times its own publishes)."""
    data_home = DataHome(home)
    photo = photo or default_photo()
    photo_hash = PDQ.compute(Upload(photo.read_bytes()))
    codes = _clustered_codes(entries, seed=seed)
    with SqliteStore(data_home.store_path) as store:
        store.create_bank(BANK, description="synthetic PDQ list for load tests", tags=["loadtest"])
        started = time.perf_counter()
        with store.bulk_add(BANK, expected=entries + 1) as adder:
            adder.add([NewEntry("pdq", photo_hash.value, f"known-photo:{photo.name}")])
            for start in range(0, entries, _CHUNK):
                adder.add(NewEntry("pdq", row.tobytes(), f"synthetic-{start + i}")
                          for i, row in enumerate(codes[start : start + _CHUNK]))
        import_seconds = time.perf_counter() - started
        published = publish(store, data_home.snapshots_dir) if publish_snapshot else None
        added = adder.result
    rng = np.random.default_rng(seed + 1)
    sample = codes[rng.choice(entries, size=min(known_sample, entries), replace=False)]
    known_path = home / KNOWN_FILE
    known_path.write_text("\n".join(
        ["# PDQ hashes listed in bank 'loadtest' (first: the known photo)", photo_hash.hex,
         *(row.tobytes().hex() for row in sample)]) + "\n")
    return {
        "home": str(home),
        "bank": BANK,
        "entries_requested": entries + 1,
        "added": added.added,
        "duplicates": added.duplicates,
        "store_import_seconds": round(import_seconds, 2),
        **({} if published is None else {
            "publish_seconds": round(published.seconds, 2),
            "snapshot_version": published.version,
            "snapshot_mib": round(
                sum(p.stat().st_size for p in published.path.iterdir()) / 2**20, 1),
        }),
        "known_photo": str(photo),
        "known_photo_pdq": photo_hash.hex,
        "known_photo_quality": photo_hash.quality,
        "known_hashes_file": str(known_path),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, required=True,
                        help="a new data directory (store.sqlite, snapshots/)")
    parser.add_argument("--entries", type=int, default=1_000_000,
                        help="synthetic PDQ entries, besides the known photo (default %(default)s)")
    parser.add_argument("--photo", type=Path,
                        help="the photo whose hash is listed (default: loadgen's default photo)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if args.entries < 1:
        parser.error("--entries must be at least 1")
    if DataHome(args.home).store_path.exists():
        parser.error(f"{args.home} already holds a store: give a new --home")
    print(json.dumps(build_home(args.home, args.entries, photo=args.photo, seed=args.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
