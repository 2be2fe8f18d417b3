"""Whether this process should be sent traffic, told to load balancers through grpc.health.v1.

Kubernetes' readiness probe, a gRPC client's health checking and `hashsvc healthcheck` all read
the same answer, so it is decided in one place. SERVING only when all of these hold:

- a snapshot is being served (a replica that has none would fail every scan);
- the process is not draining (after SIGTERM it must stop receiving new calls);
- with `--max-snapshot-age S`: the snapshot served is not behind the repository's current one
  for longer than S seconds. Behind means `current` names another version than the one served
  (a new one still loading, or one this process refused); the clock starts when this process
  first sees that, on its own monotonic clock, so skew between machines cannot make it lie. A
  replica that cannot follow (a full cache disk, a lost bucket) leaves the pool instead of
  answering from an old index; one that catches up comes back.

Liveness is another question: the health service `liveness` is SERVING for as long as the
process answers at all. A replica still loading, behind or draining must leave the pool, not be
restarted (a restart would only start the load again); Kubernetes' liveness probe asks for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from grpc_health.v1 import health, health_pb2

log = logging.getLogger("hashsvc.readiness")

SCAN_SERVICE = "hashsvc.v1.ScanService"
ADMIN_SERVICE = "hashsvc.v1.AdminService"
LIVENESS = "liveness"
SERVICES_BY_ROLE: dict[str, tuple[str, ...]] = {
    "scan": (SCAN_SERVICE,),
    "admin": (ADMIN_SERVICE,),
    "all": (SCAN_SERVICE, ADMIN_SERVICE),
}


class Readiness:
    def __init__(
        self, servicer: health.HealthServicer, services: Sequence[str],
        max_snapshot_age: float = 0.0, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._servicer = servicer
        self._services = ("", *services)  # "": the whole server, what Kubernetes asks by default
        self._max_age = max_snapshot_age
        self._clock = clock
        self._lock = threading.Lock()
        self._served: str | None = None
        self._behind_since: float | None = None
        self._draining = False
        self._status: bool | None = None
        self._stale = False  # last published answer was "too far behind": log its end once
        servicer.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        self._publish()

    def track(self, *, served: str | None, current: str | None) -> None:
        """Called on every look at the repository: the version served and the one it names."""
        with self._lock:
            self._served = served
            if current is None or current == served:
                self._behind_since = None
            elif self._behind_since is None:
                self._behind_since = self._clock()
            self._publish()

    def drain(self) -> None:
        """For good: a draining process never becomes ready again."""
        with self._lock:
            self._draining = True
            self._publish()

    def _too_far_behind(self) -> bool:
        return (self._max_age > 0 and self._behind_since is not None
                and self._clock() - self._behind_since > self._max_age)

    def _publish(self) -> None:
        stale = self._too_far_behind()
        if stale != self._stale:
            if stale:
                log.warning("not ready: the served snapshot has been behind the repository's "
                            "current one for longer than --max-snapshot-age",
                            extra={"serving": self._served, "max_snapshot_age": self._max_age})
            else:
                log.info("caught up with the repository", extra={"serving": self._served})
            self._stale = stale
        serving = self._served is not None and not self._draining and not stale
        if serving == self._status:
            return
        self._status = serving
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for service in self._services:
            self._servicer.set(service, status)
