"""AdminService: banks, entries and publishing, over the same store the indexer uses."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, TypeVar

import grpc
from hashsvc_client.v1 import admin_pb2, types_pb2

from hashsvc.errors import HashsvcError, NotFoundError
from hashsvc.limits import check_name, loggable, quote
from hashsvc.metrics import MATCH_FEEDBACK
from hashsvc.server import convert, scope
from hashsvc.server.admin_activity import ActivityServicer
from hashsvc.server.evaluation_report import read_report
from hashsvc.server.interceptors import caller
from hashsvc.server.replicas import list_replicas
from hashsvc.server.runtime import Runtime
from hashsvc.server.status import abort
from hashsvc.snapshot import publish
from hashsvc.store import Entry, EntrySelector, NewEntry, encode_page_token
from hashsvc.store.exchange_model import Provenance
from hashsvc.store.feedback_model import Feedback, NewFeedback

log = logging.getLogger("hashsvc.admin")
PerEntry = TypeVar("PerEntry", Provenance, Feedback)

UPDATABLE = ("name", "description", "kind", "enabled", "tags", "thresholds", "strategies")


class AdminServicer(ActivityServicer):
    """Exchange syncs and recent matches are ActivityServicer's (admin_activity.py)."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime)
        self._runtime = runtime
        self._store = runtime.store

    def CreateBank(
        self, request: admin_pb2.CreateBankRequest, context: grpc.ServicerContext
    ) -> admin_pb2.CreateBankResponse:
        bank = request.bank
        try:
            created = self._store.create_bank(
                scope.may_name(bank.name), description=bank.description,
                kind=convert.bank_kind(bank.kind),
                tags=bank.tags, thresholds=dict(bank.thresholds),
                strategies=convert.strategies_from_proto(bank.strategies),
            )
        except HashsvcError as err:
            abort(context, err)
        self._audit("create_bank", bank=created.name)
        return admin_pb2.CreateBankResponse(bank=convert.bank_to_proto(created))

    def ListBanks(
        self, request: admin_pb2.ListBanksRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListBanksResponse:
        banks = [convert.bank_to_proto(b) for b in self._store.list_banks()
                 if scope.visible(b.name)]
        if request.entry_counts:
            counts = self._store.entry_counts()
            for bank in banks:
                for algorithm, (enabled, disabled) in counts.get(bank.name, {}).items():
                    bank.entry_counts[algorithm].CopyFrom(
                        types_pb2.EntryCounts(enabled=enabled, disabled=disabled))
        return admin_pb2.ListBanksResponse(banks=banks)

    def UpdateBank(
        self, request: admin_pb2.UpdateBankRequest, context: grpc.ServicerContext
    ) -> admin_pb2.UpdateBankResponse:
        paths = list(request.update_mask.paths)
        try:
            unknown = [p for p in paths if p not in UPDATABLE]
            if not paths or unknown:
                raise HashsvcError(
                    f"update_mask must name fields to change, from {', '.join(UPDATABLE)}"
                    + (f" (unknown: {', '.join(unknown)})" if unknown else "")
                )
            bank = request.bank
            scope.require(request.name)
            changes: dict[str, Any] = {
                "new_name": scope.may_name(bank.name) if "name" in paths else None,
                "description": bank.description if "description" in paths else None,
                "kind": convert.bank_kind(bank.kind) if "kind" in paths else None,
                "enabled": bank.enabled if "enabled" in paths else None,
                "tags": list(bank.tags) if "tags" in paths else None,
                "thresholds": dict(bank.thresholds) if "thresholds" in paths else None,
                "strategies": (convert.strategies_from_proto(bank.strategies)
                               if "strategies" in paths else None),
            }
            updated = self._store.update_bank(request.name, **changes)
        except HashsvcError as err:
            abort(context, err)
        self._audit("update_bank", bank=updated.name, fields=paths)
        return admin_pb2.UpdateBankResponse(bank=convert.bank_to_proto(updated))

    def DeleteBank(
        self, request: admin_pb2.DeleteBankRequest, context: grpc.ServicerContext
    ) -> admin_pb2.DeleteBankResponse:
        try:
            removed = self._store.delete_bank(scope.require(request.name))
        except HashsvcError as err:
            abort(context, err)
        self._audit("delete_bank", bank=request.name, entries=removed)
        return admin_pb2.DeleteBankResponse(entries_removed=removed)

    def AddEntries(
        self, requests: Iterator[admin_pb2.AddEntriesRequest], context: grpc.ServicerContext
    ) -> admin_pb2.AddEntriesResponse:
        """The whole stream is one transaction: any invalid entry rolls back all of it."""
        try:
            first, requests = _first(requests)
            bank = _bank_of(first)
            with self._store.bulk_add(bank) as adder:
                position = 0
                for request in _same_bank(bank, itertools.chain([first], requests)):
                    batch: list[NewEntry] = []
                    for entry in request.entries:
                        batch.append(convert.entry_from_proto(entry, f"entries[{position}]"))
                        position += 1
                    adder.add(batch)
        except HashsvcError as err:
            abort(context, err)
        self._runtime.refresh_delta()  # visible to this worker's scans before the call returns
        result = adder.result
        self._audit("add_entries", bank=bank, added=result.added, duplicates=result.duplicates)
        return admin_pb2.AddEntriesResponse(added=result.added, duplicates=result.duplicates)

    def SetEntriesDisabled(
        self, requests: Iterator[admin_pb2.SetEntriesDisabledRequest],
        context: grpc.ServicerContext,
    ) -> admin_pb2.SetEntriesDisabledResponse:
        try:
            first, requests = _first(requests)
            bank = _bank_of(first)
            selector = _merged_selector(_same_bank(bank, itertools.chain([first], requests)))
            changed = self._store.set_disabled(bank, selector, first.disabled,
                                               first.reason or None)
        except HashsvcError as err:
            abort(context, err)
        self._runtime.refresh_delta()  # visible to this worker's scans before the call returns
        self._audit("set_entries_disabled", bank=bank, disabled=first.disabled,
                    changed=changed, reason=loggable(first.reason))
        return admin_pb2.SetEntriesDisabledResponse(changed=changed)

    def RemoveEntries(
        self, requests: Iterator[admin_pb2.RemoveEntriesRequest], context: grpc.ServicerContext
    ) -> admin_pb2.RemoveEntriesResponse:
        try:
            first, requests = _first(requests)
            bank = _bank_of(first)
            removed = self._store.remove_entries(
                bank, _merged_selector(_same_bank(bank, itertools.chain([first], requests)))
            )
        except HashsvcError as err:
            abort(context, err)
        self._runtime.refresh_delta()  # visible to this worker's scans before the call returns
        self._audit("remove_entries", bank=bank, removed=removed)
        return admin_pb2.RemoveEntriesResponse(removed=removed)

    def ListEntries(
        self, request: admin_pb2.ListEntriesRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListEntriesResponse:
        try:
            query = convert.entry_query_from_proto(request)
            if query.banks:
                for bank in query.banks:
                    scope.require(bank)
            elif (banks := scope.current()) is not None:  # the key's banks that exist
                query = replace(query, banks=[b.name for b in self._store.list_banks()
                                              if b.name in banks])
                if not query.banks:
                    return admin_pb2.ListEntriesResponse()
            page = self._store.list_entries(query)
            ids = [e.id for e in page.entries]
            origins = _by_entry(self._store.entries_provenance(ids))
            verdicts = _by_entry(self._store.entries_feedback(ids))
        except HashsvcError as err:
            abort(context, err)
        return admin_pb2.ListEntriesResponse(
            entries=[convert.entry_to_proto(e, origins.get(e.id, ()), verdicts.get(e.id, ()))
                     for e in page.entries],
            next_page_token=encode_page_token(page.next_after_id),
        )

    def GetEntry(
        self, request: admin_pb2.GetEntryRequest, context: grpc.ServicerContext
    ) -> admin_pb2.GetEntryResponse:
        try:
            entry = self._store.get_entry(request.id)
            if not scope.visible(entry.bank):  # the very answer a missing entry gets
                raise NotFoundError(f"no entry with id {request.id}")
            origins = self._store.entry_provenance(entry.id)
            verdicts = self._store.entries_feedback([entry.id])
        except HashsvcError as err:
            abort(context, err)
        return admin_pb2.GetEntryResponse(entry=convert.entry_to_proto(entry, origins, verdicts))

    def ReportMatchFeedback(
        self, request: admin_pb2.ReportMatchFeedbackRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ReportMatchFeedbackResponse:
        """Recorded in the store first (the record of truth), then counted and audited: a
        call that fails records nothing anywhere."""
        try:
            entry = self._feedback_entry(request)
            scanned = (convert.hash_from_proto(request.scanned_hash, "scanned_hash")
                       if request.HasField("scanned_hash") else None)
            feedback = NewFeedback(
                verdict=convert.verdict_from_proto(request.verdict), reason=request.reason,
                case_id=request.case_id, given_by=caller.get(), upload_id=request.upload_id,
                scanned_hash=f"{scanned.algorithm}:{scanned.hex}" if scanned else "",
            ).checked()
            result = self._store.record_feedback(entry.id, feedback)
        except HashsvcError as err:
            abort(context, err)
        if result.disabled_now:
            self._runtime.refresh_delta()  # out of this worker's scans before the call returns
        MATCH_FEEDBACK.labels(bank=entry.bank, verdict=feedback.verdict).inc()
        fields: dict[str, Any] = {
            "bank": entry.bank, "entry_id": entry.id, "verdict": feedback.verdict,
            "feedback_id": result.feedback_id, "case_id": loggable(feedback.case_id),
            "reason": loggable(feedback.reason), "disabled_now": result.disabled_now,
            "queued_upstream": result.queued, "scanned_hash": feedback.scanned_hash,
            "upload_id": loggable(feedback.upload_id)}
        self._runtime.audit.event("match_feedback", caller=feedback.given_by, **fields)
        self._audit("report_match_feedback", **fields)
        return admin_pb2.ReportMatchFeedbackResponse(
            feedback_id=result.feedback_id, entry_id=entry.id,
            disabled=result.disabled_reason is not None, disabled_now=result.disabled_now,
            disabled_reason=result.disabled_reason or "", queued_upstream=result.queued)

    def _feedback_entry(self, request: admin_pb2.ReportMatchFeedbackRequest) -> Entry:
        """The entry a verdict is about, by id or by bank and hash; one the caller's key may
        not see gets the very answer a missing one gets."""
        if request.entry_id:
            entry = self._store.get_entry(request.entry_id)
            if not scope.visible(entry.bank) or (request.bank and request.bank != entry.bank):
                raise NotFoundError(f"no entry with id {request.entry_id}"
                                    + (f" in bank {quote(request.bank)}" if request.bank else ""))
            return entry
        if not request.bank or not request.HasField("hash"):
            raise HashsvcError("name the entry: entry_id (a match's entry_id), or bank and hash")
        bank = scope.require(check_name(request.bank))
        value = convert.hash_from_proto(request.hash, "hash")
        found = [e for e in self._store.find_entries(
            bank, EntrySelector(hashes=[(value.algorithm, value.value)])) if not e.variant]
        if not found:
            raise NotFoundError(f"no entry with {value.algorithm} hash {value.hex} in bank "
                                f"{quote(bank)}")
        return found[0]

    def PublishSnapshot(
        self, request: admin_pb2.PublishSnapshotRequest, context: grpc.ServicerContext
    ) -> admin_pb2.PublishSnapshotResponse:
        try:
            result = publish(self._store, self._runtime.repository, force=request.force)
        except HashsvcError as err:
            abort(context, err)
        # Serve it before answering, so a scan right after this call already sees the change.
        self._runtime.reload()
        self._audit("publish", version=result.version, published=result.published)
        return admin_pb2.PublishSnapshotResponse(
            version=result.version, published=result.published,
            counts=convert.counts_to_proto(scope.counts(result.manifest["counts"])),
            build_seconds=result.seconds,
        )

    def GetIndexStatus(
        self, request: admin_pb2.GetIndexStatusRequest, context: grpc.ServicerContext
    ) -> admin_pb2.GetIndexStatusResponse:
        snapshot = self._runtime.scanner.snapshot
        on_disk = self._runtime.current_in_repository() or ""
        response = admin_pb2.GetIndexStatusResponse(
            current_on_disk=on_disk, failed_loads=self._runtime.failed_loads
        )
        if snapshot is not None:
            revision = int(snapshot.manifest["store_revision"])
            response.MergeFrom(admin_pb2.GetIndexStatusResponse(
                version=snapshot.version, created_at=snapshot.created_at,
                loaded_at=snapshot.loaded_at, age_seconds=time.time() - snapshot.created_at,
                counts=convert.counts_to_proto(scope.counts(snapshot.manifest["counts"])),
                store_revision=revision, up_to_date=revision == self._store.revision(),
            ))
        return response

    def ReleaseEntry(
        self, request: admin_pb2.ReleaseEntryRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ReleaseEntryResponse:
        try:
            entry = self._store.get_entry(request.entry_id)
            if not scope.visible(entry.bank):  # the very answer a missing entry gets
                raise NotFoundError(f"no entry with id {request.entry_id}")
            released = self._store.release_entry(entry.id, request.reason or None)
        except HashsvcError as err:
            abort(context, err)
        self._runtime.follow_flood_guard()  # lifted on this worker before the call returns
        self._audit("release_entry", entry_id=entry.id, bank=entry.bank,
                    reason=loggable(request.reason))
        return admin_pb2.ReleaseEntryResponse(entry_id=entry.id,
                                              released_at=released.released_at,
                                              store_revision=released.revision)

    # ---- replicas and the evaluation report -----------------------------------------------

    def ListReplicas(
        self, request: admin_pb2.ListReplicasRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListReplicasResponse:
        return list_replicas(self._runtime)

    def GetEvaluationReport(
        self, request: admin_pb2.GetEvaluationReportRequest, context: grpc.ServicerContext
    ) -> admin_pb2.GetEvaluationReportResponse:
        try:
            return read_report(self._runtime.config.resolved_evaluation_report)
        except HashsvcError as err:
            abort(context, err)

    def _audit(self, action: str, **fields: Any) -> None:
        log.info("admin", extra={"action": action, "caller": caller.get(), **fields})


def _first(requests: Iterator[Any]) -> tuple[Any, Iterator[Any]]:
    try:
        return next(requests), requests
    except StopIteration:
        raise HashsvcError("empty stream: send at least one message") from None


def _bank_of(first: Any) -> str:
    if not first.bank:
        raise HashsvcError("the first message must name the bank")
    bank: str = first.bank
    return scope.require(check_name(bank))


def _same_bank(bank: str, requests: Iterator[Any]) -> Iterator[Any]:
    """The stream's messages, refusing any that names another bank: the stream is one
    transaction on one bank, and a later name used to be ignored (its entries went to the
    first bank)."""
    for index, request in enumerate(requests):
        if request.bank and request.bank != bank:
            raise HashsvcError(
                f"message[{index}] names bank {quote(request.bank)}, but this stream is for "
                f"{quote(bank)}: send one stream per bank (later messages may leave it empty)")
        yield request


def _merged_selector(requests: Iterator[Any]) -> EntrySelector:
    ids: list[int] = []
    external_ids: list[str] = []
    hashes: list[tuple[str, bytes]] = []
    for index, request in enumerate(requests):
        part = convert.selector_from_proto(request.selector, f"message[{index}].selector")
        ids.extend(part.ids)
        external_ids.extend(part.external_ids)
        hashes.extend(part.hashes)
    return EntrySelector(ids=ids, external_ids=external_ids, hashes=hashes)


def _by_entry(records: list[PerEntry]) -> dict[int, list[PerEntry]]:
    grouped: dict[int, list[PerEntry]] = {}
    for record in records:
        grouped.setdefault(record.entry_id, []).append(record)
    return grouped
