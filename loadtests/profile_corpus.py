"""Where the fast scan path spends its time, per kind of upload, sampled with pyinstrument.

    python loadtests/profile_corpus.py --corpus /tmp/corpus [--calls 400] [--groups PNG WebP]

For each kind (`bench_corpus.group`: small JPEGs, progressive JPEGs, PNG, WebP by default) the
fast path (`bench_corpus`'s: `fastpdq.pdq_fast`, PDQ's operators rebuilt per image) hashes the
kind's files in turn until `--calls` calls are sampled. Printed per kind: the share of the
sampled time in each pipeline stage (each sample goes to the innermost stage function on its
stack, so nothing is counted twice), then the functions with the most self time. Sampling, not
tracing: numpy-heavy code keeps its real proportions. Shares are of the fast path's own time;
the machine's load does not change them much, but read them with `uptime`.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # run as `python loadtests/profile_corpus.py`: find `loadtests`
    sys.path.insert(0, str(_ROOT))

from loadtests.bench_corpus import group  # noqa: E402
from loadtests.bench_hashing import fast  # noqa: E402
from loadtests.upload_corpus import read_manifest  # noqa: E402

DEFAULT_GROUPS = ("JPEG < 1 MP", "progressive JPEG > 3 MP", "PNG", "WebP")
# The fast path's stages, by function name; a sample counts for the innermost one on its stack.
STAGES = {
    "open_checked": "open: header, limits, JPEG markers",
    "draft": "JPEG draft (pick DCT scale)",
    "load_checked": "decode (Pillow/libjpeg/libpng/libwebp)",
    "luma": "direct decode (TurboJPEG's Y plane for JPEG, libspng for PNG, libwebp's for WebP)",
    "getexif": "EXIF read",
    "exif_transpose": "EXIF orientation",
    "to_rgb": "convert to RGB",
    "resize": "box reduce (images the decoder did not scale)",
    "convert": "to 8-bit luma (Pillow)",
    "split": "luma: split planes",
    "luma_scans_only": "cut a progressive JPEG's chroma AC scans",
    "pdq_from_luma": "PDQ blur-decimate and quality (C, _pdqfast)",
    "_hash": "PDQ filter, DCT, median, bits (C, _pdqfast.pdq)",
    "_scale_sensitive": "aliasing check (JPEG at reduced scale)",
    "_dct16": "DCT 64->16",
    "_bits": "median and bits",
    "decode_reduced": "decode_reduced, own lines (luma arithmetic)",
}


def profile(images: list[bytes], calls: int) -> Any:
    from pyinstrument import Profiler  # dev extra: only this tool needs it

    profiler = Profiler(interval=0.0005)
    profiler.start()
    for index in range(calls):
        fast(images[index % len(images)])
    return profiler.stop()


def shares(session: Any, top: int) -> tuple[float, Counter[str], Counter[str]]:
    """Total sampled seconds, seconds per stage, seconds of self time per function."""
    stages: Counter[str] = Counter()
    functions: Counter[str] = Counter()

    def walk(frame: Any, stage: str, label: str) -> None:
        if not frame.is_synthetic:  # "[self]" leaves hold their parent's own time
            name = frame.function or "?"
            stage = STAGES.get(name, stage)
            label = f"{name} ({Path(frame.file_path or '?').name}:{frame.line_no})"
        if not frame.children:  # leaves: every sample counted exactly once
            stages[stage] += frame.time
            functions[label] += frame.time
        for child in frame.children:
            walk(child, stage, label)

    root = session.root_frame()
    walk(root, "outside the fast path (loop, timer)", "?")
    return root.time, stages, Counter(dict(functions.most_common(top)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--groups", nargs="+", default=list(DEFAULT_GROUPS))
    parser.add_argument("--calls", type=int, default=400, help="calls sampled per kind")
    parser.add_argument("--top", type=int, default=8, help="functions listed per kind")
    args = parser.parse_args(argv)
    rows = read_manifest(args.corpus)
    for name in args.groups:
        files = [args.corpus / r["file"] for r in rows if group(r) == name]
        if not files:
            print(f"{name}: no files in {args.corpus}\n")
            continue
        images = [f.read_bytes() for f in files]
        for data in images[:3]:
            fast(data)  # warm up imports
        total, stages, functions = shares(profile(images, args.calls), args.top)
        print(f"{name}: {len(files)} files, {args.calls} calls, {total:.2f} s sampled "
              f"({1000 * total / args.calls:.2f} ms per call)")
        for stage, seconds in stages.most_common():
            if seconds / total >= 0.005:
                print(f"  {100 * seconds / total:5.1f}%  {stage}")
        print("  self time, top functions:")
        for function, seconds in functions.most_common():
            print(f"  {100 * seconds / total:5.1f}%  {function}")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
