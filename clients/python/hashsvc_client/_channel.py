"""What the sync and asyncio clients share: target, credentials, retries, metadata, requests."""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from hashsvc_client.v1 import scan_pb2, types_pb2

ENV_SERVER = "HASHSVC_SERVER"
ENV_API_KEY = "HASHSVC_API_KEY"
DEFAULT_SERVER = "localhost:50051"

# gRPC's own retry machinery: backoff with jitter, only on UNAVAILABLE, only for calls that are
# safe to repeat (every scan; the read-only admin calls). round_robin: a connection to every
# address the target names (several addresses, or a DNS name such as a Kubernetes headless
# Service with one record per replica), each call to the next ready one; an address that fails
# is skipped until it reconnects, and a call that failed on one is retried on another.
_SERVICE_CONFIG = json.dumps({
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [{
        "name": [
            {"service": "hashsvc.v1.ScanService"},
            {"service": "hashsvc.v1.AdminService", "method": "ListBanks"},
            {"service": "hashsvc.v1.AdminService", "method": "GetIndexStatus"},
            {"service": "hashsvc.v1.AdminService", "method": "ListEntries"},
            {"service": "hashsvc.v1.AdminService", "method": "GetEntry"},
            {"service": "hashsvc.v1.AdminService", "method": "ListReplicas"},
            {"service": "hashsvc.v1.AdminService", "method": "GetEvaluationReport"},
            {"service": "hashsvc.v1.ReplicaService"},
        ],
        "retryPolicy": {
            "maxAttempts": 5,
            "initialBackoff": "0.1s",
            "maxBackoff": "2s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }],
})

ALGORITHMS = {"pdq": types_pb2.ALGORITHM_PDQ, "phash": types_pb2.ALGORITHM_PHASH,
              "dhash": types_pb2.ALGORITHM_DHASH, "md5": types_pb2.ALGORITHM_MD5,
              "sha256": types_pb2.ALGORITHM_SHA256}

HashLike = types_pb2.Hash | tuple[str, str | bytes]


@dataclass(frozen=True)
class Tls:
    """TLS settings: `ca_cert` to trust a private CA; `client_cert`/`client_key` for mutual TLS."""

    ca_cert: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: Path | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_cert),
            private_key=read(self.client_key),
            certificate_chain=read(self.client_cert),
        )


Target = str | Sequence[str]

# gRPC target schemes whose text names the addresses itself; passed through unchanged.
_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:")


def resolve(target: Target | None, api_key: str | None) -> tuple[str, str | None]:
    """The channel target and API key, from the arguments or the environment.

    `target` is one address (`host:port`), a gRPC target (`dns:///name:port`, `ipv4:a:p,b:p`,
    ...), or several addresses, as a list or comma-separated (`10.0.0.1:50051,10.0.0.2:50051`);
    calls are balanced across every address (round_robin). Raises ValueError for a list that
    gRPC cannot take as one target."""
    chosen: Target = target or os.environ.get(ENV_SERVER) or DEFAULT_SERVER
    return (channel_target(chosen),
            api_key if api_key is not None else os.environ.get(ENV_API_KEY))


def channel_target(target: Target) -> str:
    """One gRPC target for `target`. Several addresses become one `ipv4:` or `ipv6:` target,
    which gRPC balances itself: they must be IP literals of one family, since gRPC has no
    target naming several hosts; several replicas behind one name are a `dns:///` target."""
    text = target if isinstance(target, str) else ",".join(target)
    text = text.strip()
    if text.startswith(_SCHEMES) or "," not in text:
        if not text:
            raise ValueError("no server address given")
        return text
    addresses = [part.strip() for part in text.split(",") if part.strip()]
    families = {_ip_family(address) for address in addresses}
    if len(families) != 1:
        raise ValueError(f"several addresses ({text}) must be IPv4 addresses, or IPv6 ones, not "
                         "both")
    return f"{families.pop()}:{','.join(addresses)}"


def _ip_family(address: str) -> str:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"server address {address!r} needs a port (host:port)")
    try:
        ip = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        raise ValueError(
            f"server address {address!r} in a list must be an IP address: gRPC balances over "
            "a list of addresses, or over the records of one name given as "
            "dns:///NAME:PORT (for example a Kubernetes headless Service)") from None
    if ip.version == 6 and not host.startswith("["):
        raise ValueError(f"IPv6 server address {address!r} needs brackets: [ADDRESS]:PORT")
    return f"ipv{ip.version}"


def channel_options(max_message_bytes: int) -> list[tuple[str, object]]:
    return [
        # Each client its own connection: gRPC otherwise shares one between every channel to
        # the same target, and a multi-worker server gives each connection to one worker.
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.service_config", _SERVICE_CONFIG),
        ("grpc.enable_retries", 1),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


def metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()


def make_hash(algorithm: str, value: str | bytes, quality: int | None = None) -> types_pb2.Hash:
    """A Hash message from an algorithm name and a hex string or raw bytes."""
    try:
        kind = ALGORITHMS[algorithm.lower()]
    except KeyError:
        raise ValueError(
            f"unknown algorithm {algorithm!r} (known: {', '.join(ALGORITHMS)})"
        ) from None
    message = types_pb2.Hash(algorithm=kind, quality=quality)
    if isinstance(value, bytes):
        message.raw = value
    else:
        message.hex = value
    return message


def to_hashes(hashes: Iterable[HashLike]) -> list[types_pb2.Hash]:
    return [h if isinstance(h, types_pb2.Hash) else make_hash(*h) for h in hashes]


def scan_options(
    banks: Sequence[str] = (), algorithms: Sequence[str] = (), dihedral: bool = True,
    match_low_quality: bool = False,
) -> types_pb2.ScanOptions:
    return types_pb2.ScanOptions(
        banks=banks, algorithms=[ALGORITHMS[a.lower()] for a in algorithms],
        disable_dihedral=not dihedral, match_low_quality=match_low_quality,
    )


def scan_image_request(
    image: bytes, request_id: str, banks: Sequence[str], algorithms: Sequence[str],
    dihedral: bool,
) -> scan_pb2.ScanImageRequest:
    return scan_pb2.ScanImageRequest(image=image, request_id=request_id,
                                     options=scan_options(banks, algorithms, dihedral))


def scan_hashes_request(
    hashes: Iterable[HashLike], request_id: str, banks: Sequence[str], dihedral: bool = True
) -> scan_pb2.ScanHashesRequest:
    return scan_pb2.ScanHashesRequest(hashes=to_hashes(hashes), request_id=request_id,
                                      options=scan_options(banks, dihedral=dihedral))
