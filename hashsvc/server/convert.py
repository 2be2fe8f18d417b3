"""Translation between the proto contract and the domain types, in one place."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from google.protobuf import json_format, struct_pb2
from hashsvc_client.v1 import admin_pb2, types_pb2

from hashsvc.errors import HashsvcError, InvalidHashError
from hashsvc.hashing.algorithms import ALGORITHMS, HashValue, get_algorithm
from hashsvc.limits import LIMITS, check_external_id, check_metadata, representable
from hashsvc.matching.matcher import IDENTITY, Match
from hashsvc.matching.strategies import MatchStrategies
from hashsvc.scanner import ComputedHash, ScanOptions, ScanResult, Timings
from hashsvc.store import Bank, Entry, EntryQuery, EntrySelector, NewEntry, decode_page_token
from hashsvc.store.exchange_model import Provenance
from hashsvc.store.feedback_model import CONFIRMED, FALSE_POSITIVE, Feedback
from hashsvc.store.listing import DEFAULT_PAGE_SIZE

log = logging.getLogger("hashsvc.convert")

ALGORITHM_TO_PROTO: dict[str, types_pb2.Algorithm.ValueType] = {
    name: types_pb2.Algorithm.Value(f"ALGORITHM_{name.upper()}") for name in ALGORITHMS
}
PROTO_TO_ALGORITHM: dict[types_pb2.Algorithm.ValueType, str] = {
    value: name for name, value in ALGORITHM_TO_PROTO.items()
}
BANK_KIND_TO_PROTO: dict[str, types_pb2.BankKind.ValueType] = {
    "match": types_pb2.BANK_KIND_MATCH, "allowlist": types_pb2.BANK_KIND_ALLOWLIST,
}
PROTO_TO_BANK_KIND: dict[types_pb2.BankKind.ValueType, str] = {
    value: name for name, value in BANK_KIND_TO_PROTO.items()
}
VERDICT_TO_PROTO: dict[str, admin_pb2.FeedbackVerdict.ValueType] = {
    CONFIRMED: admin_pb2.FEEDBACK_VERDICT_CONFIRMED,
    FALSE_POSITIVE: admin_pb2.FEEDBACK_VERDICT_FALSE_POSITIVE,
}


def algorithm_name(value: types_pb2.Algorithm.ValueType, where: str = "algorithm") -> str:
    try:
        return PROTO_TO_ALGORITHM[value]
    except KeyError:
        raise InvalidHashError(
            f"{where}: unspecified or unknown algorithm {value} "
            f"(use one of {', '.join(f'ALGORITHM_{n.upper()}' for n in ALGORITHMS)})"
        ) from None


def hash_from_proto(message: types_pb2.Hash, where: str) -> HashValue:
    name = algorithm_name(message.algorithm, where)
    kind = get_algorithm(name)
    field = message.WhichOneof("value")
    if field == "hex":
        try:
            value = kind.parse(message.hex)
        except InvalidHashError as err:
            raise InvalidHashError(f"{where}: {err.message}") from None
    elif field == "raw":
        if len(message.raw) * 8 != kind.bits:
            raise InvalidHashError(
                f"{where}: {name} hash must be {kind.bits // 8} raw bytes, got {len(message.raw)}"
            )
        value = message.raw
    else:
        raise InvalidHashError(f"{where}: no hash value (set hex or raw)")
    quality = message.quality if message.HasField("quality") else None
    return HashValue(name, value, quality)


def hashes_from_proto(messages: Sequence[types_pb2.Hash], field: str) -> list[HashValue]:
    return [hash_from_proto(m, f"{field}[{i}]") for i, m in enumerate(messages)]


_PLAIN = (types_pb2.TRANSFORM_UNSPECIFIED, types_pb2.TRANSFORM_IDENTITY)


def transforms_from_proto(messages: Sequence[types_pb2.Hash], field: str) -> list[str]:
    """Each hash's `transform` as the matcher names it ("identity" when unset), so that a
    caller's rotated variant reports its transform as a ScanImage variant does."""
    names: list[str] = []
    for index, message in enumerate(messages):
        if message.transform in _PLAIN:
            names.append(IDENTITY)
            continue
        where = f"{field}[{index}]"
        try:
            name = types_pb2.Transform.Name(message.transform)
        except ValueError:
            raise InvalidHashError(f"{where}: unknown transform {message.transform}") from None
        if get_algorithm(algorithm_name(message.algorithm, where)).exact:
            raise InvalidHashError(f"{where}: {name} applies to perceptual hashes only, not to "
                                   "a digest of the file bytes")
        names.append(name.removeprefix("TRANSFORM_").lower())
    return names


_DEFAULT_OPTIONS = ScanOptions()


