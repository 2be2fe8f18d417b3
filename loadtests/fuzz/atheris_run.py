"""A bounded coverage-guided run (atheris/libFuzzer) of the two decoders, in its own process.

    python -m loadtests.fuzz.atheris_run --runs 100000 --seed 1

atheris is optional and not a dependency: `pip install atheris` (it ships wheels for Linux
x86-64). Without it this prints why and exits 0, so the rest of the fault suite still runs.
A run ends after `--runs` inputs, or at the first input on which either decoder raises
anything but a `HashsvcError`: libFuzzer then prints the traceback, writes the input under
`--artifacts`, and the process exits non-zero.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

SKIPPED = "atheris is not installed here (pip install atheris): the atheris run is skipped"


def _seed_corpus(directory: Path, seed: int) -> None:
    """One small valid image per format, and the issue's recipes: mutations start from these."""
    from loadtests.fuzz import images

    rng = random.Random(seed)
    for fmt in images.formats():
        (directory / f"valid-{fmt}").write_bytes(images.small_image(rng, fmt))
    for recipe in images.recipes():
        if len(recipe.data) < 1 << 16:
            (directory / recipe.name.replace(":", "-")).write_bytes(recipe.data)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-len", type=int, default=1 << 16, help="largest input, bytes")
    parser.add_argument("--hang-seconds", type=int, default=10)
    parser.add_argument("--rss-limit-mb", type=int, default=3072)
    parser.add_argument("--artifacts", type=Path, default=Path(tempfile.gettempdir()),
                        help="where libFuzzer writes a failing input (default %(default)s)")
    args = parser.parse_args(argv)
    try:
        import atheris
    except ImportError:
        print(SKIPPED)
        return 0
    with atheris.instrument_imports():
        from hashsvc.hashing import fastpdq, imaging
    from hashsvc.errors import HashsvcError

    def one_input(data: bytes) -> None:
        for decode in (imaging.decode, fastpdq.decode_reduced):
            with contextlib.suppress(HashsvcError):
                decode(data)

    corpus = Path(tempfile.mkdtemp(prefix="atheris-corpus-"))
    _seed_corpus(corpus, args.seed)
    args.artifacts.mkdir(parents=True, exist_ok=True)
    atheris.Setup([sys.argv[0], f"-runs={args.runs}", f"-seed={args.seed}",
                   f"-max_len={args.max_len}", f"-timeout={args.hang_seconds}",
                   f"-rss_limit_mb={args.rss_limit_mb}", "-print_final_stats=1",
                   f"-artifact_prefix={args.artifacts}/", str(corpus)], one_input)
    atheris.Fuzz()
    return 0  # not reached: libFuzzer exits the process


if __name__ == "__main__":
    sys.exit(main())
