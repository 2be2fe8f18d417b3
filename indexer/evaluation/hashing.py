"""Hash originals and their transformed copies the way the product does, in worker processes.

The known side goes through `indexer.folders.hash_file` (what `add-images` stores, strategies'
extra hashes included) and the query side through `Scanner.hash_upload` (what a scan computes,
dihedral and trimmed variants included), so the numbers describe hashsvc, not a re-implementation.
Workers return distances and hash sets, never images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from PIL import Image

from hashsvc.errors import HashsvcError, ImageError
from hashsvc.hashing.algorithms import QUALITY_FLOOR, get_algorithm
from hashsvc.hashing.imaging import DEFAULT_LIMITS, DecodeLimits, Upload
from hashsvc.matching.strategies import (
    CORNER,
    CROP,
    DEFAULT_CROP_GRID,
    DIHEDRAL,
    PLAIN,
    ROTATION,
    STORED_TRIMMED,
    TRIMMED,
    TRIMMED_QUERY,
    MatchStrategies,
    variant_way,
)
from indexer.evaluation.same_photo import SIDE, Thumbnail, thumbnail
from indexer.evaluation.transforms import BY_NAME
from indexer.folders import hash_file

if TYPE_CHECKING:
    from hashsvc.matching.matcher import Query

Codes = npt.NDArray[np.uint8]  # (n, bytes): a set of hashes
Ways = npt.NDArray[np.uint8]  # per hash: the ways of matching it involves, one bit each (WAY_BITS)
HashSet = tuple[Codes, Ways]
# One bit per way of matching (strategies.WAYS): a pair of hashes involves the OR of their bits,
# 0 for plain hash-to-hash, and takes the margin of those ways (`margin_table`).
WAY_BITS = {DIHEDRAL: 1, TRIMMED_QUERY: 2, STORED_TRIMMED: 4, CROP: 8, ROTATION: 16, CORNER: 32}
WAY_COMBINATIONS = 64
_STORED_EXAMPLE = {STORED_TRIMMED: TRIMMED, CROP: "crop_1", ROTATION: "rotate_1",
                   CORNER: "corner_1_tl"}  # a variant name of each stored way
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
    hash_only: bool = False  # the known side holds plain hashes only (an imported list)

    @property
    def threshold(self) -> int:
        return get_algorithm(self.algorithm).default_threshold

    @property
    def trims(self) -> bool:
        return self.strategies.trim_borders

    @property
    def index_variants(self) -> tuple[str, ...]:
        return () if self.hash_only else self.strategies.index_variants

    @property
    def margins(self) -> npt.NDArray[np.int64]:
        return margin_table(self.strategies)


def margin_table(strategies: MatchStrategies) -> npt.NDArray[np.int64]:
    """[ways bits] = the margin a pair of hashes involving those ways gets (the matcher's)."""
    def variant(bits: int) -> str:  # a stored hash has one variant: one stored bit at most
        return next((name for way, name in _STORED_EXAMPLE.items() if bits & WAY_BITS[way]), "")
    return np.array([strategies.margin_for(rotated=bool(bits & 1), trimmed=bool(bits & 2),
                                           variant=variant(bits))
                     for bits in range(WAY_COMBINATIONS)], dtype=np.int64)


HASHSVC_STRATEGIES = MatchStrategies(dihedral=True, trim_borders=True,
                                     crop_variants=DEFAULT_CROP_GRID)
# The margin was chosen with this tool: on photos-cc0 it lets the plain threshold rise to 59 at
# FPR <= 1e-6 while strategy matches stay within 47 (README, Detection quality).
TUNED_STRATEGIES = replace(HASHSVC_STRATEGIES, variant_margin=12)
# Per-way margins: none for rotations (a pure rotation already sits ~10 bits away, and they add
# few false matches), 12 for the ways that add many (crops, trimmed).
PER_WAY_STRATEGIES = replace(TUNED_STRATEGIES, margins=((DIHEDRAL, 0),))
QUERY_SIDE = MatchStrategies(dihedral=True, trim_borders=True)
# Index-side variants for small rotations and off-centre crops, on top of every strategy.
MORE_STRATEGIES = replace(HASHSVC_STRATEGIES, rotation_variants=(3, 4), corner_crops=(4, 10))
_EVERY = "PDQ with every strategy: dihedral, trimmed borders, crops " + ",".join(
    map(str, DEFAULT_CROP_GRID)) + "%"
METHODS: tuple[Method, ...] = (
    Method("pdq", "pdq", "PDQ, one hash each side (what other tools do)"),
    Method("pdq+dihedral", "pdq", "PDQ with the upload's 8 rotations/flips", dihedral=True),
    Method("phash", "phash", "pHash (imagehash), one hash each side"),
    Method("dhash", "dhash", "dHash (imagehash), one hash each side"),
    Method("hashsvc", "pdq", _EVERY + " (reference PDQ)", dihedral=True,
           strategies=HASHSVC_STRATEGIES),
    Method("hashsvc-m12", "pdq", "the same with variant margin 12 (reference PDQ)",
           dihedral=True, strategies=TUNED_STRATEGIES),
    Method("hashsvc-m12-fast", "pdq", "the same, uploads hashed by the scan fast path "
           "(fastpdq, the server's default)", dihedral=True, strategies=TUNED_STRATEGIES,
           fast_pdq=True),
    Method("hashsvc-ways", "pdq", "every strategy, margin 12 except rotations/flips (0)",
           dihedral=True, strategies=PER_WAY_STRATEGIES),
    Method("hashsvc-more", "pdq", "every strategy plus stored rotations ±3°,±4° and corner "
           "crops 4%,10% (reference PDQ)", dihedral=True, strategies=MORE_STRATEGIES),
    Method("hashonly", "pdq", "a hash-only bank (an imported list: plain hashes known): "
           "the query side's dihedral and trimmed uploads only", dihedral=True,
           strategies=QUERY_SIDE, hash_only=True),
)


@dataclass
class OriginalResult:
    """What one worker learnt about one original image."""

    index: int
    stored: dict[str, HashSet]  # method -> the known image's hashes, as add-images stores them
    queries: dict[str, HashSet]  # method -> the original scanned as an upload (false positives)
    # transform -> method -> the closest query to `stored`, in effective bits: a pair involving
    # a strategy counts its ways' margin further, so "matches at threshold t" is "<= t".
    distances: dict[str, dict[str, int]]
    error: str | None = None
    # Copies the product refused (e.g. over a decode cap): each counts as a miss (NO_MATCH in
    # `distances`), and the original stays in both recall and the false-positive pairs.
    refused: list[str] = field(default_factory=list)
    # method -> per hash of `stored`: its variant name; of `queries`: (transform, trimmed). They
    # say each compared pair's way of matching (hashsvc.matching.calibration) for the tail model.
    stored_kinds: dict[str, list[str]] = field(default_factory=dict)
    query_kinds: dict[str, list[tuple[str, bool]]] = field(default_factory=dict)
    # The same-photo check's thumbnail (`indexer.evaluation.same_photo`), independent of PDQ
    thumbnail: Thumbnail | None = None


@dataclass(frozen=True)
class Job:
    index: int
    path: Path
    methods: tuple[Method, ...]
    transforms: tuple[str, ...]  # suite names (closures do not pickle); empty: original only
    stored: bool = True  # False for negatives: they are only ever queries
    limits: DecodeLimits = DEFAULT_LIMITS  # the upload limits a scan applies (copies included)


def run_job(job: Job) -> OriginalResult:
    try:
        return _run(job)
    except HashsvcError as err:
        return OriginalResult(job.index, {}, {}, {}, error=err.message)
    except OSError as err:
        return OriginalResult(job.index, {}, {}, {}, error=f"{job.path}: {err}")


def _run(job: Job) -> OriginalResult:
    data = job.path.read_bytes()
    stored_kinds: dict[str, list[str]] = {}
    query_kinds: dict[str, list[tuple[str, bool]]] = {}
    stored = stored_hashes(job.path, job.methods, stored_kinds) if job.stored else {}
    queries = query_hashes(Upload(data, name=str(job.path), limits=job.limits), job.methods,
                           query_kinds)
    distances: dict[str, dict[str, int]] = {}
    refused: list[str] = []
    with Image.open(job.path) as opened:
        opened.draft("RGB", (4 * SIDE, 4 * SIDE))  # JPEG: decode at a fraction of the size
        small = thumbnail(opened)
    with Image.open(job.path) as opened:
        image = opened.convert("RGB")
    for transform in (BY_NAME[name] for name in job.transforms):
        upload = Upload(transform.apply(image, job.index), name=f"{job.path}:{transform.name}",
                        limits=job.limits)
        try:
            found = query_hashes(upload, job.methods)
        except ImageError as err:
            # A platform's scan would refuse this copy too: it is a miss, not a lost original.
            refused.append(err.message)
            distances[transform.name] = {m.name: NO_MATCH for m in job.methods}
            continue
        distances[transform.name] = {
            m.name: closest(found[m.name], stored[m.name], m.margins) for m in job.methods
        }
    return OriginalResult(job.index, stored, queries, distances, refused=refused,
                          stored_kinds=stored_kinds, query_kinds=query_kinds, thumbnail=small)


def stored_hashes(
    path: Path, methods: Sequence[Method], kinds: dict[str, list[str]] | None = None
) -> dict[str, HashSet]:
    """Per method, the hashes `indexer add-images` would store for this file; `kinds`, if
    given, receives each hash's variant name ("" for the plain hash)."""
    stored: dict[str, HashSet] = {}
    by_config: dict[tuple[str, tuple[str, ...]], HashSet] = {}
    labels: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for method in methods:
        key = (method.algorithm, method.index_variants)  # margins share hashes
        if key not in by_config:
            strategies = PLAIN if method.hash_only else method.strategies
            result = hash_file(path, [method.algorithm], strategies)
            if result.error is not None:
                raise HashsvcError(result.error)
            values = [h.value for h in result.hashes] + [h.value for _, h in result.variants]
            ways = [0] * len(result.hashes) + [
                WAY_BITS[variant_way(name) or ""] for name, _ in result.variants]
            by_config[key] = (_codes(values), np.array(ways, dtype=np.uint8))
            labels[key] = [""] * len(result.hashes) + [name for name, _ in result.variants]
        stored[method.name] = by_config[key]
        if kinds is not None:
            kinds[method.name] = labels[key]
    return stored


def query_hashes(
    upload: Upload, methods: Sequence[Method],
    kinds: dict[str, list[tuple[str, bool]]] | None = None,
) -> dict[str, HashSet]:
    """Per method, the query hashes a scan of `upload` would look up; `kinds`, if given,
    receives each one's (dihedral transform, trimmed).

    One `Scanner.hash_upload` call per algorithm and PDQ path serves every method sharing it:
    its queries come plain first, then rotations, then trimmed, and each method keeps its part.
    PDQ queries below the quality floor are dropped, as a scan drops them.
    """
    from hashsvc.scanner import Scanner  # here: FAISS is not every `indexer` verb's import cost

    computed: dict[tuple[str, bool], list[Query]] = {}
    found: dict[str, HashSet] = {}
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
        found[method.name] = (_codes([q.hash.value for q in kept]), np.array(
            [WAY_BITS[DIHEDRAL] * (q.transform != "identity") + WAY_BITS[TRIMMED_QUERY] * q.trimmed
             for q in kept], dtype=np.uint8))
        if kinds is not None:
            kinds[method.name] = [(q.transform, q.trimmed) for q in kept]
    return found


def closest(queries: HashSet, stored: HashSet,
            margins: npt.NDArray[np.int64] | None = None) -> int:
    """The smallest effective distance between any query and any stored hash: Hamming
    distance, plus the margin of the ways the pair involves (`margin_table`; the matcher's)."""
    (query_codes, query_ways), (stored_codes, stored_ways) = queries, stored
    if len(query_codes) == 0 or len(stored_codes) == 0:
        return NO_MATCH
    distances = np.bitwise_count(query_codes[:, None, :] ^ stored_codes[None, :, :]).sum(
        axis=2, dtype=np.int64)
    if margins is not None:
        distances += margins[query_ways[:, None] | stored_ways[None, :]]
    return int(distances.min())


def _codes(values: Sequence[bytes]) -> Codes:
    if not values:
        return np.zeros((0, 0), dtype=np.uint8)
    return np.frombuffer(b"".join(values), dtype=np.uint8).reshape(len(values), -1).copy()
