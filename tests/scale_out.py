"""The scale-out topology on loopback, for tests/test_scale_out.py and
loadtests/bench_freshness.py: ONE admin process and N scan replicas, each its own process with
its own home and snapshot cache, sharing only a PostgreSQL store URL, a bucket and the keys
file, as they would on separate nodes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.s3_server import new_bucket
from tests.server_process import ServerProcess

SCAN_FLAGS = ("--role", "scan", "--workers", "1", "--snapshot-poll-interval", "0.2")


@dataclass
class Cluster:
    """The running topology, and how to start one more replica into it."""

    root: Path
    store: str
    snapshots: str
    endpoint: str
    bucket: str
    admin: ServerProcess
    replica_flags: tuple[str, ...] = ()  # more `hashsvc serve` flags for every replica
    replicas: list[ServerProcess] = field(default_factory=list)

    @property
    def admin_key(self) -> str:
        return self.admin.keys["admin"]

    @property
    def scan_key(self) -> str:
        return self.admin.keys["scanner"]

    def start_replica(self) -> ServerProcess:
        """One more scan replica: its own home and cache; the admin's keys file."""
        home = self.root / f"replica-{len(self.replicas) + 1}"
        home.mkdir()
        replica = ServerProcess(
            home, *SCAN_FLAGS, "--store", self.store, "--snapshots", self.snapshots,
            "--s3-endpoint-url", self.endpoint, "--keys-file", str(self.admin.home / "keys.toml"),
            *self.replica_flags, keys={})
        self.replicas.append(replica)
        return replica

    @property
    def live(self) -> list[ServerProcess]:
        return [replica for replica in self.replicas if replica.running]


@contextlib.contextmanager
def running_cluster(store: str, endpoint: str, root: Path, replicas: int,
                    replica_flags: tuple[str, ...] = ()) -> Iterator[Cluster]:
    """The admin (publishing to a new bucket at `endpoint`) and `replicas` scan replicas, on
    the PostgreSQL store at `store`; all stopped afterwards. S3 credentials come from the
    environment (tests/s3_server.py's `aws_credentials`)."""
    bucket = new_bucket(endpoint)
    snapshots = f"s3://{bucket}/hashsvc"
    admin = ServerProcess(root / "admin", "--role", "admin", "--store", store,
                          "--snapshots", snapshots, "--s3-endpoint-url", endpoint,
                          "--snapshot-poll-interval", "0.2")
    running = Cluster(root, store, snapshots, endpoint, bucket, admin, replica_flags)
    try:
        for _ in range(replicas):
            running.start_replica()
        yield running
    finally:
        for process in (*running.replicas, admin):
            process.stop()
