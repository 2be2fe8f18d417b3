"""Run an evaluation: hash every original and copy in parallel, then count matches.

Originals must be distinct images; byte-identical files, and one photograph saved twice (by an
independent thumbnail check, `same_photo`), are detected and their pairs left out of the
false-positive count and the tail model (they are the same image, and any hash matches them).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hashsvc.errors import HashsvcError
from hashsvc.hashing.algorithms import get_algorithm
from indexer.evaluation.hashing import Job, Method, OriginalResult, run_job
from indexer.evaluation.metrics import PairCounts, pair_histogram
from indexer.evaluation.same_photo import Thumbnail, same_photo_pairs
from indexer.evaluation.tail import TailData, collect, comparisons_per_entry
from indexer.evaluation.transforms import Transform
from indexer.folders import find_images, process_map


@dataclass(frozen=True)
class Config:
    originals: Path
    negatives: tuple[Path, ...] = ()
    limit: int | None = None  # originals used (for false positives); None: all
    transformed: int | None = None  # of those, how many get the transform suite; None: all
    methods: tuple[Method, ...] = ()
    transforms: tuple[Transform, ...] = ()
    target_fpr: float = 1e-6
    workers: int | None = None
    progress: bool = False
    list_size: int = 10_000_000  # entries of the list an upload is compared with
    target_per_upload: float = 1e-6  # expected false matches per upload to find thresholds for


@dataclass
class Evaluation:
    config: Config
    originals: int
    transformed: int
    negatives: int
    duplicates: list[tuple[str, str]]
    # (query, stored, thumbnail correlation): one photograph in two files, not byte-identical
    # (`same_photo`); their pairs are left out like byte duplicates', each pair listed once
    same_photo: list[tuple[str, str, float]]
    pairs: dict[str, PairCounts]  # method -> closest-distance histogram of distinct pairs
    distances: dict[str, dict[str, list[int]]]  # transform -> method -> per-copy distance
    errors: list[str] = field(default_factory=list)  # originals that could not be evaluated
    refused: list[str] = field(default_factory=list)  # copies a scan refuses: counted as misses
    tails: dict[str, TailData] = field(default_factory=dict)  # algorithm -> every comparison
    # method -> way of matching -> hash comparisons per list entry and upload
    comparisons: dict[str, dict[str, float]] = field(default_factory=dict)
    references: dict[str, str] = field(default_factory=dict)  # algorithm -> the tails' method
    seconds: float = 0.0


def evaluate(config: Config) -> Evaluation:
    started = time.perf_counter()
    originals = find_images([config.originals])
    if config.limit is not None:
        originals = originals[: config.limit]
    if len(originals) < 2:
        raise HashsvcError(f"{config.originals}: need at least 2 original images, "
                           f"found {len(originals)}")
    negatives = find_images(config.negatives)
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
    # Every image gets one id, originals first (so an original's id is its stored position)
    query_ids = original_ids + [i for i in range(len(originals), len(jobs)) if i in good]
    image_of = {index: n for n, index in enumerate(query_ids)}
    paths = originals + negatives
    duplicates, skip = _duplicates(paths, original_ids, image_of)
    same_photo = [(a, b, ncc) for a, b, ncc in same_photo_pairs(
        [_thumbnail(good[i]) for i in query_ids],
        [n < len(original_ids) for n in range(len(query_ids))]) if (a, b) not in skip]
    skip |= {(a, b) for a, b, _ in same_photo}

    pairs: dict[str, PairCounts] = {}
    for method in config.methods:
        pairs[method.name] = pair_histogram(
            [good[i].queries[method.name] for i in query_ids],
            [good[i].stored[method.name] for i in original_ids],
            get_algorithm(method.algorithm).bits,
            query_owner=list(range(len(query_ids))),
            skip_pairs=skip, margins=method.margins,
        )
    distances: dict[str, dict[str, list[int]]] = {
        t.name: {m.name: [] for m in config.methods} for t in config.transforms
    }
    for index in original_ids:
        for transform_name, by_method in good[index].distances.items():
            for method_name, distance in by_method.items():
                distances[transform_name][method_name].append(distance)
    tails, comparisons, references = _tails(config, good, original_ids, query_ids, skip)
    return Evaluation(
        config=config, originals=len(original_ids), tails=tails, comparisons=comparisons,
        references=references,
        transformed=sum(1 for i in original_ids if i < transformed),
        negatives=len(good) - len(original_ids), duplicates=duplicates, pairs=pairs,
        same_photo=[(paths[query_ids[a]].name, paths[query_ids[b]].name, round(ncc, 4))
                    for a, b, ncc in same_photo if a < b or (b, a) not in skip],
        distances=distances, errors=errors,
        refused=[message for r in results for message in r.refused],
        seconds=time.perf_counter() - started,
    )


def _tails(
    config: Config, good: dict[int, OriginalResult], original_ids: list[int],
    query_ids: list[int], skip: set[tuple[int, int]],
) -> tuple[dict[str, TailData], dict[str, dict[str, float]], dict[str, str]]:
    """Per algorithm, every comparison between distinct images through the method that makes
    the most (every strategy, reference hashing): the tail model's data. Per method, how many
    comparisons each way of matching makes per entry and upload. Image ids are positions in
    `query_ids` (originals first), as in `skip`."""
    image_of = {index: n for n, index in enumerate(query_ids)}
    split = np.zeros(len(query_ids), dtype=np.int8)
    split[np.random.default_rng(14).permutation(len(query_ids))[: len(query_ids) // 2]] = 1
    tails: dict[str, TailData] = {}
    references: dict[str, str] = {}
    for algorithm in dict.fromkeys(m.algorithm for m in config.methods):
        reference = max((m for m in config.methods if m.algorithm == algorithm),
                        key=lambda m: (not m.fast_pdq, m.dihedral, m.trims,
                                       len(m.index_variants), -int(m.margins.sum())))
        references[algorithm] = reference.name
        tails[algorithm] = collect(
            algorithm, get_algorithm(algorithm).bits,
            [(good[i].queries[reference.name][0], good[i].query_kinds[reference.name])
             for i in query_ids], [image_of[i] for i in query_ids],
            [(good[i].stored[reference.name][0], good[i].stored_kinds[reference.name])
             for i in original_ids], [image_of[i] for i in original_ids],
            len(query_ids), split, {(a, b) for a, b in skip})
    comparisons = {
        m.name: comparisons_per_entry(
            [good[i].query_kinds[m.name] for i in query_ids],
            [good[i].stored_kinds[m.name] for i in original_ids])
        for m in config.methods
    }
    return tails, comparisons, references


def _duplicates(
    paths: Sequence[Path], original_ids: Sequence[int], image_of: dict[int, int]
) -> tuple[list[tuple[str, str]], set[tuple[int, int]]]:
    """Byte-identical originals: reported, and their pairs skipped in both directions."""
    first_seen: dict[str, int] = {}
    duplicates: list[tuple[str, str]] = []
    skip: set[tuple[int, int]] = set()
    for index in original_ids:
        digest = hashlib.sha256(paths[index].read_bytes()).hexdigest()
        if digest in first_seen:
            other = first_seen[digest]
            duplicates.append((paths[other].name, paths[index].name))
            skip |= {(image_of[other], image_of[index]), (image_of[index], image_of[other])}
        else:
            first_seen[digest] = index
    return duplicates, skip


def _thumbnail(result: OriginalResult) -> Thumbnail:
    if result.thumbnail is None:  # every successful job makes one
        raise HashsvcError(f"image {result.index}: no thumbnail for the same-photo check")
    return result.thumbnail
