"""The scan use case, with no transport in it: bytes or hashes in, an explained result out.

The gRPC server, `indexer match` and the evaluation tools all call this, so what they report is
what the product does. The loaded snapshot is held in one attribute and replaced by one reference
assignment (`swap`); each scan reads it once, so a reload never mixes two snapshots in one answer.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from hashsvc.errors import DecodeBudgetExhaustedError, NotLoadedError
from hashsvc.hashing import fastpdq
from hashsvc.hashing.algorithms import (
    ALGORITHMS,
    DIHEDRAL_TRANSFORMS,
    PDQ,
    QUALITY_FLOOR,
    HashValue,
    get_algorithm,
)
from hashsvc.hashing.decode_budget import MemoryBudget
from hashsvc.hashing.imaging import DEFAULT_LIMITS, DecodeLimits, Upload
from hashsvc.matching import variants
from hashsvc.matching.delta import Delta
from hashsvc.matching.matcher import IDENTITY, Match, Matcher, MatchOutcome, Query
from hashsvc.snapshot import Snapshot

ALWAYS_COMPUTED = ("pdq",)  # reported even when no bank holds PDQ hashes: it is the lingua franca


@dataclass(frozen=True)
class ScanOptions:
    algorithms: tuple[str, ...] = ()  # empty: every algorithm the snapshot indexes, plus PDQ
    banks: tuple[str, ...] = ()  # empty: every match bank
    dihedral: bool = True  # also query PDQ's 7 rotated/flipped variants of the upload
    match_low_quality: bool = False  # match PDQ hashes whose quality is below the floor
    trim_borders: bool = True  # also query the upload trimmed, if a bank uses that strategy
    scope: frozenset[str] | None = None  # a scoped key's banks: no other bank is seen at all


@dataclass(frozen=True)
class ComputedHash:
    hash: HashValue

    @property
    def low_quality(self) -> bool:
        """Below PDQ's quality floor; a hash supplied without a quality is taken as it is."""
        quality = self.hash.quality
        return self.hash.algorithm == PDQ.name and quality is not None and quality < QUALITY_FLOOR


@dataclass
class Timings:
    decode_seconds: float = 0.0
    hash_seconds: float = 0.0
    match_seconds: float = 0.0
    total_seconds: float = 0.0
    fast_decode_seconds: float = 0.0  # part of decode_seconds spent in fastpdq's small decode
    fast_pixels: int = 0  # the original size of an image only fastpdq decoded


@dataclass
class ScanResult:
    snapshot_version: str
    hashes: list[ComputedHash]
    matches: list[Match]
    allowlisted: list[Match] = field(default_factory=list)
    suppressed: list[Match] = field(default_factory=list)
    timings: Timings = field(default_factory=Timings)
    image_pixels: int = 0  # 0 when no image was decoded (hash-only scans, exact kinds only)

    @property
    def matched(self) -> bool:
        """Whether any match stands: quarantined ones (server/flood_guard.py) are reported
        for review, but a platform acting on `matched` must not act on a flood."""
        return any(not match.quarantined for match in self.matches)


