"""How close the scan path is to its decode floor on a corpus's JPEGs under 1 MP.

    python loadtests/bench_jpeg_floor.py --corpus /tmp/corpus [--limit 300] [--rounds 5]

Why: issue 15 asks ≥ 5× over the reference pipeline on JPEGs under 1 MP. Most of those decode
at full scale (short side under 384 px: a smaller DCT scale drifts) and libjpeg's decode is
most of the fast path, so the question is what any faithful fast path could reach. Per image,
three calls back to back in each round, the order reversed every other round, CPU time:

- reference: `bench_hashing.baseline` (Pillow full decode, `convert("RGB")`, `pdqhash`);
- fast: `bench_hashing.fast` (`fastpdq.pdq_fast`);
- floor: only what the fast path decodes: `open_checked`, the chroma-AC-scan cut, the DCT scale
  (`draft("L", 192 px)`) and the decode (TurboJPEG's where installed, as the scan path does;
  else Pillow's), nothing after.

Printed: medians over images of reference/fast and reference/floor (each image's median over
rounds), and the fast path's median overhead over its floor in ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # run as `python loadtests/bench_jpeg_floor.py`: find `loadtests`
    sys.path.insert(0, str(_ROOT))

from PIL import ImageFile  # noqa: E402

from hashsvc.hashing import decode_turbojpeg  # noqa: E402
from hashsvc.hashing.decode_small_jpeg import luma_scans_only  # noqa: E402
from hashsvc.hashing.fastpdq import SCAN  # noqa: E402
from hashsvc.hashing.imaging import open_checked  # noqa: E402
from loadtests.bench_corpus import group  # noqa: E402
from loadtests.bench_hashing import LIMITS, baseline, fast  # noqa: E402
from loadtests.upload_corpus import read_manifest  # noqa: E402


def floor(data: bytes) -> None:
    """The fast path's decode of a JPEG and nothing else: its lower bound. That is TurboJPEG's
    where installed (`decode_turbojpeg.y_plane`, which the scan path uses), else Pillow's."""
    opened = open_checked(data, LIMITS, "floor")
    side = SCAN.jpeg_min_side or 1
    if decode_turbojpeg.available():
        plane, _ = decode_turbojpeg.y_plane(data, opened, LIMITS, "floor", side, dc_only=True,
                                            luma_scans=True, apply_orientation=True, lease=None)
        if plane is not None:
            return
        opened = open_checked(data, LIMITS, "floor")  # drafted already: start again
    image = luma_scans_only(opened, data, "floor").image
    image.draft("L", (side, side))
    if isinstance(image, ImageFile.ImageFile):  # as the fast path: one decoder call
        image.decodermaxblock = max(len(data), ImageFile.MAXBLOCK)
    image.load()


def _cpu(function: Callable[[bytes], None], data: bytes) -> float:
    start = time.process_time()
    function(data)
    return time.process_time() - start


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--limit", type=int, help="only the first N files of the manifest")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    rows = [r for r in read_manifest(args.corpus)[: args.limit] if group(r) == "JPEG < 1 MP"]
    load_before = os.getloadavg()[0]
    calls = (baseline, fast, floor)
    to_fast, to_floor, overhead = [], [], []
    for row in rows:
        data = (args.corpus / row["file"]).read_bytes()
        for function in calls:
            function(data)  # warm: first-touch allocations, this size's caches
        times: dict[Callable[[bytes], None], list[float]] = {f: [] for f in calls}
        for number in range(args.rounds):
            for function in (calls if number % 2 else calls[::-1]):
                times[function].append(_cpu(function, data))
        reference, fast_s, floor_s = (statistics.median(times[f]) for f in calls)
        to_fast.append(reference / fast_s)
        to_floor.append(reference / floor_s)
        overhead.append(1000 * (fast_s - floor_s))
    print(f"{len(rows)} JPEGs under 1 MP from {args.corpus}, {args.rounds} rounds, CPU time, "
          f"load {load_before:.2f} -> {os.getloadavg()[0]:.2f} (1-min average)")
    print(f"reference/fast  median {statistics.median(to_fast):.2f}x, min {min(to_fast):.2f}x")
    print(f"reference/floor median {statistics.median(to_floor):.2f}x (no faithful fast path "
          "that decodes the same pixels can beat this)")
    print(f"fast - floor    median {statistics.median(overhead):.3f} ms per image")
    return 0


if __name__ == "__main__":
    sys.exit(main())
