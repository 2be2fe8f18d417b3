"""The HTTP/JSON API's routes: each is one gRPC method, declared once in `ROUTES`.

Why a table: the handlers (`api.py`) and the OpenAPI document are both made from it, so the
document cannot describe a route that does not exist, and the JSON of each route is the proto
message's canonical JSON mapping (protobuf `json_format`), so HTTP and gRPC cannot drift.

How a request becomes the gRPC request message (`Route.body`):
- `json`: the body (`Content-Type: application/json`, may be empty) is the message's JSON;
  unknown fields are refused. For a client-streaming RPC (`streaming`) the body is a JSON array
  of request messages, the stream's items in order (one object is a one-item stream), sent as
  one stream, so the call is one transaction as over gRPC.
- `image`: the body is the image's bytes (`image/*` or `application/octet-stream`), or a
  `multipart/form-data` form with the file in the field `image`; it becomes the message's
  `image` field. The message's other fields come from query parameters, or form fields.
- `query`: no body; the message's fields come from query parameters.
Query parameters and form fields name fields by their JSON or proto name, a nested field with
dots (`options.banks=a`), a repeated one by repeating it (`banks=a&banks=b`). Path parameters set
the field of the same name (`path_fields` renames), on the first message of a stream.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from google.protobuf.message import Message
from hashsvc_client.v1 import admin_pb2, replica_pb2, scan_pb2

Body = Literal["json", "image", "query"]
IMAGE_FIELD = "image"  # the multipart form field, and the message field, of an image route
_PATH_PARAM = re.compile(r"{([a-zA-Z_][a-zA-Z0-9_]*)}")


@dataclass(frozen=True)
class Route:
    http_method: str
    path: str  # Starlette syntax: /v1/banks/{name}
    service: Literal["scan", "admin", "replica"]
    rpc: str  # the gRPC method's name
    request: type[Message]  # for a client-streaming RPC: the type of each of the stream's items
    response: type[Message]
    body: Body = "json"
    streaming: bool = False  # a client-streaming RPC: the JSON body is an array of its items
    summary: str = ""
    # path parameter -> the request field it sets, where the names differ
    path_fields: tuple[tuple[str, str], ...] = ()
    # With no `updateMask` in the body, the mask is the fields given in this message field
    # (UpdateBank: the keys of `bank`), so a PATCH changes exactly what it names.
    mask_from: str = ""

    @property
    def operation_id(self) -> str:
        return self.rpc[0].lower() + self.rpc[1:]

    @property
    def path_params(self) -> tuple[str, ...]:
        return tuple(_PATH_PARAM.findall(self.path))

    def field_of(self, param: str) -> str:
        """The request field a path parameter sets."""
        return dict(self.path_fields).get(param, param)


ROUTES: tuple[Route, ...] = (
    Route("POST", "/v1/scan/image", "scan", "ScanImage", scan_pb2.ScanImageRequest,
          scan_pb2.ScanImageResponse, body="image",
          summary="Hash an uploaded image and match it; the image is never stored."),
    Route("POST", "/v1/scan/hashes", "scan", "ScanHashes", scan_pb2.ScanHashesRequest,
          scan_pb2.ScanHashesResponse,
          summary="Match hashes the caller computed itself."),
    Route("POST", "/v1/hash/image", "scan", "HashImage", scan_pb2.HashImageRequest,
          scan_pb2.HashImageResponse, body="image",
          summary="Hash an uploaded image, without matching."),
    Route("GET", "/v1/banks", "admin", "ListBanks", admin_pb2.ListBanksRequest,
          admin_pb2.ListBanksResponse, body="query", summary="Every bank, with its settings."),
    Route("POST", "/v1/banks", "admin", "CreateBank", admin_pb2.CreateBankRequest,
          admin_pb2.CreateBankResponse, summary="Create a bank."),
    Route("PATCH", "/v1/banks/{name}", "admin", "UpdateBank", admin_pb2.UpdateBankRequest,
          admin_pb2.UpdateBankResponse, mask_from="bank",
          summary="Change a bank's settings: those named in updateMask, else those given."),
    Route("DELETE", "/v1/banks/{name}", "admin", "DeleteBank", admin_pb2.DeleteBankRequest,
          admin_pb2.DeleteBankResponse, body="query",
          summary="Delete a bank and every entry in it."),
    Route("POST", "/v1/banks/{bank}/entries", "admin", "AddEntries",
          admin_pb2.AddEntriesRequest, admin_pb2.AddEntriesResponse, streaming=True,
          summary="Add entries to a bank, all or none."),
    Route("POST", "/v1/entries:setDisabled", "admin", "SetEntriesDisabled",
          admin_pb2.SetEntriesDisabledRequest, admin_pb2.SetEntriesDisabledResponse,
          streaming=True, summary="Disable or re-enable selected entries of a bank."),
    Route("POST", "/v1/entries:remove", "admin", "RemoveEntries",
          admin_pb2.RemoveEntriesRequest, admin_pb2.RemoveEntriesResponse, streaming=True,
          summary="Remove selected entries of a bank."),
    Route("GET", "/v1/entries", "admin", "ListEntries", admin_pb2.ListEntriesRequest,
          admin_pb2.ListEntriesResponse, body="query",
          summary="Find entries, one page at a time (pass nextPageToken back as pageToken)."),
    Route("GET", "/v1/entries/{entry_id}", "admin", "GetEntry", admin_pb2.GetEntryRequest,
          admin_pb2.GetEntryResponse, body="query", path_fields=(("entry_id", "id"),),
          summary="One entry, with its provenance and feedback."),
    Route("POST", "/v1/entries/{entry_id}/feedback", "admin", "ReportMatchFeedback",
          admin_pb2.ReportMatchFeedbackRequest, admin_pb2.ReportMatchFeedbackResponse,
          summary="An analyst's verdict on a match of this entry."),
    Route("POST", "/v1/entries/{entry_id}:release", "admin", "ReleaseEntry",
          admin_pb2.ReleaseEntryRequest, admin_pb2.ReleaseEntryResponse,
          summary="Release an entry the flood guard quarantined."),
    Route("POST", "/v1/snapshots:publish", "admin", "PublishSnapshot",
          admin_pb2.PublishSnapshotRequest, admin_pb2.PublishSnapshotResponse,
          summary="Build a snapshot from the store and serve it."),
    Route("GET", "/v1/index/status", "admin", "GetIndexStatus", admin_pb2.GetIndexStatusRequest,
          admin_pb2.GetIndexStatusResponse, body="query",
          summary="The snapshot this server serves, and whether the store has changed since."),
    # exchange syncs and recent matches
    Route("GET", "/v1/exchanges", "admin", "ListExchangeBindings",
          admin_pb2.ListExchangeBindingsRequest, admin_pb2.ListExchangeBindingsResponse,
          body="query", summary="Every exchange-bound bank: schedule, last syncs, outbox."),
    Route("POST", "/v1/exchanges/{bank}/sync", "admin", "SyncExchange",
          admin_pb2.SyncExchangeRequest, admin_pb2.SyncExchangeResponse,
          summary="Sync a bank from its exchange now; waits for the outcome a bounded time."),
    Route("GET", "/v1/matches/recent", "admin", "ListRecentMatches",
          admin_pb2.ListRecentMatchesRequest, admin_pb2.ListRecentMatchesResponse,
          body="query", summary="The latest matches in this server's audit trail."),
    # replicas and the evaluation report
    Route("GET", "/v1/serving-status", "replica", "GetServingStatus",
          replica_pb2.GetServingStatusRequest, replica_pb2.ServingStatus, body="query",
          summary="The snapshot this server serves (public: no key)."),
    Route("GET", "/v1/replicas", "admin", "ListReplicas", admin_pb2.ListReplicasRequest,
          admin_pb2.ListReplicasResponse, body="query",
          summary="What this server and each of its --replicas serve; unreachable ones listed."),
    Route("GET", "/v1/evaluation-report", "admin", "GetEvaluationReport",
          admin_pb2.GetEvaluationReportRequest, admin_pb2.GetEvaluationReportResponse,
          body="query", summary="The latest `indexer evaluate --to-home` report, with its plots."),
)
