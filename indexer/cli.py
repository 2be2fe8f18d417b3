"""`indexer`: the trust-and-safety team's tool for banks, hash lists and snapshots.

Exit codes (stable, for scripts):
    0  success (for `match`: nothing matched)
    1  `match` only: at least one file matched a bank
    2  usage error (bad flags)
    3  invalid input: a malformed hash-list line, an unreadable image, a bad hash or name
    4  not found: no such bank, entry or snapshot
    5  conflict: the bank already exists
    6  failed precondition or corrupt data: no snapshot published, checksum mismatch
    7  partly done: `import --skip-invalid` imported the valid lines but rejected some
  130  interrupted
  141  the reader of the output went away (e.g. `indexer bank list | head -1`)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hashsvc_client._console import console_main

from hashsvc import __version__
from hashsvc.errors import ErrorCode, HashsvcError
from indexer.commands import COMMANDS

EXIT_OK = 0
EXIT_MATCHED = 1
EXIT_INVALID = 3
EXIT_CODES: dict[ErrorCode, int] = {
    ErrorCode.INVALID_ARGUMENT: EXIT_INVALID,
    ErrorCode.RESOURCE_EXHAUSTED: EXIT_INVALID,
    ErrorCode.NOT_FOUND: 4,
    ErrorCode.ALREADY_EXISTS: 5,
    ErrorCode.FAILED_PRECONDITION: 6,
    ErrorCode.DATA_LOSS: 6,
    ErrorCode.UNAVAILABLE: 6,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="indexer",
        description="Manage hashsvc banks, hash lists and snapshots.",
        epilog=__doc__.split("\n", 2)[2] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hashsvc {__version__}")
    parser.add_argument(
        "--home",
        metavar="DIR",
        help="data directory holding store.sqlite and snapshots/ "
        "(default: $HASHSVC_HOME, else ~/.local/share/hashsvc)",
    )
    parser.add_argument(
        "--store",
        metavar="URL",
        help="a postgresql://user@host/db store shared by several nodes, instead of the home's "
        "store.sqlite (default: $HASHSVC_STORE; a password is better in PGPASSWORD or ~/.pgpass)",
    )
    subcommands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.register(subcommands)
    return parser


@console_main
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except HashsvcError as err:
        print(f"indexer: error: {err.message}", file=sys.stderr)
        return EXIT_CODES.get(err.code, EXIT_INVALID)
    except KeyboardInterrupt:
        print("indexer: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