class Scanner:
    def __init__(
        self, snapshot: Snapshot | None = None, limits: DecodeLimits = DEFAULT_LIMITS,
        *, fast_pdq: bool = False,
    ) -> None:
        """`fast_pdq` hashes PDQ the scan way (hashsvc.hashing.fastpdq: small decode, 9-40x faster,
        within 10 bits of the reference); off by default until the detection-quality
        evaluation shows it loses no recall. Every decode a scan makes is reserved from one
        `MemoryBudget` of `limits.decode_memory_budget` bytes, shared by the calls in flight."""
        self.limits = limits
        self.fast_pdq = fast_pdq
        self.budget = MemoryBudget(limits.decode_memory_budget)
        self._matcher: Matcher | None = Matcher(snapshot) if snapshot is not None else None

    def swap(self, snapshot: Snapshot, delta: Delta | None = None) -> None:
        """Serve `snapshot` (plus `delta`) from now on; running scans finish on the old one."""
        self._matcher = Matcher(snapshot, delta)

    def apply_delta(self, delta: Delta) -> None:
        """Serve the same snapshot with a newer delta of store changes."""
        matcher = self._matcher
        if matcher is not None:
            self._matcher = Matcher(matcher.snapshot, delta)

    @property
    def matcher(self) -> Matcher | None:
        return self._matcher

    @property
    def snapshot(self) -> Snapshot | None:
        matcher = self._matcher
        return matcher.snapshot if matcher is not None else None

    def _current(self) -> Matcher:
        matcher = self._matcher
        if matcher is None:
            raise NotLoadedError("no snapshot is loaded yet")
        return matcher

    def hash_upload(
        self, upload: Upload, algorithms: Sequence[str], *, dihedral: bool = False,
        exact: bool = False, trim: bool = False,
    ) -> tuple[list[HashValue], list[Query], Timings]:
        """Compute `algorithms` over an upload; with `dihedral`, PDQ yields 8 queries, and with
        `trim` as many again from the upload with its uniform borders cut away (if it has any).
        `exact` forces the reference PDQ pipeline (hashes that will be exported or listed).

        The decodes are reserved from the scanner's memory budget until the hashes are done."""
        with self.budget.lease() as lease:
            upload.lease = lease
            try:
                return self._hash_upload(upload, algorithms, dihedral=dihedral, exact=exact,
                                         trim=trim)
            except MemoryError:  # past the estimate: this call fails cleanly, the server lives
                raise DecodeBudgetExhaustedError(
                    f"{upload.name}: out of memory while hashing; retry shortly") from None
            finally:
                upload.lease = None

    def _hash_upload(
        self, upload: Upload, algorithms: Sequence[str], *, dihedral: bool, exact: bool,
        trim: bool,
    ) -> tuple[list[HashValue], list[Query], Timings]:
        timings = Timings()
        kinds = [get_algorithm(name) for name in algorithms]
        fast = self.fast_pdq and upload.apply_orientation and not exact
        if any(not kind.exact and not (fast and kind.name == PDQ.name) for kind in kinds):
            started = time.perf_counter()
            _ = upload.decoded  # decode once, timed on its own
            timings.decode_seconds = time.perf_counter() - started
        started = time.perf_counter()
        hashes: list[HashValue] = []
        queries: list[Query] = []
        for kind in kinds:
            if kind.name == PDQ.name:
                pdq_queries = _pdq_queries(upload, timings, fast=fast, dihedral=dihedral,
                                           trim=trim, source=len(hashes))
                hashes.append(pdq_queries[0].hash)
                queries.extend(pdq_queries)
            else:
                value = kind.compute(upload)
                queries.append(Query(value, source=len(hashes)))
                hashes.append(value)
        # The fast path decodes inside the PDQ step; that share is reported as decode time.
        timings.hash_seconds = time.perf_counter() - started - timings.fast_decode_seconds
        timings.decode_seconds += timings.fast_decode_seconds
        return hashes, queries, timings

    def scan_image(
        self, data: bytes, options: ScanOptions = ScanOptions(), *, name: str = "image"
    ) -> ScanResult:
        started = time.perf_counter()
        matcher = self._current()
        algorithms = options.algorithms or _default_algorithms(matcher)
        upload = Upload(data, name=name, limits=self.limits)
        hashes, queries, timings = self.hash_upload(
            upload, algorithms, dihedral=options.dihedral,
            trim=options.trim_borders and matcher.wants_trimmed_queries)
        result = self._match(matcher, hashes, queries, options, timings)
        result.image_pixels = upload.pixels or timings.fast_pixels
        result.timings.total_seconds = time.perf_counter() - started
        return result

    def scan_hashes(
        self, hashes: Sequence[HashValue], options: ScanOptions = ScanOptions(),
        transforms: Sequence[str] = (),
    ) -> ScanResult:
        """The privacy-preserving path: the platform hashed the image itself. `transforms`
        names the dihedral variant each hash was computed from (default: all identity); the
        variants are queried as ScanImage queries its own, unless `options.dihedral` is off."""
        started = time.perf_counter()
        matcher = self._current()
        queries = [Query(h, t, source=i) for i, (h, t) in
                   enumerate(zip(hashes, transforms or [IDENTITY] * len(hashes), strict=True))]
        if not options.dihedral:
            queries = [q for q in queries if q.transform == IDENTITY]
        result = self._match(matcher, list(hashes), queries, options, Timings())
        result.timings.total_seconds = time.perf_counter() - started
        return result

    def _match(
        self,
        matcher: Matcher,
        hashes: list[HashValue],
        queries: list[Query],
        options: ScanOptions,
        timings: Timings,
    ) -> ScanResult:
        computed = [ComputedHash(h) for h in hashes]
        skip_low_quality = not options.match_low_quality and any(c.low_quality for c in computed)
        if skip_low_quality:
            queries = [q for q in queries if not ComputedHash(q.hash).low_quality]
        started = time.perf_counter()
        outcome = (matcher.match(queries, options.banks, options.scope) if queries
                   else MatchOutcome())
        timings.match_seconds = time.perf_counter() - started
        return ScanResult(
            snapshot_version=matcher.snapshot.version,
            hashes=computed,
            matches=outcome.matches,
            allowlisted=outcome.allowlisted,
            suppressed=outcome.suppressed,
            timings=timings,
        )


def _pdq_queries(
    upload: Upload, timings: Timings, *, fast: bool, dihedral: bool, trim: bool, source: int
) -> list[Query]:
    """The upload's PDQ queries: plain first, then (`dihedral`) its 7 rotations and flips,
    then (`trim`) the same of each trimmed box, if it has uniform borders (fully trimmed, and
    with only the added border cut when that differs)."""
    if fast:
        started = time.perf_counter()
        reduced = fastpdq.decode_reduced(upload.data, upload.limits, name=upload.name,
                                         lease=upload.lease)
        timings.fast_decode_seconds = time.perf_counter() - started
        timings.fast_pixels = reduced.pixels
        plain = fastpdq.pdq_hashes(reduced, dihedral=dihedral)
        trimmed = variants.trimmed_pdq_fast(reduced, dihedral=dihedral) if trim else []
    else:
        plain = PDQ.hash_rgb(upload.decoded.rgb, dihedral=dihedral)
        trimmed = variants.trimmed_pdq(upload, dihedral=dihedral) if trim else []
    return ([Query(v, t, source=source)
             for v, t in zip(plain, DIHEDRAL_TRANSFORMS, strict=False)]
            + [Query(v, t, trimmed=True, source=source)
               for box_hashes in trimmed
               for v, t in zip(box_hashes, DIHEDRAL_TRANSFORMS, strict=False)])


def _default_algorithms(matcher: Matcher) -> tuple[str, ...]:
    wanted = set(matcher.algorithms) | set(ALWAYS_COMPUTED)
    return tuple(name for name in ALGORITHMS if name in wanted)
