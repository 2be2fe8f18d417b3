"""The synchronous client. Owns its channel; use it as a context manager (or call `close`).

Every call has a deadline (`timeout`, default 10 s for scans), retries on UNAVAILABLE with
backoff (scans and read-only admin calls), sends the API key as `authorization: Bearer`, and
raises only `hashsvc_client.errors` exceptions. Results are the contract's own typed messages.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf import field_mask_pb2, struct_pb2

from hashsvc_client import _channel
from hashsvc_client._channel import HashLike, Target, Tls
from hashsvc_client.errors import map_rpc_error
from hashsvc_client.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    replica_pb2,
    replica_pb2_grpc,
    scan_pb2,
    scan_pb2_grpc,
    types_pb2,
)

T = TypeVar("T")
ScanItem = tuple[str, bytes | Sequence[HashLike]]


class Client:
    def __init__(
        self,
        target: Target | None = None,
        *,
        api_key: str | None = None,
        tls: Tls | None = None,
        timeout: float = 10.0,
        admin_timeout: float = 300.0,
        max_message_bytes: int = 64 << 20,
    ) -> None:
        """`target` defaults to $HASHSVC_SERVER or localhost:50051, `api_key` to
        $HASHSVC_API_KEY; `tls` switches to an encrypted channel. Several servers: a list or a
        comma-separated string of IP addresses, or a `dns:///name:port` target; each call goes
        to the next ready one (round_robin), and a server that goes away is skipped."""
        self.target, key = _channel.resolve(target, api_key)
        options = _channel.channel_options(max_message_bytes)
        self._channel = (grpc.secure_channel(self.target, tls.credentials(), options)
                         if tls else grpc.insecure_channel(self.target, options))
        self._metadata = _channel.metadata(key)
        self.timeout = timeout
        self.admin_timeout = admin_timeout
        self._scan = scan_pb2_grpc.ScanServiceStub(self._channel)
        self._admin = admin_pb2_grpc.AdminServiceStub(self._channel)
        self._replica = replica_pb2_grpc.ReplicaServiceStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: Callable[..., T], request: Any, timeout: float | None) -> T:
        try:
            return method(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise map_rpc_error(error) from None

    # ---- scanning ----------------------------------------------------------------------------

    def scan_image(
        self, image: bytes, *, request_id: str = "", banks: Sequence[str] = (),
        algorithms: Sequence[str] = (), dihedral: bool = True, timeout: float | None = None,
    ) -> types_pb2.ScanResult:
        request = _channel.scan_image_request(image, request_id, banks, algorithms, dihedral)
        return self._call(self._scan.ScanImage, request, timeout).result

    def scan_hashes(
        self, hashes: Iterable[HashLike], *, request_id: str = "", banks: Sequence[str] = (),
        dihedral: bool = True, timeout: float | None = None,
    ) -> types_pb2.ScanResult:
        """Match hashes computed by the caller (see `hashsvc_client.hashing`, whose PDQ hashes
        include the rotated and flipped variants, so rotated copies match as with scan_image).
        `dihedral=False` has the server skip the hashes marked as such variants."""
        request = _channel.scan_hashes_request(hashes, request_id, banks, dihedral)
        return self._call(self._scan.ScanHashes, request, timeout).result

    def scan_images(
        self, items: Iterable[ScanItem], *, banks: Sequence[str] = (), dihedral: bool = True,
        timeout: float | None = None,
    ) -> Iterator[scan_pb2.ScanImagesResponse]:
        """Stream (id, image bytes or hashes) items; yields one response per item, in order.
        `items` is consumed lazily, as the server's flow control allows."""
        options = _channel.scan_options(banks, dihedral=dihedral)

        def requests() -> Iterator[scan_pb2.ScanImagesRequest]:
            for index, (item_id, payload) in enumerate(items):
                request = scan_pb2.ScanImagesRequest(id=item_id)
                if index == 0:
                    request.options.CopyFrom(options)
                if isinstance(payload, bytes):
                    request.image = payload
                else:
                    request.hashes.hashes.extend(_channel.to_hashes(payload))
                yield request

        try:
            yield from self._scan.ScanImages(requests(), timeout=timeout,
                                             metadata=self._metadata)
        except grpc.RpcError as error:
            raise map_rpc_error(error) from None

    def hash_image(
        self, image: bytes, *, algorithms: Sequence[str] = (), timeout: float | None = None
    ) -> list[types_pb2.ComputedHash]:
        request = scan_pb2.HashImageRequest(
            image=image, algorithms=[_channel.ALGORITHMS[a] for a in algorithms]
        )
        return list(self._call(self._scan.HashImage, request, timeout).hashes)

    # ---- administration (role: admin) -------------------------------------------------------

    def create_bank(
        self, name: str, *, description: str = "", kind: str = "match",
        tags: Sequence[str] = (), thresholds: dict[str, int] | None = None,
        strategies: types_pb2.MatchStrategies | None = None,
    ) -> types_pb2.Bank:
        """`strategies`: e.g. `types_pb2.MatchStrategies(trim_borders=True)`; default dihedral
        queries only (README: Detection quality)."""
        bank = types_pb2.Bank(name=name, description=description, kind=_bank_kind(kind),
                              tags=tags, thresholds=thresholds or {}, strategies=strategies)
        return self._call(self._admin.CreateBank, admin_pb2.CreateBankRequest(bank=bank),
                          self.admin_timeout).bank

    def list_banks(self, *, entry_counts: bool = False) -> list[types_pb2.Bank]:
        """Every bank; with `entry_counts`, each with its entries counted by algorithm,
        enabled and disabled (`Bank.entry_counts`)."""
        request = admin_pb2.ListBanksRequest(entry_counts=entry_counts)
        return list(self._call(self._admin.ListBanks, request, self.admin_timeout).banks)

    def update_bank(self, name: str, **changes: Any) -> types_pb2.Bank:
        """Change only the given fields: new_name, description, kind, enabled, tags, thresholds,
        strategies (a `types_pb2.MatchStrategies`, replaced whole)."""
        bank = types_pb2.Bank()
        paths: list[str] = []
        for field, value in changes.items():
            if field == "new_name":
                bank.name, field = value, "name"
            elif field == "kind":
                bank.kind = _bank_kind(value)
            elif field == "tags":
                bank.tags.extend(value)
            elif field == "thresholds":
                bank.thresholds.update(value)
            elif field == "strategies":
                bank.strategies.CopyFrom(value)
            else:
                setattr(bank, field, value)
            paths.append(field)
        request = admin_pb2.UpdateBankRequest(
            name=name, bank=bank, update_mask=field_mask_pb2.FieldMask(paths=paths)
        )
        return self._call(self._admin.UpdateBank, request, self.admin_timeout).bank

    def delete_bank(self, name: str) -> int:
        return self._call(self._admin.DeleteBank, admin_pb2.DeleteBankRequest(name=name),
                          self.admin_timeout).entries_removed

    def add_entries(
        self, bank: str, entries: Iterable[tuple[HashLike, str | None, dict[str, Any] | None]],
        *, chunk: int = 1000,
    ) -> admin_pb2.AddEntriesResponse:
        """Stream (hash, external id, metadata) entries into `bank` as one transaction."""

        def requests() -> Iterator[admin_pb2.AddEntriesRequest]:
            batch: list[admin_pb2.NewEntry] = []
            first = True
            for hash_like, external_id, metadata in entries:
                entry = admin_pb2.NewEntry(hash=_channel.to_hashes([hash_like])[0],
                                           external_id=external_id or "")
                if metadata:
                    entry.metadata.CopyFrom(_struct(metadata))
                batch.append(entry)
                if len(batch) >= chunk:
                    yield admin_pb2.AddEntriesRequest(bank=bank if first else "", entries=batch)
                    batch, first = [], False
            if batch or first:
                yield admin_pb2.AddEntriesRequest(bank=bank if first else "", entries=batch)

        return self._call(self._admin.AddEntries, requests(), self.admin_timeout)

    def set_entries_disabled(
        self, bank: str, *, disabled: bool = True, reason: str = "", ids: Sequence[int] = (),
        external_ids: Sequence[str] = (), hashes: Sequence[HashLike] = (),
    ) -> int:
        request = admin_pb2.SetEntriesDisabledRequest(
            bank=bank, disabled=disabled, reason=reason,
            selector=_selector(ids, external_ids, hashes),
        )
        return self._call(self._admin.SetEntriesDisabled, iter([request]),
                          self.admin_timeout).changed

    def remove_entries(
        self, bank: str, *, ids: Sequence[int] = (), external_ids: Sequence[str] = (),
        hashes: Sequence[HashLike] = (),
    ) -> int:
        request = admin_pb2.RemoveEntriesRequest(
            bank=bank, selector=_selector(ids, external_ids, hashes)
        )
        return self._call(self._admin.RemoveEntries, iter([request]), self.admin_timeout).removed

    def list_entries(
        self, *, banks: Sequence[str] = (), external_id: str = "", hash: HashLike | None = None,
        disabled: bool | None = None, exchange: str = "", upstream_id: str = "",
        page_size: int = 0, page_token: str = "",
    ) -> admin_pb2.ListEntriesResponse:
        """One page of entries; pass `next_page_token` back for the next (or `iter_entries`)."""
        request = admin_pb2.ListEntriesRequest(
            banks=banks, external_id=external_id, disabled=disabled, exchange=exchange,
            upstream_id=upstream_id, page_size=page_size, page_token=page_token,
            hash=_channel.to_hashes([hash])[0] if hash else None)
        return self._call(self._admin.ListEntries, request, self.timeout)

    def iter_entries(self, **filters: Any) -> Iterator[admin_pb2.Entry]:
        """Every entry `list_entries(**filters)` selects, page after page."""
        token = ""
        while True:
            page = self.list_entries(page_token=token, **filters)
            yield from page.entries
            if not (token := page.next_page_token):
                return

    def get_entry(self, entry_id: int) -> admin_pb2.Entry:
        return self._call(self._admin.GetEntry, admin_pb2.GetEntryRequest(id=entry_id),
                          self.timeout).entry

    def report_match_feedback(
        self, verdict: str, *, entry_id: int = 0, bank: str = "", hash: HashLike | None = None,
        reason: str = "", case_id: str = "", scanned_hash: HashLike | None = None,
        upload_id: str = "",
    ) -> admin_pb2.ReportMatchFeedbackResponse:
        """An analyst's verdict, "confirmed" or "false_positive" (which needs a reason and
        disables the entry), on the entry of a match: by `entry_id` (a match's), or `bank` and
        `hash`. Never send the image: `scanned_hash` and `upload_id` are the most it takes."""
        request = admin_pb2.ReportMatchFeedbackRequest(
            entry_id=entry_id, bank=bank, reason=reason, case_id=case_id, upload_id=upload_id,
            verdict=admin_pb2.FeedbackVerdict.Value(f"FEEDBACK_VERDICT_{verdict.upper()}"),
            hash=_channel.to_hashes([hash])[0] if hash else None,
            scanned_hash=_channel.to_hashes([scanned_hash])[0] if scanned_hash else None)
        return self._call(self._admin.ReportMatchFeedback, request, self.admin_timeout)

    def publish(self, *, force: bool = False) -> admin_pb2.PublishSnapshotResponse:
        return self._call(self._admin.PublishSnapshot,
                          admin_pb2.PublishSnapshotRequest(force=force), self.admin_timeout)

    def release_entry(self, entry_id: int, *, reason: str = "") -> admin_pb2.ReleaseEntryResponse:
        """Release an entry the flood guard quarantined (its matches stand again)."""
        return self._call(self._admin.ReleaseEntry,
                          admin_pb2.ReleaseEntryRequest(entry_id=entry_id, reason=reason),
                          self.timeout)

    def index_status(self) -> admin_pb2.GetIndexStatusResponse:
        return self._call(self._admin.GetIndexStatus, admin_pb2.GetIndexStatusRequest(),
                          self.timeout)

    def list_exchange_bindings(self, bank: str = "") -> list[admin_pb2.ExchangeBindingStatus]:
        """Every exchange-bound bank (or `bank` only): schedule, last syncs, feedback outbox."""
        return list(self._call(self._admin.ListExchangeBindings,
                               admin_pb2.ListExchangeBindingsRequest(bank=bank),
                               self.timeout).bindings)

    def sync_exchange(self, bank: str, *, wait_seconds: float = 0.0
                      ) -> admin_pb2.SyncExchangeResponse:
        """Sync `bank` from its exchange now; waits for the outcome at most `wait_seconds`
        (0: the server's 10 s), after which `finished` is false and the sync goes on."""
        return self._call(self._admin.SyncExchange,
                          admin_pb2.SyncExchangeRequest(bank=bank, wait_seconds=wait_seconds),
                          self.admin_timeout)

    def list_recent_matches(self, *, limit: int = 0, bank: str = ""
                            ) -> admin_pb2.ListRecentMatchesResponse:
        """The latest matches in the answering server's audit trail, newest first."""
        return self._call(self._admin.ListRecentMatches,
                          admin_pb2.ListRecentMatchesRequest(limit=limit, bank=bank),
                          self.timeout)

    def list_replicas(self) -> admin_pb2.ListReplicasResponse:
        """What this server and each of its `--replicas` serve; unreachable ones are listed."""
        return self._call(self._admin.ListReplicas, admin_pb2.ListReplicasRequest(),
                          self.timeout)

    def evaluation_report(self) -> admin_pb2.GetEvaluationReportResponse:
        """The latest `indexer evaluate --to-home` report (NotFound if none was made)."""
        return self._call(self._admin.GetEvaluationReport,
                          admin_pb2.GetEvaluationReportRequest(), self.timeout)

    def serving_status(self) -> replica_pb2.ServingStatus:
        """The snapshot the server answering serves (public: no key needed)."""
        return self._call(self._replica.GetServingStatus, replica_pb2.GetServingStatusRequest(),
                          self.timeout)


def _bank_kind(kind: str) -> types_pb2.BankKind.ValueType:
    return types_pb2.BankKind.Value(f"BANK_KIND_{kind.upper()}")


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(value)
    return message


def _selector(
    ids: Sequence[int], external_ids: Sequence[str], hashes: Sequence[HashLike]
) -> admin_pb2.EntrySelector:
    return admin_pb2.EntrySelector(ids=ids, external_ids=external_ids,
                                   hashes=_channel.to_hashes(hashes))
