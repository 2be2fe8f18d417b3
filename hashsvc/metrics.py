"""Every Prometheus metric hashsvc exports, declared in one place.

Multi-process checklist (prometheus_client's multiprocess mode, used with `serve --workers N`):
- the supervisor sets PROMETHEUS_MULTIPROC_DIR to an empty directory *before* workers start, and
  workers import this module only after that (they are spawned, not forked);
- only the supervisor serves /metrics, through a MultiProcessCollector over that directory;
- every Gauge declares how workers' values combine (`multiprocess_mode`), `live*` modes forget a
  dead worker once the supervisor calls `mark_process_dead(pid)`;
- no callbacks (`set_function`) and no `Info`/`Enum`: they do not work across processes; values
  that change with time (snapshot age) are updated by each worker's watcher thread instead.

Labels stay low-cardinality: method, status code, stage, reason, algorithm, and bank names (an
operator-defined handful). Never a hash, an id, a key or anything a caller supplies.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# `protocol`: "grpc", or "http" for the calls the HTTP/JSON API makes on its clients' behalf.
REQUESTS = Counter(
    "hashsvc_requests_total",
    "Scan and admin calls handled, by gRPC method, status code and protocol (grpc, http)",
    ["method", "code", "protocol"],
)
REQUEST_SECONDS = Histogram(
    "hashsvc_request_duration_seconds",
    "Whole-call latency, by gRPC method and protocol (grpc, http: the gRPC call the HTTP request "
    "became, not the HTTP request's own)", ["method", "protocol"], buckets=_LATENCY,
)
STAGE_SECONDS = Histogram(
    "hashsvc_stage_duration_seconds", "Time in each scan stage: decode, hash, search", ["stage"],
    buckets=_LATENCY,
)
IMAGE_BYTES = Histogram(
    "hashsvc_image_bytes", "Size of scanned images",
    buckets=(1e4, 3e4, 1e5, 3e5, 1e6, 3e6, 1e7, 3e7, 1e8),
)
IMAGE_PIXELS = Histogram(
    "hashsvc_image_pixels", "Pixels of decoded images",
    buckets=(1e4, 1e5, 3e5, 1e6, 2e6, 4e6, 8e6, 1.6e7, 3.2e7, 6.4e7),
)
PDQ_QUALITY = Histogram(
    "hashsvc_pdq_quality", "PDQ quality of scanned images (below 50 is not matched)",
    buckets=(10, 20, 30, 40, 50, 60, 70, 80, 90, 100),
)
MATCHES = Counter(
    "hashsvc_matches_total", "Matches reported (quarantined ones not counted), by bank and "
    "algorithm", ["bank", "algorithm"]
)
# The flood guard (server/flood_guard.py): per serving process, on its own evidence.
FLOOD_QUARANTINED_ENTRIES = Gauge(
    "hashsvc_flood_quarantined_entries",
    "Entries the flood guard holds quarantined (matched far beyond their own rate), by bank; "
    "per worker, the most any one holds",
    ["bank"], multiprocess_mode="livemax",
)
FLOOD_QUARANTINED_MATCHES = Counter(
    "hashsvc_flood_quarantined_matches_total",
    "Matches reported QUARANTINED (not making a scan matched), by bank", ["bank"],
)
HTTP_REFUSED = Counter(
    "hashsvc_http_refused_total",
    "HTTP requests the HTTP/JSON API refused itself, before any gRPC call (those are counted in "
    "hashsvc_requests_total): bad_request (400: not JSON, unknown field, wrong type), not_found "
    "(404: no such path), method (405), timeout (408: the body stopped arriving), too_large "
    "(413), media_type (415: wrong Content-Type), busy (429: too many HTTP requests in "
    "progress), disconnected (the client went away while sending its body, or a console form)",
    ["reason"],
)
for _reason in ("bad_request", "not_found", "method", "timeout", "too_large", "media_type",
                "busy", "disconnected"):
    HTTP_REFUSED.labels(_reason)  # exported as 0 from the start
IN_FLIGHT = Gauge(
    "hashsvc_requests_in_flight", "Scan and admin calls in progress", multiprocess_mode="livesum"
)
REJECTED = Counter(
    "hashsvc_rejected_requests_total",
    "Calls refused: auth (missing/unknown key, wrong role), limits (image too large/small), "
    "invalid (corrupt image, malformed hash), overload (max_concurrent_rpcs reached, decode "
    "memory budget full), streams (max_streams_per_key or max_streams_per_connection reached)",
    ["reason"],
)

INDEX_ENTRIES = Gauge(
    "hashsvc_index_entries", "Entries in the snapshot being served, by algorithm and bank",
    ["algorithm", "bank"], multiprocess_mode="livemax",
)
SNAPSHOT_LOADED = Gauge(
    "hashsvc_snapshot_loaded", "1 while a snapshot is being served (per worker; min across them)",
    multiprocess_mode="livemin",
)
SNAPSHOT_CREATED = Gauge(
    "hashsvc_snapshot_created_timestamp_seconds", "When the oldest snapshot served was built",
    multiprocess_mode="livemin",
)
SNAPSHOT_LOADED_AT = Gauge(
    "hashsvc_snapshot_loaded_timestamp_seconds", "When the snapshot served was loaded",
    multiprocess_mode="livemin",
)
SNAPSHOT_AGE = Gauge(
    "hashsvc_snapshot_age_seconds", "Age of the oldest snapshot being served",
    multiprocess_mode="livemax",
)
SNAPSHOT_REVISION = Gauge(
    "hashsvc_snapshot_store_revision", "Store revision the served snapshot holds",
    multiprocess_mode="livemin",
)
SNAPSHOT_LOAD_SECONDS = Histogram(
    "hashsvc_snapshot_load_duration_seconds", "Time to load and verify a snapshot",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
SNAPSHOT_LOAD_FAILURES = Counter(
    "hashsvc_snapshot_load_failures_total", "Snapshots refused (corrupt or unreadable)"
)
SNAPSHOT_FETCH_FAILURES = Counter(
    "hashsvc_snapshot_fetch_failures_total",
    "Failures to fetch a snapshot from its repository: unavailable (the bucket could not be "
    "reached; retried at the next poll), missing, partial or corrupt (an object; the version is "
    "refused), invalid (its manifest or the pointer)",
    ["reason"],
)
for _reason in ("unavailable", "missing", "partial", "corrupt", "invalid"):
    SNAPSHOT_FETCH_FAILURES.labels(_reason)  # exported as 0 from the start, so alerts see it
SNAPSHOT_POINTER_AGE = Gauge(
    "hashsvc_snapshot_pointer_age_seconds",
    "Seconds since the snapshot repository's pointer was last read successfully (grows while a "
    "bucket is unreachable)",
    multiprocess_mode="livemax",
)
SNAPSHOT_FETCHED_OBJECTS = Counter(
    "hashsvc_snapshot_fetched_objects_total",
    "Snapshot files downloaded from a bucket into the local cache (files already cached are not)",
)
SNAPSHOT_FETCHED_BYTES = Counter(
    "hashsvc_snapshot_fetched_bytes_total", "Bytes of snapshot files downloaded from a bucket"
)
KEYS_FILE_VALID = Gauge(
    "hashsvc_keys_file_valid",
    "0 while the keys file on disk does not load (the last good keys stay in effect), else 1",
    multiprocess_mode="livemin",
)
KEYS_RELOAD_FAILURES = Counter(
    "hashsvc_keys_reload_failures_total", "Changes to the keys file that did not load"
)
STORE_RETRIES = Counter(
    "hashsvc_store_retries_total",
    "PostgreSQL store calls re-run after their connection failed (a restart, failover or "
    "dropped connection), by kind: read or write",
    ["kind"],
)
STORE_RETRIES_EXHAUSTED = Counter(
    "hashsvc_store_retries_exhausted_total",
    "PostgreSQL store calls that failed (UNAVAILABLE) after every retry, by kind: read or write",
    ["kind"],
)
for _kind in ("read", "write"):
    STORE_RETRIES.labels(_kind)  # exported as 0 from the start, so alerts see them
    STORE_RETRIES_EXHAUSTED.labels(_kind)
STORE_WRITES_ALREADY_APPLIED = Counter(
    "hashsvc_store_writes_already_applied_total",
    "Write retries that found their first try committed (its acknowledgement was lost with the "
    "connection): answered with the recorded result, not applied twice",
)
WORKER_RESTARTS = Counter(
    "hashsvc_worker_restarts_total", "Worker processes restarted by the supervisor after a crash"
)

# Exchange-backed banks. The sync runs wherever `indexer exchange sync` does, so it writes how
# it went into the store (SyncHealth) and every server exports that, read on each watcher pass:
# these are gauges of stored values, counts included (they are totals since the bank was bound).
EXCHANGE_LAST_SUCCESS = Gauge(
    "hashsvc_exchange_last_success_timestamp_seconds",
    "When the bank's last exchange sync succeeded (the bind time until one has), by bank and "
    "exchange type",
    ["bank", "exchange"], multiprocess_mode="livemax",
)
EXCHANGE_ALERT_AFTER = Gauge(
    "hashsvc_exchange_sync_alert_after_seconds",
    "How long the bank may go without a successful sync before HashsvcExchangeSyncStale fires "
    "(`indexer exchange bind --alert-after`)",
    ["bank", "exchange"], multiprocess_mode="livemax",
)
EXCHANGE_FAILING = Gauge(
    "hashsvc_exchange_sync_failing", "1 while the bank's latest exchange sync failed, else 0",
    ["bank", "exchange"], multiprocess_mode="livemax",
)
EXCHANGE_SYNC_ERRORS = Gauge(
    "hashsvc_exchange_sync_errors", "Failed exchange syncs of the bank since it was bound",
    ["bank", "exchange"], multiprocess_mode="livemax",
)
EXCHANGE_ENTRIES = Gauge(
    "hashsvc_exchange_entries",
    "Upstream entries since the bank was bound: fetched (read from the exchange), and the "
    "changes applied: added, updated, deleted",
    ["bank", "exchange", "change"], multiprocess_mode="livemax",
)

# Analysts' verdicts (ReportMatchFeedback). Counted by the server that took the call; verdicts
# given with `indexer entries feedback` are in the store and the audit log, not here.
MATCH_FEEDBACK = Counter(
    "hashsvc_match_feedback_total",
    "Analysts' verdicts on matches through ReportMatchFeedback, by bank and verdict "
    "(confirmed, false_positive)",
    ["bank", "verdict"],
)
