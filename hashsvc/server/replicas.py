"""What each replica serves: ReplicaService (public, every role) and AdminService.ListReplicas.

Why a public service of its own: a scan replica has no AdminService and writes nothing, so the
admin service cannot read its state from the store; it asks. Like grpc.health it needs no key,
so it tells only what a load balancer could learn anyway (the snapshot's version and times, the
store revision, the role): no bank names, no counts.

The admin asks every replica in parallel, each with its own timeout, and lists one that does not
answer as unreachable: one replica down must not hide the others, which is when an operator most
needs this view.
"""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
from hashsvc_client.v1 import admin_pb2, replica_pb2, replica_pb2_grpc

from hashsvc import __version__
from hashsvc.config import ServerConfig
from hashsvc.server.runtime import Runtime

REPLICA_SERVICE = "hashsvc.v1.ReplicaService"
_DNS = "dns:///"


def serving_status(runtime: Runtime) -> replica_pb2.ServingStatus:
    """This process's served snapshot (each worker answers for itself)."""
    config = runtime.config
    status = replica_pb2.ServingStatus(role=config.role, workers=config.resolved_workers,
                                       server_version=__version__)
    matcher = runtime.scanner.matcher
    if matcher is not None:
        snapshot = matcher.snapshot
        status.MergeFrom(replica_pb2.ServingStatus(
            version=snapshot.version, created_at=snapshot.created_at,
            loaded_at=snapshot.loaded_at, age_seconds=time.time() - snapshot.created_at,
            store_revision=int(snapshot.manifest["store_revision"]),
            live_revision=matcher.delta.revision))
    return status


class ReplicaServicer(replica_pb2_grpc.ReplicaServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def GetServingStatus(self, request: replica_pb2.GetServingStatusRequest,
                         context: grpc.ServicerContext) -> replica_pb2.ServingStatus:
        return serving_status(self._runtime)


@dataclass(frozen=True)
class _Asked:
    address: str
    status: replica_pb2.ServingStatus | None = None
    error: str = ""


def list_replicas(runtime: Runtime) -> admin_pb2.ListReplicasResponse:
    """This server, then every replica `--replicas` names, with what each lacks of the store."""
    config = runtime.config
    revision = runtime.store.revision()
    current = runtime.current_in_repository() or ""
    addresses = replica_addresses(config.replicas)
    answers = [_Asked(socket.gethostname(), serving_status(runtime))]  # a pod's name, in k8s
    if addresses:
        credentials = _credentials(config)
        with ThreadPoolExecutor(max_workers=min(16, len(addresses)),
                                thread_name_prefix="replica-ask") as pool:
            answers += pool.map(lambda a: _ask(a, credentials, config.replica_timeout),
                                addresses)
    response = admin_pb2.ListReplicasResponse(store_revision=revision, current_version=current)
    for index, asked in enumerate(answers):
        replica = response.replicas.add(address=asked.address, this_server=index == 0,
                                        reachable=asked.status is not None, error=asked.error)
        if asked.status is not None:
            replica.status.CopyFrom(asked.status)
            replica.pending_changes = (max(0, revision - asked.status.store_revision)
                                       if asked.status.version else revision)
            replica.current = bool(asked.status.version) and asked.status.version == current
    return response


def replica_addresses(setting: str) -> list[str]:
    """host:port items as given; `dns:///name:port` becomes one item per address the name has
    now (so each pod behind a headless Service is asked, not whichever one DNS picks). A name
    that does not resolve stays as given: asking it then fails, and it is listed unreachable."""
    addresses: list[str] = []
    for item in (part.strip() for part in setting.split(",")):
        if not item:
            continue
        if not item.startswith(_DNS):
            addresses.append(item)
            continue
        name = item[len(_DNS):]
        host, _, port = name.rpartition(":")
        try:
            infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except (OSError, ValueError):
            addresses.append(name)
            continue
        for family, _kind, _proto, _name, sockaddr in infos:
            ip = str(sockaddr[0])
            address = f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}"
            if address not in addresses:
                addresses.append(address)
    return addresses


def _credentials(config: ServerConfig) -> grpc.ChannelCredentials | None:
    """TLS to replicas when this server serves TLS or a CA for them is given; None: plaintext."""
    if config.replica_tls_ca is None and config.tls_cert is None:
        return None
    roots = config.replica_tls_ca.read_bytes() if config.replica_tls_ca else None
    return grpc.ssl_channel_credentials(root_certificates=roots)


def _ask(address: str, credentials: grpc.ChannelCredentials | None,
         timeout: float) -> _Asked:
    channel = (grpc.secure_channel(address, credentials) if credentials is not None
               else grpc.insecure_channel(address))
    try:
        stub = replica_pb2_grpc.ReplicaServiceStub(channel)
        status = stub.GetServingStatus(replica_pb2.GetServingStatusRequest(), timeout=timeout)
    except grpc.RpcError as err:
        code = err.code() if isinstance(err, grpc.Call) else grpc.StatusCode.UNKNOWN
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return _Asked(address, error=f"no answer within {timeout:g} s (--replica-timeout)")
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return _Asked(address, error="no ReplicaService there (not hashsvc, or older)")
        details = (err.details() if isinstance(err, grpc.Call) else "") or ""
        return _Asked(address, error=f"{code.name}: {details}"[:300])
    finally:
        channel.close()
    return _Asked(address, status)
