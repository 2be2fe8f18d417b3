"""Server configuration: command-line flags > `HASHSVC_*` environment > TOML file > defaults.

One table (`FIELDS`) declares every setting once, with its type, default and help, so the flag,
the environment variable and the TOML key can never disagree about a name.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from hashsvc.errors import HashsvcError
from hashsvc.hashing.imaging import DEFAULT_LIMITS, DecodeLimits
from hashsvc.home import DataHome
from hashsvc.store.base import is_postgres, redact

ENV_PREFIX = "HASHSVC_"

# What a process serves (README "Roles"): a scan replica, the admin service, or both at once.
ROLES = ("scan", "admin", "all")
DEFAULT_HTTP_LISTEN = "0.0.0.0:8080"


@dataclass(frozen=True)
class ServerConfig:
    home: Path
    store: str = ""  # a postgresql:// URL; empty: the SQLite file <home>/store.sqlite
    listen: str = "0.0.0.0:50051"
    keys_file: Path | None = None  # default: <home>/keys.toml
    insecure_no_auth: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # set: mutual TLS, clients must present a certificate
    max_image_bytes: int = DEFAULT_LIMITS.max_bytes
    max_image_pixels: int = DEFAULT_LIMITS.max_pixels
    max_image_full_decode_pixels: int = DEFAULT_LIMITS.max_full_decode_pixels
    decode_memory_budget: int = DEFAULT_LIMITS.decode_memory_budget  # bytes, per worker
    max_concurrent_rpcs: int = 64  # beyond this, calls fail fast with RESOURCE_EXHAUSTED
    max_streams_per_key: int = 32  # request streams one API key may hold open at once
    max_streams_per_connection: int = 16  # ... and one connection
    client_idle_timeout: float = 60.0  # seconds a call may wait on its client, then it ends
    stream_window: int = 8  # ScanImages items read ahead per stream
    stream_buffer_bytes: int = 8 << 20  # ... and bytes of their requests held at once
    workers: int = 0  # processes sharing the port; 0 = one per core
    metrics_listen: str = "0.0.0.0:9090"  # Prometheus /metrics; empty = off
    audit_log: Path | None = None  # default: <home>/audit.jsonl
    audit_all_scans: bool = False  # audit every scan, not only those that matched
    scan_fast_pdq: bool = True  # PDQ for scans via hashsvc.hashing.fastpdq (9-40x faster on JPEGs)
    reload_interval: float = 0.1  # seconds between checks for a new snapshot or store changes
    flood_window: int = 10_000  # scans the flood guard counts an entry's matches over; 0 = off
    snapshots: str = ""  # snapshot repository: a directory or s3://bucket/prefix; default below
    snapshot_cache: Path | None = None  # default: <home>/snapshot-cache
    s3_endpoint_url: str = ""  # default: $AWS_ENDPOINT_URL, else AWS S3
    snapshot_poll_interval: float = 5.0  # seconds between reads of a bucket's pointer (jittered)
    role: str = "all"  # scan: ScanService; admin: AdminService and publishing; all: both
    max_snapshot_age: float = 0.0  # seconds behind the repository before NOT_SERVING; 0 = off
    max_connection_age: float = 0.0  # seconds before a client connection is closed; 0 = never
    exchange_sync: bool = True  # admin role: sync exchange-bound banks when they are due
    exchange_sync_every: float = 0.0  # seconds, for banks bound without --every; 0 = those not
    http_listen: str = "auto"  # HTTP/JSON API and console; auto: 0.0.0.0:8080 unless role scan
    replicas: str = ""  # scan replicas ListReplicas asks: host:port,... or dns:///name:port
    replica_timeout: float = 2.0  # seconds ListReplicas waits for each replica
    replica_tls_ca: Path | None = None  # PEM CA to verify replicas by; set: ask them over TLS
    evaluation_report: Path | None = None  # default: <home>/evaluation
    console_session_ttl: float = 3600.0  # seconds a web console sign-in lasts
    console_secret_file: Path | None = None  # default: <home>/console-secret (0600)
    log_level: str = "INFO"

    @property
    def data_home(self) -> DataHome:
        return DataHome(self.home)

    @property
    def store_target(self) -> str:
        """What `hashsvc.store.open_store` opens (may hold a password: never log it)."""
        return self.store or str(self.data_home.store_path)

    @property
    def resolved_http_listen(self) -> str:
        """Where the HTTP/JSON API (and, with the admin role, the console) listens; "" = off.

        Off by default on a scan replica: platforms there speak gRPC, and an extra open port is
        one more thing to secure. On by default wherever AdminService runs, for the console."""
        if self.http_listen == "auto":
            return "" if self.role == "scan" else DEFAULT_HTTP_LISTEN
        return "" if self.http_listen in ("", "off") else self.http_listen

    @property
    def resolved_keys_file(self) -> Path:
        return self.keys_file or self.home / "keys.toml"

    @property
    def resolved_console_secret_file(self) -> Path:
        return self.console_secret_file or self.home / "console-secret"

    @property
    def resolved_audit_log(self) -> Path:
        return self.audit_log or self.home / "audit.jsonl"

    @property
    def resolved_snapshots(self) -> str:
        return self.snapshots or str(self.data_home.snapshots_dir)

    @property
    def resolved_snapshot_cache(self) -> Path:
        return self.snapshot_cache or self.home / "snapshot-cache"

    @property
    def resolved_evaluation_report(self) -> Path:
        return self.evaluation_report or self.data_home.evaluation_dir

    @property
    def resolved_workers(self) -> int:
        return self.workers if self.workers > 0 else (os.cpu_count() or 1)

    @property
    def limits(self) -> DecodeLimits:
        return DecodeLimits(max_bytes=self.max_image_bytes, max_pixels=self.max_image_pixels,
                            max_full_decode_pixels=self.max_image_full_decode_pixels,
                            decode_memory_budget=self.decode_memory_budget)

    def describe(self) -> dict[str, Any]:
        """For the start-up log line; holds no secret (key files hold only key hashes, and a
        URL's password is redacted)."""
        described = {f.name: str(v) if isinstance(v, Path) else redact(v) if isinstance(v, str)
                     else v for f in fields(self) if (v := getattr(self, f.name)) is not None}
        described["store"] = redact(self.store_target)
        return described


HELP: dict[str, str] = {
    "home": "data directory (store.sqlite, snapshots/); default $HASHSVC_HOME or "
    "~/.local/share/hashsvc",
    "store": "where banks and entries live: a postgresql://user@host/db URL (shared by several "
    "nodes; the password may come from PGPASSWORD or ~/.pgpass), or empty for the SQLite file "
    "<home>/store.sqlite",
    "listen": "address to serve gRPC on (default 0.0.0.0:50051; port 0 picks a free port)",
    "keys_file": "API keys (TOML, key hashes only); default <home>/keys.toml",
    "insecure_no_auth": "accept calls without an API key (local trials only; logs a warning)",
    "tls_cert": "PEM certificate chain: serve TLS",
    "tls_key": "PEM private key for --tls-cert",
    "tls_client_ca": "PEM CA bundle: require client certificates signed by it (mutual TLS)",
    "max_image_bytes": "largest accepted image, in bytes",
    "max_image_pixels": "largest accepted image, in pixels (decompression-bomb guard)",
    "max_image_full_decode_pixels": "largest accepted image, in pixels, where it is decoded at "
    "full size (every format; only the scan fast path decodes JPEGs at reduced scale)",
    "decode_memory_budget": "bytes of estimated decoding memory a worker admits at once; a call "
    "that would exceed it gets RESOURCE_EXHAUSTED, an image needing more than all of it "
    "INVALID_ARGUMENT",
    "max_concurrent_rpcs": "calls in progress before new ones get RESOURCE_EXHAUSTED",
    "max_streams_per_key": "request streams (ScanImages, admin uploads) one API key may have "
    "open at once; more get RESOURCE_EXHAUSTED",
    "max_streams_per_connection": "request streams one connection may have open at once",
    "client_idle_timeout": "seconds a call may wait on its client (an upload not finished, no "
    "ScanImages request while nothing is pending, an answer not taken) before it is ended",
    "stream_window": "ScanImages items in flight per stream (flow control)",
    "stream_buffer_bytes": "bytes of ScanImages requests held per stream (a single larger "
    "item is still taken, alone)",
    "workers": "server processes sharing the port (SO_REUSEPORT); 0 = one per core",
    "metrics_listen": "host:port for Prometheus /metrics (empty: off; port 0: any)",
    "audit_log": "JSON-lines audit trail of matches; default <home>/audit.jsonl",
    "audit_all_scans": "audit every scan, not only those that matched",
    "scan_fast_pdq": "hash scans with the fast PDQ path (small JPEG decode; within 10 bits of "
    "the reference for 99.9%% of quality>=80 images, same recall in `indexer evaluate`); "
    "--no-scan-fast-pdq hashes scans with the reference pipeline",
    "reload_interval": "seconds between checks for a new snapshot or store changes",
    "flood_window": "scans (of this process) over which the flood guard counts each entry's "
    "matches, against its bank's thresholds (`indexer bank update --flood-min-matches`, "
    "`--flood-factor`); 0 turns the guard off",
    "snapshots": "snapshot repository: a directory, or s3://bucket/prefix for an S3-compatible "
    "bucket (credentials from the standard AWS environment and config files); default "
    "<home>/snapshots",
    "snapshot_cache": "where snapshots fetched from a bucket are kept and memory-mapped from; "
    "default <home>/snapshot-cache",
    "s3_endpoint_url": "endpoint of the S3-compatible service (MinIO, Ceph RGW, GCS...); "
    "default $AWS_ENDPOINT_URL, else AWS S3",
    "snapshot_poll_interval": "seconds between reads of a bucket's pointer for a new snapshot, "
    "each wait drawn from 0.5-1.5 times this so replicas do not poll in step (a local "
    "directory is read every --reload-interval)",
    "role": "what this process serves: scan (ScanService; publishes nothing, creates no key), "
    "admin (AdminService and publishing) or all (both: the embedded default)",
    "max_snapshot_age": "seconds the served snapshot may stay behind the repository's current "
    "one (still loading, or refused) before health turns NOT_SERVING; 0 = no limit",
    "max_connection_age": "seconds after which the server asks a client to reconnect (so that "
    "clients balancing over DNS, e.g. a Kubernetes headless Service, find new replicas); "
    "0 = never",
    "exchange_sync": "in the admin role, sync each exchange-bound bank when it is due (its "
    "`indexer exchange bind --every`, else --exchange-sync-every), one server at a time; "
    "--no-exchange-sync leaves syncing to `indexer exchange sync` (cron)",
    "exchange_sync_every": "seconds between scheduled syncs of a bank bound without --every; "
    "0 = only banks bound with --every are synced on a schedule",
    "http_listen": "host:port for the HTTP/JSON API (/v1) and, in the admin role, the web "
    "console (/console); auto: 0.0.0.0:8080 unless --role scan; off: none; port 0: any",
    "replicas": "the scan replicas the admin service reports on (AdminService.ListReplicas, the "
    "console's Snapshot page): a comma-separated list of host:port, or dns:///name:port for every "
    "address a DNS name has (a Kubernetes headless Service lists one per pod); empty: this "
    "server only",
    "replica_timeout": "seconds ListReplicas waits for each replica before listing it as "
    "unreachable",
    "replica_tls_ca": "PEM CA bundle to verify replicas' certificates by; replicas are asked "
    "over TLS when this is set or this server serves TLS (--tls-cert; then with the system's "
    "roots unless this is set)",
    "evaluation_report": "where `indexer evaluate --to-home` writes its report for "
    "GetEvaluationReport and the console's Evaluation page; default <home>/evaluation",
    "console_session_ttl": "seconds a web console sign-in lasts before the analyst must sign in "
    "again (the session ends earlier on sign-out, on every server sharing the store)",
    "console_secret_file": "the web console's 32-byte secret, which encrypts session cookies "
    "and signs CSRF tokens; created 0600 by the admin role at first start; give every admin "
    "server behind one address the same file; default <home>/console-secret",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
}


# Admission and stream bounds: 0 would refuse every call, or end every stream at once.
POSITIVE = frozenset({"max_concurrent_rpcs", "max_streams_per_key", "max_streams_per_connection",
                      "stream_window", "stream_buffer_bytes", "client_idle_timeout",
                      "snapshot_poll_interval", "replica_timeout", "console_session_ttl"})
NOT_NEGATIVE = frozenset({"max_snapshot_age", "max_connection_age", "exchange_sync_every",
                          "flood_window"})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", type=Path,
                        help=f"TOML file of these settings (or ${ENV_PREFIX}CONFIG)")
    for field in fields(ServerConfig):
        flag = "--" + field.name.replace("_", "-")
        if field.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=HELP[field.name])
        else:
            parser.add_argument(flag, default=None, metavar=field.name.upper(),
                                help=HELP[field.name])


