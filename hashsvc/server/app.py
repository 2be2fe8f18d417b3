"""`hashsvc serve`: prepare the data home, then run one worker in-process or supervise several.

Deliberately light on imports: with several workers the supervisor must point
PROMETHEUS_MULTIPROC_DIR at a fresh directory *before* anything imports prometheus_client, so
the server modules are imported only once that is decided.
"""

from __future__ import annotations

import logging
import os

from hashsvc import __version__, logs
from hashsvc.config import ServerConfig
from hashsvc.errors import HashsvcError, RepositoryUnavailableError
from hashsvc.keys import add_key
from hashsvc.server.keyfile import load_keys
from hashsvc.server.ports import AddressInUseError, refuse_if_in_use
from hashsvc.snapshot import publish
from hashsvc.snapshot.repository import open_repository
from hashsvc.store import open_store

log = logging.getLogger("hashsvc.server")
STARTUP_PUBLISH_WAIT = 120.0  # seconds the first publish at start waits for another publisher


def serve(config: ServerConfig) -> int:
    logs.configure(config.log_level)
    config.home.mkdir(parents=True, exist_ok=True)
    log.info("starting hashsvc", extra={"version": __version__, "config": config.describe(),
                                        "workers": config.resolved_workers, "role": config.role})
    refuse_if_in_use(config.listen)  # before touching the home: a second server changes nothing
    if config.resolved_http_listen:
        try:
            refuse_if_in_use(config.resolved_http_listen)
        except AddressInUseError as err:  # port 8080 is on by default: say which setting
            raise AddressInUseError(f"{err.message}; it is the HTTP/JSON API's port: choose "
                                    "another with --http-listen, or --http-listen off") from None
    prepare(config)
    if config.resolved_workers > 1:
        from hashsvc.server.supervisor import supervise

        return supervise(config)
    from hashsvc.server.metrics_http import start_metrics_server
    from hashsvc.server.worker import run_worker

    start_metrics_server(config.metrics_listen, multiprocess_dir=None)
    return run_worker(config)


def prepare(config: ServerConfig) -> None:
    """Things done once, before any worker starts, so workers never race to do them.

    A scan replica writes nothing here: it neither makes a key nor publishes; it serves what the
    admin service publishes, and is not ready until the first snapshot is there."""
    _ensure_keys(config)
    if config.role == "scan":
        return
    if config.resolved_http_listen:
        from hashsvc.http.console.sessions import ensure_secret

        ensure_secret(config.resolved_console_secret_file)  # before the workers that read it
    snapshots = open_repository(
        config.resolved_snapshots, cache_dir=config.resolved_snapshot_cache,
        endpoint_url=config.s3_endpoint_url or None)
    # Opened even when there is nothing to publish: a wrong or unreachable store URL stops the
    # start here, in one line, and its schema is migrated before any worker opens it.
    with open_store(config.store_target) as store:
        try:
            current = snapshots.current_version()
        except RepositoryUnavailableError:
            if snapshots.fallback() is None:
                raise  # nothing to serve and perhaps a wrong bucket: a one-line error, exit 3
            log.warning("snapshot repository unavailable at start; serving the newest cached "
                        "snapshot", extra={"repository": snapshots.location})
            return
        if current is None:
            # Another node may be publishing into the shared store right now: wait for it
            # (bounded) rather than fail the start; it is done in seconds.
            result = publish(store, snapshots, lock_wait=STARTUP_PUBLISH_WAIT)
            log.info("no snapshot yet: published one from the store",
                     extra={"version": result.version})


def _ensure_keys(config: ServerConfig) -> None:
    """Secure by default with zero configuration: on first start, make an admin key and leave it
    in a 0600 file for the operator, never in a log."""
    if config.insecure_no_auth:
        log.warning("authentication is DISABLED (--insecure-no-auth): anyone who can reach "
                    f"{config.listen} can scan and administer this server")
        return
    keys_file = config.resolved_keys_file
    if keys_file.exists():
        load_keys(keys_file)  # a file that does not load refuses the start, in one line
        return
    if config.role == "scan":
        raise HashsvcError(f"no API keys file at {keys_file}: a scan replica creates no keys; "
                           "give it the admin service's keys file (--keys-file), or run "
                           "--insecure-no-auth for a local trial")
    key = add_key(keys_file, "bootstrap-admin", ["admin"])
    key_path = config.home / "bootstrap-admin.key"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    log.warning("no API keys were configured: created admin key 'bootstrap-admin'; read it from "
                "the file, then delete the file", extra={"key_file": str(key_path),
                                                         "keys_file": str(keys_file)})
