"""Peak memory of concurrent decodes, with and without the decode memory budget (issue 12, #4).

    python loadtests/decode_memory.py --case progressive-bomb --calls 32
    python loadtests/decode_memory.py --case progressive-bomb --calls 32 --budget 0

Starts `--calls` threads at once in this (fresh) process, each hashing the same upload through
one `Scanner`, as a server worker's `max_concurrent_rpcs` calls would, and prints how many were
hashed or refused, and the process's peak RSS (`ru_maxrss`). `--budget 0` turns the budget off
(what the server did before it had one). Cases are the issue's recipes, built in memory:
`progressive-bomb` (a 1 KB progressive JPEG claiming 7071×7071, scanned on the fast path),
`baseline-bomb` (the same header, baseline), `photo-full` (a 12 MP JPEG photo on the reference
path).
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import struct
import threading
import time
from collections import Counter
from pathlib import Path

from PIL import Image

from hashsvc.errors import HashsvcError
from hashsvc.hashing.imaging import DEFAULT_LIMITS, DecodeLimits, Upload
from hashsvc.scanner import Scanner

DATA = Path(os.environ.get("HASHSVC_SHARED_DATA", Path(__file__).parents[2] / "shared" / "data"))


def _jpeg(image: Image.Image, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **params)
    return buffer.getvalue()


def _claiming(width: int, height: int, *, progressive: bool) -> bytes:
    """A 16×16 JPEG whose frame header claims width×height."""
    jpeg = _jpeg(Image.new("RGB", (16, 16), (120, 60, 30)), progressive=progressive)
    position = 2
    while jpeg[position + 1] not in (0xC0, 0xC2):
        position += 2 + struct.unpack(">H", jpeg[position + 2:position + 4])[0]
    return jpeg[:position + 5] + struct.pack(">HH", height, width) + jpeg[position + 9:]


def upload(case: str) -> tuple[bytes, bool]:
    """The case's bytes, and whether it is scanned on the fast path."""
    if case == "progressive-bomb":
        return _claiming(7071, 7071, progressive=True), True
    if case == "baseline-bomb":
        return _claiming(7071, 7071, progressive=False), True
    photo = Image.open(next((DATA / "photos-cc0" / "images").glob("*.jpg"))).convert("RGB")
    return _jpeg(photo.resize((3000, 4000)), quality=90), False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=("progressive-bomb", "baseline-bomb", "photo-full"),
                        default="progressive-bomb")
    parser.add_argument("--calls", type=int, default=32)
    parser.add_argument("--budget", type=int, default=DEFAULT_LIMITS.decode_memory_budget,
                        help="decode memory budget in bytes (0: none)")
    args = parser.parse_args()
    data, fast = upload(args.case)
    limits = DecodeLimits(decode_memory_budget=args.budget or 2**62)
    scanner = Scanner(limits=limits, fast_pdq=fast)
    start = threading.Barrier(args.calls)
    outcomes: Counter[str] = Counter()
    counting = threading.Lock()

    def call() -> None:
        start.wait()
        try:
            scanner.hash_upload(Upload(data, limits=limits), ["pdq"], dihedral=True, trim=True)
            outcome = "hashed"
        except HashsvcError as err:
            outcome = f"refused {err.code.value}"
        with counting:
            outcomes[outcome] += 1

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    began = time.perf_counter()
    threads = [threading.Thread(target=call) for _ in range(args.calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    budget = f"{args.budget / 2**20:,.0f} MiB" if args.budget else "none"
    print(f"{args.case}: {len(data):,} bytes, {args.calls} concurrent calls, budget {budget}: "
          f"{dict(sorted(outcomes.items()))}, peak RSS {peak / 1024:,.0f} MB "
          f"(before the calls {base / 1024:,.0f} MB), {time.perf_counter() - began:.1f} s")


if __name__ == "__main__":
    main()
