"""`hashsvc`: run the gRPC server, and manage its API keys.

    hashsvc serve                      on the embedded default (no configuration needed)
    hashsvc keys add NAME --role scan  make a key; prints it once, stores only its hash
    hashsvc keys list
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from hashsvc import __version__, config
from hashsvc.errors import ErrorCode, HashsvcError
from hashsvc.home import DataHome
from hashsvc.keys import ROLES, add_key, read_keys


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
        epilog="example:\n  hashsvc keys add platform-a --role scan",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add.add_argument("name")
    add.add_argument("--role", action="append", dest="roles", choices=ROLES, required=True,
                     help="scan: ScanService; admin: AdminService and ScanService (repeatable)")
    listing = verbs.add_parser("list", help="list key names and roles (never the keys)",
                               epilog="example:\n  hashsvc keys list",
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    for sub in (add, listing):
        sub.add_argument("--home", help="data directory (default $HASHSVC_HOME)")
        sub.add_argument("--keys-file", help="default <home>/keys.toml")
    add.set_defaults(run=_keys_add)
    listing.set_defaults(run=_keys_list)
    return parser


def _keys_file(args: argparse.Namespace) -> Path:
    if args.keys_file:
        return Path(args.keys_file)
    return DataHome.resolve(args.home).root / "keys.toml"


def _serve(args: argparse.Namespace) -> int:
    from hashsvc.server.app import serve  # the server's imports are only paid for by `serve`

    return serve(config.load(args))


def _keys_add(args: argparse.Namespace) -> int:
    path = _keys_file(args)
    key = add_key(path, args.name, args.roles)
    print(key)
    print(f"added key {args.name!r} ({', '.join(sorted(set(args.roles)))}) to {path}; "
          "this is the only time the key is shown", file=sys.stderr)
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    path = _keys_file(args)
    for key in read_keys(path):
        print(f"{key.name}\t{','.join(sorted(key.roles))}")
    return 0


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