def options_from_proto(
    message: types_pb2.ScanOptions, scope: frozenset[str] | None = None
) -> ScanOptions:
    """The scan's options; `scope` is the calling key's banks (None: every bank)."""
    if message.ByteSize() == 0 and scope is None:  # most calls: the defaults, already built
        return _DEFAULT_OPTIONS
    return ScanOptions(
        algorithms=tuple(algorithm_name(a, "options.algorithms") for a in message.algorithms),
        banks=tuple(message.banks),
        dihedral=not message.disable_dihedral,
        match_low_quality=message.match_low_quality,
        scope=scope,
    )


def entry_from_proto(message: admin_pb2.NewEntry, where: str) -> NewEntry:
    """An AddEntries entry, checked against the same limits as `indexer import`."""
    value = hash_from_proto(message.hash, f"{where}.hash")
    try:
        external_id = check_external_id(message.external_id)
    except HashsvcError as err:
        raise HashsvcError(f"{where}.external_id: {err.message}") from None
    try:
        # MessageToDict refuses NaN and infinities (ValueError): they are not JSON.
        metadata = check_metadata(json_format.MessageToDict(message.metadata))
    except (HashsvcError, ValueError) as err:
        reason = err.message if isinstance(err, HashsvcError) else str(err)
        raise HashsvcError(f"{where}.metadata: {reason}") from None
    return NewEntry(value.algorithm, value.value, external_id, metadata)


# A Struct this large came from an entry stored before the limits: sending it could push the
# response past what clients accept (4 MB by default), so the match is reported without it.
# Checked metadata stays below it: a Struct spends at most ~5.5x its JSON's bytes (a list of
# one-digit numbers: 2 bytes of JSON, 11 of Struct, each).
_MAX_SENT_METADATA_BYTES = 8 * LIMITS.metadata_bytes


def struct(value: dict[str, Any] | None, entry_id: int = 0) -> struct_pb2.Struct | None:
    """An entry's metadata as a Struct, for its matches.

    Entries are checked when added (`limits.check_metadata`), but a store written by an older
    version may hold metadata no Struct can carry (a 401-digit integer, a lone surrogate, 900
    levels of nesting); that must not fail the scan that found the entry, so such values are
    sent as text instead (levels too deep for clients to decode included), and metadata too
    large to send is left out. Checked metadata passes through unchanged."""
    if not value:
        return None
    message = struct_pb2.Struct()
    message.update(representable(value))
    if message.ByteSize() > _MAX_SENT_METADATA_BYTES:
        log.warning("metadata left out of a match: too large to send",
                    extra={"entry_id": entry_id, "bytes": message.ByteSize()})
        return None
    return message


def match_to_proto(match: Match) -> types_pb2.Match:
    return types_pb2.Match(
        bank=match.bank,
        entry_id=match.entry_id,
        external_id=match.external_id or "",
        algorithm=ALGORITHM_TO_PROTO[match.algorithm],
        distance=match.distance,
        threshold=match.threshold,
        query_transform=types_pb2.Transform.Value(
            f"TRANSFORM_{match.query_transform.upper()}"
        ),
        tags=match.tags,
        metadata=struct(match.metadata, match.entry_id),
        bank_kind=BANK_KIND_TO_PROTO[match.bank_kind],
        query_trimmed=match.query_trimmed,
        entry_variant=match.entry_variant,
        hash_index=match.hash_index,
        false_match_probability=match.false_match_probability,
        provenance=provenance_to_proto(match.provenance),
        status=(types_pb2.MATCH_STATUS_QUARANTINED if match.quarantined
                else types_pb2.MATCH_STATUS_MATCHED),
    )


def computed_hash_to_proto(computed: ComputedHash) -> types_pb2.ComputedHash:
    value = computed.hash
    return types_pb2.ComputedHash(
        algorithm=ALGORITHM_TO_PROTO[value.algorithm],
        hex=value.hex,
        quality=value.quality,
        low_quality=computed.low_quality,
    )


def timings_to_proto(timings: Timings) -> types_pb2.Timings:
    return types_pb2.Timings(
        decode_ms=timings.decode_seconds * 1000,
        hash_ms=timings.hash_seconds * 1000,
        match_ms=timings.match_seconds * 1000,
        total_ms=timings.total_seconds * 1000,
    )


def result_to_proto(result: ScanResult, request_id: str) -> types_pb2.ScanResult:
    return types_pb2.ScanResult(
        matched=result.matched,
        matches=[match_to_proto(m) for m in result.matches],
        hashes=[computed_hash_to_proto(h) for h in result.hashes],
        snapshot_version=result.snapshot_version,
        timings=timings_to_proto(result.timings),
        suppressed=[match_to_proto(m) for m in result.suppressed],
        allowlisted=[match_to_proto(m) for m in result.allowlisted],
        request_id=request_id,
    )


