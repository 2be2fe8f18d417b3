"""`indexer entries release ENTRY`: lift the flood guard's quarantine of an entry.

Why in the store and not on a server: every scan replica quarantines on its own evidence, so
the release is recorded once in the store and reaches each of them with the next revision,
like any entry change (README "Flood guard")."""

from __future__ import annotations

import argparse
from typing import Any

from indexer.commands.common import add_command, open_store, say


def register(verbs: Any) -> None:
    release = add_command(
        verbs, "release",
        "Release an entry the flood guard quarantined: its matches stand again on every "
        "server within about a second, and its rate at the release becomes its normal (the "
        "same flood does not quarantine it again). To stop matching it instead, disable it.",
        "indexer entries release 4711 --reason 'viral meme, confirmed: ticket 912'", _release)
    release.add_argument("entry", type=int, metavar="ENTRY", help="the entry's id")
    release.add_argument("--reason", help="why, kept with the release for the audit trail")


def _release(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        entry = store.get_entry(args.entry)
        released = store.release_entry(entry.id, args.reason)
    say(f"released entry {entry.id} of {entry.bank!r} (store revision {released.revision}): "
        "servers lift its quarantine within about a second")
    return 0