def load(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> ServerConfig:
    config_file = args.config or (Path(environ[f"{ENV_PREFIX}CONFIG"])
                                  if environ.get(f"{ENV_PREFIX}CONFIG") else None)
    layers: list[tuple[str, dict[str, Any]]] = []
    if config_file is not None:
        try:
            layers.append((str(config_file), tomllib.loads(Path(config_file).read_text())))
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise HashsvcError(f"cannot read config file {config_file}: {err}") from None
    layers.append(("environment", {
        f.name: environ[f"{ENV_PREFIX}{f.name.upper()}"]
        for f in fields(ServerConfig) if f"{ENV_PREFIX}{f.name.upper()}" in environ
    }))
    layers.append(("flags", {f.name: getattr(args, f.name) for f in fields(ServerConfig)
                             if getattr(args, f.name, None) is not None}))

    values: dict[str, Any] = {"home": DataHome.resolve(None).root}
    known = {f.name: f for f in fields(ServerConfig)}
    for source, layer in layers:
        for name, raw in layer.items():
            if name not in known:
                raise HashsvcError(f"{source}: unknown setting {name!r}")
            values[name] = _coerce(source, name, str(known[name].type), raw)
            if name in POSITIVE and not values[name] > 0:
                raise HashsvcError(f"{source}: {name} must be above 0, got {raw!r}")
            if name in NOT_NEGATIVE and not values[name] >= 0:
                raise HashsvcError(f"{source}: {name} must be 0 (off) or more, got {raw!r}")
            if name == "role" and values[name] not in ROLES:
                raise HashsvcError(f"{source}: role must be one of {', '.join(ROLES)}, "
                                   f"got {raw!r}")
    if values.get("store") and not is_postgres(values["store"]):
        raise HashsvcError(f"store must be a postgresql:// URL, got {redact(values['store'])!r}; "
                           "the SQLite store is <home>/store.sqlite")
    return ServerConfig(**values)


def _coerce(source: str, name: str, kind: str, raw: Any) -> Any:
    try:
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ValueError(raw)
            return text in ("1", "true", "yes", "on")
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if "Path" in kind:
            return Path(raw).expanduser()
        return str(raw)
    except ValueError:
        raise HashsvcError(f"{source}: invalid value {raw!r} for {name} ({kind})") from None
