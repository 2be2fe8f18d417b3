"""Query hashes in, every known entry within threshold out. Pure, in memory, thread-safe.

Why range search and not k-NN: a hash can sit in several banks and near many list entries; a
platform must learn of every one within threshold, not the nearest few. We search once per
algorithm at the largest threshold any bank uses, then apply each bank's own threshold.

Allowlist banks hold known-benign hashes (confirmed false positives, stock imagery). A query hash
that matches an allowlist entry suppresses every match of the same algorithm for that scan; the
suppressed matches are returned separately so the result can say why nothing was reported.

Matching strategies (`strategies`) are per bank: a hit found through a rotated or trimmed
query counts only for banks that use that strategy, and a known image's extra hashes (trimmed,
cropped) are reported as one match per image, the closest, naming the variant that matched.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from hashsvc.errors import NotFoundError
from hashsvc.hashing.algorithms import HashValue, get_algorithm
from hashsvc.matching.calibration import Calibration, default_calibration, way_of_matching
from hashsvc.matching.delta import Delta
from hashsvc.matching.mih import MultiIndexHash
from hashsvc.matching.strategies import MatchStrategies
from hashsvc.snapshot import BankInfo, HashTable, Snapshot
from hashsvc.snapshot.model import SnapshotLayer
from hashsvc.store.exchange_model import Provenance

IDENTITY = "identity"


@dataclass(frozen=True)
class Query:
    """One hash to look up; `transform` names the dihedral variant of the upload it came from,
    `trimmed` says it was hashed with the upload's uniform borders cut away, and `source` is the
    index of the scan's hash it derives from (ScanResult.hashes), so a match can name it."""

    hash: HashValue
    transform: str = IDENTITY
    trimmed: bool = False
    source: int = 0

    @property
    def plain(self) -> bool:
        return self.transform == IDENTITY and not self.trimmed


@dataclass(frozen=True)
class Match:
    bank: str
    bank_kind: str
    entry_id: int
    external_id: str | None
    algorithm: str
    distance: int
    threshold: int
    query_transform: str
    tags: tuple[str, ...]
    metadata: dict[str, Any] | None
    query_trimmed: bool = False
    entry_variant: str = ""  # "" when the known hash itself matched; else e.g. "crop_4"
    hash_index: int = 0  # the `source` of the query that matched
    # The tail model's chance that an unrelated upload matches this close (calibration.py)
    false_match_probability: float | None = None
    # where an exchange-backed bank got the entry (exchange, upstream id, tags); () otherwise
    provenance: tuple[Provenance, ...] = ()
    # The entry floods this server's matches: reported, not acted on (server/flood_guard.py)
    quarantined: bool = False


@dataclass
class MatchOutcome:
    matches: list[Match] = field(default_factory=list)
    allowlisted: list[Match] = field(default_factory=list)  # the allowlist entries that hit
    suppressed: list[Match] = field(default_factory=list)  # match-bank hits they cancelled


@dataclass(frozen=True)
class _Hit:
    row: int
    distance: int
    query: Query


