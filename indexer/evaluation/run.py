"""Run an evaluation: hash every original and copy in parallel, then count matches.

Originals must be distinct images; byte-identical files are detected and their pairs left out of
the false-positive count (they are the same image, and any hash matches them).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hashsvc.errors import HashsvcError
from hashsvc.hashing.algorithms import get_algorithm
from indexer.evaluation.hashing import Job, Method, run_job
from indexer.evaluation.metrics import PairCounts, pair_histogram
from indexer.evaluation.transforms import Transform
from indexer.folders import find_images, process_map


@dataclass(frozen=True)
class Config:
    originals: Path
    negatives: Path | None = None
    limit: int | None = None  # originals used (for false positives); None: all
    transformed: int | None = None  # of those, how many get the transform suite; None: all
    methods: tuple[Method, ...] = ()
    transforms: tuple[Transform, ...] = ()
    target_fpr: float = 1e-6
    workers: int | None = None
    progress: bool = False


@dataclass
class Evaluation:
    config: Config
    originals: int
    transformed: int
    negatives: int
    duplicates: list[tuple[str, str]]
    pairs: dict[str, PairCounts]  # method -> closest-distance histogram of distinct pairs
    distances: dict[str, dict[str, list[int]]]  # transform -> method -> per-copy distance
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


def evaluate(config: Config) -> Evaluation:
    started = time.perf_counter()
    originals = find_images([config.originals])
    if config.limit is not None:
        originals = originals[: config.limit]
    if len(originals) < 2:
        raise HashsvcError(f"{config.originals}: need at least 2 original images, "
                           f"found {len(originals)}")
    negatives = find_images([config.negatives]) if config.negatives else []
    transformed = len(originals) if config.transformed is None else min(config.transformed,
                                                                        len(originals))
    names = tuple(t.name for t in config.transforms)
    jobs = [Job(i, path, config.methods, names if i < transformed else ())
            for i, path in enumerate(originals)]
    jobs += [Job(len(originals) + i, path, config.methods, (), stored=False)
             for i, path in enumerate(negatives)]
    results = sorted(process_map(run_job, jobs, workers=config.workers,
                                 progress=config.progress, chunksize=2),
                     key=lambda r: r.index)

    errors = [r.error for r in results if r.error is not None]
    good = {r.index: r for r in results if r.error is None}
    original_ids = [i for i in range(len(originals)) if i in good]
    position = {index: n for n, index in enumerate(original_ids)}
    duplicates, skip = _duplicates(originals, original_ids, position)

    pairs: dict[str, PairCounts] = {}
    for method in config.methods:
        query_ids = original_ids + [i for i in range(len(originals), len(jobs)) if i in good]
        pairs[method.name] = pair_histogram(
            [good[i].queries[method.name] for i in query_ids],
            [good[i].stored[method.name] for i in original_ids],
            get_algorithm(method.algorithm).bits,
            query_owner=[position.get(i, -1) for i in query_ids],
            skip_pairs=skip, margins=method.margins,
        )
    distances: dict[str, dict[str, list[int]]] = {
        t.name: {m.name: [] for m in config.methods} for t in config.transforms
    }
    for index in original_ids:
        for transform_name, by_method in good[index].distances.items():
            for method_name, distance in by_method.items():
                distances[transform_name][method_name].append(distance)
    return Evaluation(
        config=config, originals=len(original_ids),
        transformed=sum(1 for i in original_ids if i < transformed),
        negatives=len(good) - len(original_ids), duplicates=duplicates, pairs=pairs,
        distances=distances, errors=errors, seconds=time.perf_counter() - started,
    )


def _duplicates(
    originals: Sequence[Path], original_ids: Sequence[int], position: dict[int, int]
) -> tuple[list[tuple[str, str]], set[tuple[int, int]]]:
    """Byte-identical originals: reported, and their pairs skipped in both directions."""
    first_seen: dict[str, int] = {}
    duplicates: list[tuple[str, str]] = []
    skip: set[tuple[int, int]] = set()
    for index in original_ids:
        digest = hashlib.sha256(originals[index].read_bytes()).hexdigest()
        if digest in first_seen:
            other = first_seen[digest]
            duplicates.append((originals[other].name, originals[index].name))
            skip |= {(position[other], position[index]), (position[index], position[other])}
        else:
            first_seen[digest] = index
    return duplicates, skip