def bank_to_proto(bank: Bank) -> types_pb2.Bank:
    return types_pb2.Bank(
        name=bank.name,
        description=bank.description,
        kind=BANK_KIND_TO_PROTO[bank.kind],
        enabled=bank.enabled,
        tags=bank.tags,
        thresholds=bank.thresholds,
        entry_count=bank.entry_count,
        created_at=bank.created_at,
        updated_at=bank.updated_at,
        strategies=types_pb2.MatchStrategies(
            no_dihedral=not bank.strategies.dihedral,
            trim_borders=bank.strategies.trim_borders,
            crop_variants=bank.strategies.crop_variants,
            variant_margin=bank.strategies.variant_margin,
            margins=dict(bank.strategies.margins),
            rotation_variants=bank.strategies.rotation_variants,
            corner_crops=bank.strategies.corner_crops,
        ),
    )


def strategies_from_proto(message: types_pb2.MatchStrategies) -> MatchStrategies:
    return MatchStrategies(dihedral=not message.no_dihedral, trim_borders=message.trim_borders,
                           crop_variants=tuple(message.crop_variants),
                           variant_margin=message.variant_margin,
                           margins=tuple(message.margins.items()),
                           rotation_variants=tuple(message.rotation_variants),
                           corner_crops=tuple(message.corner_crops))


def bank_kind(value: types_pb2.BankKind.ValueType) -> str:
    return PROTO_TO_BANK_KIND.get(value, "match")


def selector_from_proto(message: admin_pb2.EntrySelector, where: str) -> EntrySelector:
    hashes = hashes_from_proto(message.hashes, f"{where}.hashes")
    return EntrySelector(
        ids=list(message.ids),
        external_ids=list(message.external_ids),
        hashes=[(h.algorithm, h.value) for h in hashes],
    )


def counts_to_proto(counts: dict[str, Any]) -> admin_pb2.SnapshotCounts:
    return admin_pb2.SnapshotCounts(
        entries=counts.get("entries", 0),
        by_algorithm=counts.get("by_algorithm", {}),
        by_bank={bank: admin_pb2.AlgorithmCounts(by_algorithm=by_algorithm)
                 for bank, by_algorithm in counts.get("by_bank", {}).items()},
    )


def verdict_from_proto(value: admin_pb2.FeedbackVerdict.ValueType) -> str:
    for name, proto in VERDICT_TO_PROTO.items():
        if proto == value:
            return name
    raise HashsvcError("verdict: unspecified or unknown (use FEEDBACK_VERDICT_CONFIRMED or "
                       "FEEDBACK_VERDICT_FALSE_POSITIVE)")


def feedback_to_proto(feedback: Feedback) -> admin_pb2.EntryFeedback:
    message = admin_pb2.EntryFeedback(
        id=feedback.id, verdict=VERDICT_TO_PROTO[feedback.verdict], reason=feedback.reason,
        case_id=feedback.case_id, given_by=feedback.given_by, given_at=feedback.given_at,
        upload_id=feedback.upload_id, upstream=feedback.upstream)
    algorithm, _, hex_value = feedback.scanned_hash.partition(":")
    if algorithm in ALGORITHM_TO_PROTO:  # stored as "algorithm:hex" (feedback_model)
        message.scanned_hash.CopyFrom(types_pb2.Hash(algorithm=ALGORITHM_TO_PROTO[algorithm],
                                                     hex=hex_value))
    return message


def provenance_to_proto(provenance: Sequence[Provenance]) -> list[types_pb2.EntryProvenance]:
    return [types_pb2.EntryProvenance(exchange=p.exchange, upstream_id=p.upstream_id,
                                      tags=p.tags, first_seen=p.first_seen,
                                      last_seen=p.last_seen) for p in provenance]


def entry_to_proto(entry: Entry, provenance: Sequence[Provenance] = (),
                   feedback: Sequence[Feedback] = ()) -> admin_pb2.Entry:
    """`entry` with the provenance an exchange-backed bank recorded for it and the verdicts
    analysts gave on it (the caller reads both from the store: a page's worth in one query)."""
    return admin_pb2.Entry(
        feedback=[feedback_to_proto(f) for f in feedback],
        provenance=provenance_to_proto(provenance),
        id=entry.id, bank=entry.bank,
        hash=types_pb2.Hash(algorithm=ALGORITHM_TO_PROTO[entry.algorithm],
                            hex=get_algorithm(entry.algorithm).format(entry.hash)),
        external_id=entry.external_id or "", metadata=struct(entry.metadata, entry.id),
        added_at=entry.added_at, disabled=entry.disabled,
        disabled_reason=entry.disabled_reason or "", variant=entry.variant,
    )


def entry_query_from_proto(message: admin_pb2.ListEntriesRequest) -> EntryQuery:
    found = hash_from_proto(message.hash, "hash") if message.HasField("hash") else None
    return EntryQuery(
        banks=list(message.banks), external_id=message.external_id or None,
        hash=(found.algorithm, found.value) if found else None,
        disabled=message.disabled if message.HasField("disabled") else None,
        exchange=message.exchange or None, upstream_id=message.upstream_id or None,
        after_id=decode_page_token(message.page_token),
        limit=message.page_size or DEFAULT_PAGE_SIZE,
    ).checked()
