"""Hash originals and their transformed copies the way the product does, in worker processes.

The known side goes through `indexer.folders.hash_file` (what `add-images` stores, strategies'
extra hashes included) and the query side through `Scanner.hash_upload` (what a scan computes,
dihedral and trimmed variants included), so the numbers describe hashsvc, not a re-implementation.
Workers return distances and hash sets, never images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from hashsvc.algorithms import QUALITY_FLOOR, get_algorithm
from hashsvc.errors import HashsvcError
from hashsvc.imaging import Upload
from hashsvc.matcher import Query
from hashsvc.scanner import Scanner
from hashsvc.strategies import DEFAULT_CROP_GRID, PLAIN, MatchStrategies
from indexer.evaluation.transforms import BY_NAME
from indexer.folders import hash_file

Codes = npt.NDArray[np.uint8]  # (n, bytes): a set of hashes
NO_MATCH = 10_000  # the distance recorded when a query set has nothing to compare


@dataclass(frozen=True)
class Method:
    """One way of matching: an algorithm plus hashsvc's strategies (or none)."""

    name: str
    algorithm: str
    description: str
    dihedral: bool = False
    strategies: MatchStrategies = field(default=PLAIN)
    fast_pdq: bool = False

    @property
    def threshold(self) -> int:
        return get_algorithm(self.algorithm).default_threshold

    @property
    def trims(self) -> bool:
        return self.strategies.trim_borders


HASHSVC_STRATEGIES = MatchStrategies(dihedral=True, trim_borders=True,
                                     crop_variants=DEFAULT_CROP_GRID)
METHODS: tuple[Method, ...] = (
    Method("pdq", "pdq", "PDQ, one hash each side (what other tools do)"),
    Method("pdq+dihedral", "pdq", "PDQ with the upload's 8 rotations/flips", dihedral=True),
    Method("phash", "phash", "pHash (imagehash), one hash each side"),
    Method("dhash", "dhash", "dHash (imagehash), one hash each side"),
    Method("hashsvc", "pdq", "PDQ with every strategy: dihedral, trimmed borders, crops "
           + ",".join(map(str, DEFAULT_CROP_GRID)) + "% (reference PDQ)",
           dihedral=True, strategies=HASHSVC_STRATEGIES),
    Method("hashsvc-fast", "pdq", "the same, uploads hashed by the scan fast path (fastpdq)",
           dihedral=True, strategies=HASHSVC_STRATEGIES, fast_pdq=True),
)


@dataclass
class OriginalResult:
    """What one worker learnt about one original image."""

    index: int
    stored: dict[str, Codes]  # method -> the known image's hashes, as add-images stores them
    queries: dict[str, Codes]  # method -> the original scanned as an upload (false positives)
    distances: dict[str, dict[str, int]]  # transform -> method -> closest query to `stored`
    error: str | None = None


@dataclass(frozen=True)
class Job:
    index: int
    path: Path
    methods: tuple[Method, ...]
    transforms: tuple[str, ...]  # suite names (closures do not pickle); empty: original only
    stored: bool = True  # False for negatives: they are only ever queries


def run_job(job: Job) -> OriginalResult:
    try:
        return _run(job)
    except HashsvcError as err:
        return OriginalResult(job.index, {}, {}, {}, error=err.message)
    except OSError as err:
        return OriginalResult(job.index, {}, {}, {}, error=f"{job.path}: {err}")


def _run(job: Job) -> OriginalResult:
    data = job.path.read_bytes()
    stored = stored_hashes(job.path, job.methods) if job.stored else {}
    queries = query_hashes(Upload(data, name=str(job.path)), job.methods)
    distances: dict[str, dict[str, int]] = {}
    with Image.open(job.path) as opened:
        image = opened.convert("RGB")
    for transform in (BY_NAME[name] for name in job.transforms):
        upload = Upload(transform.apply(image, job.index), name=f"{job.path}:{transform.name}")
        found = query_hashes(upload, job.methods)
        distances[transform.name] = {
            m.name: closest(found[m.name], stored[m.name], get_algorithm(m.algorithm).bits)
            for m in job.methods
        }
    return OriginalResult(job.index, stored, queries, distances)


def stored_hashes(path: Path, methods: Sequence[Method]) -> dict[str, Codes]:
    """Per method, the hashes `indexer add-images` would store for this file."""
    stored: dict[str, Codes] = {}
    by_config: dict[tuple[str, MatchStrategies], Codes] = {}
    for method in methods:
        key = (method.algorithm, method.strategies)
        if key not in by_config:
            result = hash_file(path, [method.algorithm], method.strategies)
            if result.error is not None:
                raise HashsvcError(result.error)
            values = [h.value for h in result.hashes] + [h.value for _, h in result.variants]
            by_config[key] = _codes(values)
        stored[method.name] = by_config[key]
    return stored


def query_hashes(upload: Upload, methods: Sequence[Method]) -> dict[str, Codes]:
    """Per method, the query hashes a scan of `upload` would look up.

    One `Scanner.hash_upload` call per algorithm and PDQ path serves every method sharing it:
    its queries come plain first, then rotations, then trimmed, and each method keeps its part.
    PDQ queries below the quality floor are dropped, as a scan drops them.
    """
    computed: dict[tuple[str, bool], list[Query]] = {}
    found: dict[str, Codes] = {}
    for method in methods:
        key = (method.algorithm, method.fast_pdq)
        if key not in computed:
            wanted = [m for m in methods if (m.algorithm, m.fast_pdq) == key]
            scanner = Scanner(fast_pdq=method.fast_pdq)
            _, queries, _ = scanner.hash_upload(
                upload, [method.algorithm], dihedral=any(m.dihedral for m in wanted),
                trim=any(m.trims for m in wanted))
            computed[key] = queries
        kept = [q for q in computed[key]
                if (method.dihedral or q.transform == "identity")
                and (method.trims or not q.trimmed)
                and not (q.hash.quality is not None and q.hash.algorithm == "pdq"
                         and q.hash.quality < QUALITY_FLOOR)]
        found[method.name] = _codes([q.hash.value for q in kept])
    return found


def closest(queries: Codes, stored: Codes, bits: int) -> int:
    """The smallest Hamming distance between any query and any stored hash."""
    if len(queries) == 0 or len(stored) == 0:
        return NO_MATCH
    distances = np.bitwise_count(queries[:, None, :] ^ stored[None, :, :]).sum(axis=2)
    return int(distances.min())


def _codes(values: Sequence[bytes]) -> Codes:
    if not values:
        return np.zeros((0, 0), dtype=np.uint8)
    return np.frombuffer(b"".join(values), dtype=np.uint8).reshape(len(values), -1).copy()
