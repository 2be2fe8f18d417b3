"""Hashing many image files in parallel, for `hash` and `add-images`.

Decoding and hashing are CPU-bound and hold the GIL, so the work goes to a process pool, one worker
per core. Workers return hashes or an error message, never raise, so one unreadable file is
reported and skipped without stopping the other thousands.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tqdm import tqdm

from hashsvc.errors import HashsvcError, ImageError
from hashsvc.hashing.algorithms import PDQ, HashValue, get_algorithm
from hashsvc.hashing.imaging import Upload
from hashsvc.matching.strategies import PLAIN, MatchStrategies
from hashsvc.matching.variants import index_variants

J = TypeVar("J")
R = TypeVar("R")

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif"}
)


@dataclass(frozen=True)
class FileHashes:
    path: Path
    hashes: tuple[HashValue, ...] = ()
    error: str | None = None
    reason: str | None = None
    variants: tuple[tuple[str, HashValue], ...] = ()  # the strategies' extra PDQ hashes


def find_images(paths: Iterable[Path], recursive: bool = True) -> list[Path]:
    """Files named directly are kept whatever their name; folders contribute image files."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            found.extend(
                p for p in sorted(path.glob(pattern))
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                and not p.name.startswith(".")
            )
        else:
            found.append(path)
    return found


def hash_file(
    path: Path, algorithms: Sequence[str], strategies: MatchStrategies = PLAIN
) -> FileHashes:
    """The file's hashes, plus (PDQ banks whose `strategies` store them) its variant hashes."""
    try:
        upload = Upload(path.read_bytes(), name=str(path), apply_orientation=True)
        hashes = tuple(get_algorithm(a).compute(upload) for a in algorithms)
        pdq = next((h for h in hashes if h.algorithm == PDQ.name), None)
        extra = tuple(index_variants(upload, strategies, pdq)) if pdq is not None else ()
        return FileHashes(path, hashes, variants=extra)
    except ImageError as err:
        return FileHashes(path, error=err.message, reason=err.reason)
    except HashsvcError as err:
        return FileHashes(path, error=err.message, reason="error")
    except OSError as err:
        return FileHashes(path, error=f"{path}: cannot read: {err.strerror}", reason="unreadable")


def _hash_file_star(job: tuple[Path, tuple[str, ...], MatchStrategies]) -> FileHashes:
    return hash_file(*job)


def hash_files(
    paths: Sequence[Path],
    algorithms: Sequence[str],
    *,
    workers: int | None = None,
    progress: bool = False,
    strategies: MatchStrategies = PLAIN,
) -> Iterator[FileHashes]:
    """Hash `paths` over `workers` processes (default: every core), in input order."""
    jobs = [(path, tuple(algorithms), strategies) for path in paths]
    return process_map(_hash_file_star, jobs, workers=workers, progress=progress, chunksize=4)


def process_map(
    function: Callable[[J], R], jobs: Sequence[J], *, workers: int | None = None,
    progress: bool = False, chunksize: int = 1,
) -> Iterator[R]:
    """`function` over `jobs` in `workers` processes (default: every core), results in input
    order, with a progress bar on a terminal. `function` must not raise: workers return errors
    as values, so one bad image never stops the other thousands."""
    workers = workers or os.cpu_count() or 1
    with tqdm(total=len(jobs), unit=" images", disable=not progress, leave=False) as bar:
        if workers == 1 or len(jobs) < 4:
            for job in jobs:
                yield function(job)
                bar.update()
            return
        # forkserver: workers never inherit the parent's threads (FAISS/OpenMP) or locks.
        context = multiprocessing.get_context("forkserver")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            for result in pool.map(function, jobs, chunksize=chunksize):
                yield result
                bar.update()