class Matcher:
    """Searches one loaded snapshot plus the store's changes since (`delta`). Immutable: build a
    new one for a new snapshot or delta, and share it between threads."""

    def __init__(self, snapshot: Snapshot, delta: Delta | None = None,
                 calibration: Calibration | None = None) -> None:
        self.snapshot = snapshot
        self.delta = delta if delta is not None else Delta.for_snapshot(snapshot)
        self._tombstones = self.delta.tombstones
        self._bank_index = {bank.name: i for i, bank in enumerate(snapshot.banks)}
        # thresholds[algorithm][bank index]: each bank's threshold, so filtering is one lookup.
        self._thresholds: dict[str, npt.NDArray[np.int32]] = {
            name: np.array([bank.threshold(name) for bank in snapshot.banks], dtype=np.int32)
            for name in snapshot.tables
        }
        # The largest threshold per algorithm: each search's radius, computed once, not per call.
        self._radius = {name: int(thresholds.max()) if len(thresholds) else 0
                        for name, thresholds in self._thresholds.items()}
        self._strategies = [bank.strategies for bank in snapshot.banks]
        self._delta_radius = {
            name: max((bank.threshold(name) for bank in [*self.delta.banks.values(),
                                                         *self.delta.layer_banks.values()]),
                      default=0)
            for name in [*self.delta.tables, *self.delta.layer]}
        # Whether any bank matches trimmed uploads, so that scans compute them only then.
        self.wants_trimmed_queries = any(
            bank.strategies.trim_borders
            for bank in [*snapshot.banks, *self.delta.banks.values()])
        self.calibration = calibration if calibration is not None else default_calibration()
        # The served list's size per algorithm, which a match's false-match probability is for
        self.list_sizes = dict(_snapshot_list_sizes(snapshot))
        for name, table in self.delta.tables.items():
            self.list_sizes[name] = self.list_sizes.get(name, 0) + sum(
                1 for entry in table.entries if not entry.variant)

    @property
    def algorithms(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([*self.snapshot.tables, *self.delta.layer,
                                    *self.delta.tables]))

    def search_radius(self, algorithm: str) -> int:
        return self._radius.get(algorithm, 0)

    def match(
        self, queries: Sequence[Query], banks: Collection[str] | None = None,
        scope: Collection[str] | None = None,
    ) -> MatchOutcome:
        """Every entry within its bank's threshold of any query, best variant per entry.

        `scope` (a scoped API key's banks) hides every other bank, allowlists included: a bank
        outside it is reported as unknown if asked for, and neither matches nor suppresses."""
        wanted = self._bank_filter(banks, scope)
        by_algorithm: dict[str, list[Query]] = {}
        for query in queries:
            by_algorithm.setdefault(query.hash.algorithm, []).append(query)

        outcome = MatchOutcome()
        for algorithm, group in by_algorithm.items():
            table = self.snapshot.tables.get(algorithm)
            hits = self._search(table, group) if table is not None else {}
            matches = [self._to_match(algorithm, hit) for hit in hits.values()
                       if int(self.snapshot.entry_ids[hit.row]) not in self._tombstones]
            matches.extend(self._delta_matches(algorithm, group))
            matches = _one_per_known_image(matches)
            allowed = [m for m in matches if m.bank_kind == "allowlist"
                       and (scope is None or m.bank in scope)]
            found = [m for m in matches if m.bank_kind != "allowlist"
                     and (wanted is None or m.bank in wanted)]
            if allowed:
                outcome.allowlisted.extend(allowed)
                outcome.suppressed.extend(found)
            else:
                outcome.matches.extend(found)
        for matches in (outcome.matches, outcome.allowlisted, outcome.suppressed):
            matches[:] = [self._scored(m) for m in matches]
            matches.sort(key=lambda m: (m.distance, m.bank, m.entry_id))
        return outcome

    def _scored(self, match: Match) -> Match:
        probability = self.calibration.false_match_probability(
            match.algorithm,
            way_of_matching(match.query_transform, match.query_trimmed, match.entry_variant),
            match.distance, max(1, self.list_sizes.get(match.algorithm, 0)))
        return replace(match, false_match_probability=probability)

    def _bank_filter(
        self, banks: Collection[str] | None, scope: Collection[str] | None = None
    ) -> set[str] | None:
        if not banks:
            return None if scope is None else set(scope)
        unknown = [name for name in banks
                   if (name not in self._bank_index and name not in self.delta.banks)
                   or (scope is not None and name not in scope)]
        if unknown:
            raise NotFoundError(
                f"bank(s) {', '.join(map(repr, unknown))} not in snapshot "
                f"{self.snapshot.version} (unknown, disabled, or not yet published)"
            )
        return set(banks)

    def _search(self, table: HashTable, queries: list[Query]) -> dict[int, _Hit]:
        """Hits keyed by entry row, keeping each entry's smallest distance (identity on ties)."""
        hits: dict[int, _Hit] = {}
        snapshot = self.snapshot
        for query, code_indices, distances in self._candidates(table, queries):
            for code_index, distance in zip(code_indices, distances, strict=True):
                for row in table.entry_rows(int(code_index)).tolist():
                    bank = int(snapshot.entry_banks[row])
                    if distance > self._thresholds[table.algorithm][bank]:
                        continue
                    strategies = self._strategies[bank]
                    variant = "" if snapshot.entry_variants is None else snapshot.variant(row)
                    if not (query.plain and variant == "") and not _variant_allowed(
                            strategies, query, variant, int(distance),
                            int(self._thresholds[table.algorithm][bank])):
                        continue
                    best = hits.get(row)
                    if best is None or distance < best.distance:
                        hits[row] = _Hit(row, int(distance), query)
        return hits

    def _candidates(
        self, table: HashTable, queries: list[Query]
    ) -> list[tuple[Query, npt.NDArray[np.int64], npt.NDArray[np.int64]]]:
        # Plain first, so that on equal distance the plain query is the one reported.
        queries = sorted(queries, key=_query_order)
        if table.codes is not None:
            return [(q, *_exact_lookup(table.codes, q.hash.value)) for q in queries]
        kind = get_algorithm(table.algorithm)
        codes = np.frombuffer(b"".join(q.hash.value for q in queries), dtype=np.uint8)
        radius = self.search_radius(table.algorithm)
        # MultiIndexHash is inclusive (<= radius); FAISS's binary range search is strict (<).
        strict = not isinstance(table.index, MultiIndexHash)
        limits, distances, labels = table.index.range_search(
            codes.reshape(len(queries), kind.bits // 8), radius + strict
        )
        return [
            (q, labels[limits[i] : limits[i + 1]], distances[limits[i] : limits[i + 1]])
            for i, q in enumerate(queries)
        ]

    def _delta_matches(self, algorithm: str, queries: list[Query]) -> list[Match]:
        """The entries changed since the snapshot: side tables, a layer's and the live one."""
        tables = [(table, banks) for table, banks in (
            (self.delta.layer.get(algorithm), self.delta.layer_banks),
            (self.delta.tables.get(algorithm), self.delta.banks)) if table is not None]
        if not tables:
            return []
        # The largest threshold of any bank (each hit is then held to its own bank's): one per
        # bank, not a pass over the entries, which a layer makes thousands.
        radius = self._delta_radius.get(algorithm, 0)
        best: dict[int, Match] = {}
        hits = ((query, table.entries[index], distance, banks)
                for query in sorted(queries, key=_query_order) for table, banks in tables
                for index, distance in table.within(query.hash.value, radius))
        for query, entry, distance, banks in hits:
            bank = banks.get(entry.bank)
            if bank is None or distance > bank.threshold(algorithm):
                continue
            if not (query.plain and entry.variant == "") and not _variant_allowed(
                    bank.strategies, query, entry.variant, distance,
                    bank.threshold(algorithm)):
                continue
            known = best.get(entry.entry_id)
            if known is None or distance < known.distance:
                best[entry.entry_id] = _match(bank, entry.entry_id, entry.external_id,
                                              algorithm, distance, query,
                                              entry.metadata, entry.variant, entry.provenance)
        return list(best.values())

    def _to_match(self, algorithm: str, hit: _Hit) -> Match:
        snapshot = self.snapshot
        bank = snapshot.banks[int(snapshot.entry_banks[hit.row])]
        return _match(bank, int(snapshot.entry_ids[hit.row]), snapshot.external_ids.get(hit.row),
                      algorithm, hit.distance, hit.query, snapshot.entry_metadata(hit.row),
                      snapshot.variant(hit.row), snapshot.entry_provenance(hit.row))


_LIST_SIZES: dict[tuple[str, int], dict[str, int]] = {}  # (version, id) -> sizes; last few


def _snapshot_list_sizes(snapshot: Snapshot) -> dict[str, int]:
    """Per algorithm, the entries `snapshot` serves (variants not counted), computed once per
    snapshot: a Matcher is rebuilt for every delta, and counting 10M rows took 38 ms (numpy,
    load 4.7). A layered version serves its base's rows less the layer's tombstones plus the
    layer's entries: the same count as the full snapshot of that store state."""
    key = (snapshot.version, id(snapshot))
    sizes = _LIST_SIZES.get(key)
    if sizes is None:
        sizes = {name: _plain_entries(snapshot, table) for name, table in snapshot.tables.items()}
        if snapshot.layer is not None:
            _apply_layer(sizes, snapshot, snapshot.layer)
        while len(_LIST_SIZES) >= 4:
            del _LIST_SIZES[next(iter(_LIST_SIZES))]
        _LIST_SIZES[key] = sizes
    return sizes


def _apply_layer(sizes: dict[str, int], snapshot: Snapshot, layer: SnapshotLayer) -> None:
    plain_code = layer.variant_names.index("") if "" in layer.variant_names else -1
    for name, table in snapshot.tables.items():
        stale = np.isin(snapshot.entry_ids[table.rows], layer.tombstones)
        if snapshot.entry_variants is not None:
            plain = snapshot.variant_names.index("") if "" in snapshot.variant_names else -1
            stale &= snapshot.entry_variants[table.rows] == plain
        sizes[name] -= int(np.count_nonzero(stale))
    start = 0
    for name, codes in layer.codes.items():
        variants = layer.entry_variants[start:start + len(codes)]
        sizes[name] = sizes.get(name, 0) + int(np.count_nonzero(variants == plain_code))
        start += len(codes)


def _plain_entries(snapshot: Snapshot, table: HashTable) -> int:
    """Entries of `table`'s algorithm, not counting stored variants (one known image)."""
    if snapshot.entry_variants is None:
        return len(table.rows)
    plain = snapshot.variant_names.index("") if "" in snapshot.variant_names else -1
    return int(np.count_nonzero(snapshot.entry_variants[table.rows] == plain))


def _query_order(query: Query) -> tuple[bool, bool]:
    return (query.trimmed, query.transform != IDENTITY)


def _variant_allowed(
    strategies: MatchStrategies, query: Query, variant: str, distance: int, threshold: int
) -> bool:
    """Whether a hit that involves a strategy (a rotated or trimmed query, a stored variant)
    counts for a bank: the bank must use that strategy, and the hit must be within the bank's
    threshold minus the margin of the way(s) it matched through."""
    rotated = query.transform != IDENTITY
    return ((not rotated or strategies.dihedral)
            and (not query.trimmed or strategies.trim_borders)
            and strategies.accepts_variant(variant)
            and distance <= threshold - strategies.margin_for(
                rotated=rotated, trimmed=query.trimmed, variant=variant))


def _one_per_known_image(matches: list[Match]) -> list[Match]:
    """Collapse a known image's extra hashes (same bank and external id, some with a variant)
    into its closest match; plain entries that share an external id are left as they are."""
    if not any(m.entry_variant for m in matches):
        return matches
    images = {(m.bank, m.external_id) for m in matches if m.entry_variant and m.external_id}
    best: dict[tuple[str, str | None], Match] = {}
    kept: list[Match] = []
    for match in matches:
        key = (match.bank, match.external_id)
        if key not in images:
            kept.append(match)
            continue
        known = best.get(key)
        if known is None or (match.distance, match.entry_variant != "") < (
                known.distance, known.entry_variant != ""):
            best[key] = match
    return kept + list(best.values())


def _match(
    bank: BankInfo, entry_id: int, external_id: str | None, algorithm: str, distance: int,
    query: Query, metadata: dict[str, Any] | None, variant: str = "",
    provenance: tuple[Provenance, ...] = (),
) -> Match:
    return Match(bank=bank.name, bank_kind=bank.kind, entry_id=entry_id,
                 external_id=external_id, algorithm=algorithm, distance=distance,
                 threshold=bank.threshold(algorithm), query_transform=query.transform,
                 tags=bank.tags, metadata=metadata, query_trimmed=query.trimmed,
                 entry_variant=variant, hash_index=query.source, provenance=provenance)


def _exact_lookup(
    codes: npt.NDArray[Any], value: bytes
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    key = np.array(value, dtype=codes.dtype)
    position = int(np.searchsorted(codes, key))
    if position < len(codes) and codes[position] == key:
        return np.array([position], dtype=np.int64), np.zeros(1, dtype=np.int64)
    return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
