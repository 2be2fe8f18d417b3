"""`indexer disable|enable|remove BANK`: act on entries chosen by id, external id or hash."""

from __future__ import annotations

import argparse
from typing import Any

from hashsvc.errors import HashsvcError
from hashsvc.hashing.algorithms import parse_hash
from hashsvc.store import EntrySelector
from indexer.commands.common import add_command, open_store, say, when_served


def register(subcommands: Any) -> None:
    disable = add_command(
        subcommands, "disable",
        "Disable entries (e.g. confirmed false positives): kept in the store with the reason, "
        "no longer matched by running servers within about a second (no publish needed).",
        "indexer disable my-bank --external-id img-0042 --reason 'false positive, ticket 881'",
        _disable,
    )
    enable = add_command(subcommands, "enable", "Re-enable disabled entries (live within about "
                         "a second).", "indexer enable my-bank --id 17", _enable)
    remove = add_command(subcommands, "remove", "Delete entries from a bank for good (live "
                         "within about a second).",
                         "indexer remove my-bank --hash pdq:f8f8f0cc...", _remove)
    for parser in (disable, enable, remove):
        parser.add_argument("bank")
        parser.add_argument("--id", type=int, action="append", dest="ids", default=[],
                            help="entry id (repeatable)")
        parser.add_argument("--external-id", action="append", dest="external_ids", default=[],
                            help="external id from the source list (repeatable)")
        parser.add_argument("--hash", action="append", dest="hashes", default=[],
                            metavar="ALGO:HEX", help="hash with its algorithm (repeatable)")
    disable.add_argument("--reason", help="why, kept with the entry for the audit trail")


def _selector(args: argparse.Namespace) -> EntrySelector:
    hashes: list[tuple[str, bytes]] = []
    for text in args.hashes:
        algorithm, sep, value = text.partition(":")
        if not sep:
            raise HashsvcError(f"invalid --hash {text!r}: expected ALGORITHM:HEX, e.g. pdq:f8f8…")
        parsed = parse_hash(algorithm, value)
        hashes.append((parsed.algorithm, parsed.value))
    selector = EntrySelector(ids=args.ids, external_ids=args.external_ids, hashes=hashes)
    if selector.is_empty():
        raise HashsvcError("choose entries with --id, --external-id or --hash")
    return selector


def _disable(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        count = store.set_disabled(args.bank, _selector(args), True, args.reason)
        bank = store.get_bank(args.bank)
    say(f"disabled {count:,} entries in {args.bank!r}: {when_served(bank)}")
    return 0 if count else 4


def _enable(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        count = store.set_disabled(args.bank, _selector(args), False)
        bank = store.get_bank(args.bank)
    say(f"enabled {count:,} entries in {args.bank!r}: {when_served(bank)}")
    return 0 if count else 4


def _remove(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        count = store.remove_entries(args.bank, _selector(args))
        bank = store.get_bank(args.bank)
    say(f"removed {count:,} entries from {args.bank!r}: {when_served(bank)}")
    return 0 if count else 4
