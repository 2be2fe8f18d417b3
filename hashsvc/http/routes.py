"""The HTTP/JSON API's routes: each is one gRPC method, declared once in `ROUTES`.

Why a table: the handlers (`api.py`) and the OpenAPI document are both made from it, so the
document cannot describe a route that does not exist, and the JSON of each route is the proto
message's canonical JSON mapping (protobuf `json_format`), so HTTP and gRPC cannot drift.

How a request becomes the gRPC request message:
- `json`: the body is the message's JSON (unknown fields are refused); path parameters are set
  on the message's fields of the same name.
- `image`: the body is the image's bytes (any Content-Type but JSON/form), or a multipart form
  with the file in the field `image`; set as `image` on the message. Query parameters set the
  message's other scalar fields (e.g. `request_id`).
- `query`: no body; query and path parameters set the message's fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from google.protobuf.message import Message
from hashsvc_client.v1 import admin_pb2, replica_pb2, scan_pb2

Body = Literal["json", "image", "query"]


@dataclass(frozen=True)
class Route:
    http_method: str
    path: str  # Starlette syntax: /v1/banks/{name}
    service: Literal["scan", "admin", "replica"]
    rpc: str  # the gRPC method's name
    request: type[Message]
    response: type[Message]
    body: Body = "json"
    streaming: bool = False  # a client-streaming RPC: the JSON carries the stream's items
    summary: str = ""

    @property
    def operation_id(self) -> str:
        return self.rpc[0].lower() + self.rpc[1:]


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
    # ---- h17-ops-a: exchange syncs and recent matches ----
    Route("GET", "/v1/exchanges", "admin", "ListExchangeBindings",
          admin_pb2.ListExchangeBindingsRequest, admin_pb2.ListExchangeBindingsResponse,
          body="query", summary="Every exchange-bound bank: schedule, last syncs, outbox."),
    Route("POST", "/v1/exchanges/{bank}/sync", "admin", "SyncExchange",
          admin_pb2.SyncExchangeRequest, admin_pb2.SyncExchangeResponse,
          summary="Sync a bank from its exchange now; waits for the outcome a bounded time."),
    Route("GET", "/v1/matches/recent", "admin", "ListRecentMatches",
          admin_pb2.ListRecentMatchesRequest, admin_pb2.ListRecentMatchesResponse,
          body="query", summary="The latest matches in this server's audit trail."),
    # h17-ops-b: replicas and the evaluation report
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
