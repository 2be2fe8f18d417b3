"""`hashsvc`: run the gRPC server, and manage its API keys.

    hashsvc serve                      on the embedded default (no configuration needed)
    hashsvc keys add NAME --role scan  make a key; prints it once, stores only its hash
    hashsvc keys add NAME --role scan --bank ncmec   a key that sees and matches ncmec only
    hashsvc keys list                  names, roles and banks (never a key, nor its hash)
    hashsvc keys remove NAME           revoke a key (the server re-reads keys.toml by itself)
    hashsvc healthcheck                exit 0 if the server's health is SERVING

Exit codes: 0 ok, 1 healthcheck not SERVING, 2 usage, 3 invalid input, 4 not found,
141 the reader of the output went away.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from hashsvc_client._channel import ENV_SERVER
from hashsvc_client._console import console_main

from hashsvc import __version__, config
from hashsvc.errors import ErrorCode, HashsvcError, NotFoundError
from hashsvc.home import DataHome, keep_private
from hashsvc.keys import ROLES, add_key, read_keys, remove_key


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hashsvc", description="hashsvc: perceptual-hash matching of known images.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hashsvc {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    serve = commands.add_parser(
        "serve", help="run the gRPC scan and admin server",
        description="Run the gRPC server. Settings: flags > HASHSVC_* environment (e.g. "
        "HASHSVC_LISTEN) > --config TOML file > defaults.",
        epilog="example:\n  hashsvc serve --listen 127.0.0.1:50051 --home /var/lib/hashsvc",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    config.add_arguments(serve)
    serve.set_defaults(run=_serve)

    keys = commands.add_parser("keys", help="manage API keys")
    verbs = keys.add_subparsers(title="keys commands", metavar="VERB", required=True)
    add = verbs.add_parser(
        "add", help="create an API key (printed once; only its hash is stored)",
        epilog="example:\n  hashsvc keys add platform-a --role scan --bank ncmec",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add.add_argument("name")
    add.add_argument("--role", action="append", dest="roles", choices=ROLES, required=True,
                     help="scan: ScanService; admin: AdminService and ScanService (repeatable)")
    add.add_argument("--bank", action="append", dest="banks", metavar="BANK",
                     help="scope the key to this bank (repeatable): it sees and matches only "
                     "these banks, allowlists included (default: every bank)")
    listing = verbs.add_parser("list", help="list key names and roles (never the keys)",
                               epilog="example:\n  hashsvc keys list",
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    remove = verbs.add_parser(
        "remove", help="revoke a key: its entry leaves the keys file, the rest of the file "
        "(comments included) stays as it was",
        epilog="example:\n  hashsvc keys remove platform-a",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    remove.add_argument("name")
    for sub in (add, listing, remove):
        sub.add_argument("--home", help="data directory (default $HASHSVC_HOME)")
        sub.add_argument("--keys-file", help="default <home>/keys.toml")
    add.set_defaults(run=_keys_add)
    listing.set_defaults(run=_keys_list)
    remove.set_defaults(run=_keys_remove)

    health = commands.add_parser(
        "healthcheck", help="ask a server's grpc.health.v1 service; exit 0 if SERVING, else 1",
        description="Call grpc.health.v1 Health/Check (no API key needed) and print the status. "
        "Exit 0 if SERVING; 1 if NOT_SERVING, unknown service, unreachable or timed out.",
        epilog="example:\n  hashsvc healthcheck --target 127.0.0.1:50051 --timeout 2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    health.add_argument("--target", help="host:port (default: $HASHSVC_SERVER, as for the "
                        "clients; else $HASHSVC_LISTEN with 0.0.0.0 or [::] as 127.0.0.1; else "
                        "127.0.0.1:50051)")
    health.add_argument("--service", default="",
                        help='service to check (default "": the whole server)')
    health.add_argument("--timeout", type=float, default=3.0,
                        help="deadline in seconds (default 3)")
    health.add_argument("--tls", action="store_true", help="connect with TLS (system CA roots)")
    health.add_argument("--ca-cert", type=Path, help="PEM CA bundle to trust (implies --tls)")
    health.set_defaults(run=_healthcheck)
    return parser


def _keys_file(args: argparse.Namespace) -> Path:
    if args.keys_file:
        return Path(args.keys_file)
    return DataHome.resolve(args.home).root / "keys.toml"


def _serve(args: argparse.Namespace) -> int:
    from hashsvc.server.app import serve  # the server's imports are only paid for by `serve`

    keep_private()  # the store, snapshots, keys and audit log: 0600 in a 0700 home
    return serve(config.load(args))


def _keys_add(args: argparse.Namespace) -> int:
    keep_private()
    path = _keys_file(args)
    key = add_key(path, args.name, args.roles, args.banks)
    print(key)
    scope = f", banks {', '.join(sorted(set(args.banks)))}" if args.banks else ""
    print(f"added key {args.name!r} ({', '.join(sorted(set(args.roles)))}{scope}) to {path}; "
          "this is the only time the key is shown", file=sys.stderr)
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    path = _keys_file(args)
    if not path.is_file():
        raise NotFoundError(f"no keys file at {path}: check --home, $HASHSVC_HOME or --keys-file")
    for key in read_keys(path):
        banks = "*" if key.banks is None else ",".join(sorted(key.banks))
        print(f"{key.name}\t{','.join(sorted(key.roles))}\t{banks}")
    return 0


def _keys_remove(args: argparse.Namespace) -> int:
    keep_private()
    path = _keys_file(args)
    remove_key(path, args.name)
    print(f"removed key {args.name!r} from {path}; servers stop accepting it when they re-read "
          "the file (about a second)", file=sys.stderr)
    return 0


def _health_target(listen: str | None) -> str:
    """This host's own server: where `serve` listens, with a wildcard address as loopback."""
    if not listen:
        return "127.0.0.1:50051"
    host, _, port = listen.rpartition(":")
    if host in ("", "0.0.0.0", "[::]", "::"):
        host = "127.0.0.1"
    return f"{host}:{port}"


def _healthcheck(args: argparse.Namespace) -> int:
    """Probe the standard health service, for the container's HEALTHCHECK and similar probes.

    Docker runs this every interval, so it imports only grpc and grpc_health, never the server
    (FAISS, the store). It exits only 0 or 1: Docker reserves 2, and anything but SERVING, an
    unreachable server or a missed deadline included, means unhealthy.
    """
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target = (args.target or os.environ.get(ENV_SERVER)
              or _health_target(os.environ.get(f"{config.ENV_PREFIX}LISTEN")))
    try:
        ca_cert = args.ca_cert.read_bytes() if args.ca_cert else None
    except OSError as err:
        print(f"hashsvc: error: cannot read --ca-cert: {err}", file=sys.stderr)
        return 1
    channel = (grpc.secure_channel(target, grpc.ssl_channel_credentials(ca_cert))
               if args.tls or ca_cert else grpc.insecure_channel(target))
    with channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
        except grpc.RpcError as err:
            print(f"{target}: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    serving = response.status == health_pb2.HealthCheckResponse.SERVING
    print(f"{target}: {health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)}")
    return 0 if serving else 1


@console_main
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except HashsvcError as err:
        print(f"hashsvc: error: {err.message}", file=sys.stderr)
        return 4 if err.code == ErrorCode.NOT_FOUND else 3
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
