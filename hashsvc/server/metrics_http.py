"""The Prometheus /metrics endpoint, on its own port, for one process or a whole supervisor."""

from __future__ import annotations

import logging

from hashsvc.errors import HashsvcError

log = logging.getLogger("hashsvc.metrics")


def start_metrics_server(listen: str, *, multiprocess_dir: str | None) -> int | None:
    """Serve /metrics on `listen` ("" = off); returns the bound port. With `multiprocess_dir`,
    the values of every worker process are aggregated (prometheus_client multiprocess mode)."""
    if not listen:
        return None
    from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    host, _, port_text = listen.rpartition(":")
    registry = REGISTRY
    if multiprocess_dir is not None:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=multiprocess_dir)  # type: ignore[no-untyped-call]
    try:
        httpd, _thread = start_http_server(int(port_text), addr=host.strip("[]") or "0.0.0.0",
                                           registry=registry)
    except (OSError, ValueError) as err:
        raise HashsvcError(f"cannot serve metrics on {listen!r}: {err}") from None
    port = int(httpd.server_port)
    log.info("metrics", extra={"listen": listen, "port": port})
    return port
