"""`indexer entries list|show|export`: find entries, look at one, write a bank back out.

Why export writes only the columns `indexer import` reads (algorithm, hash, external_id,
metadata): an exported bank imported into another store (or the same one after a mistake) must
give back the same entries, not entries whose metadata gained `id` or `disabled` fields.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

from hashsvc.errors import HashsvcError
from hashsvc.hashing.algorithms import get_algorithm, parse_hash
from hashsvc.limits import LIMITS
from hashsvc.store import Entry, EntryQuery, Store, decode_page_token, encode_page_token
from indexer.commands import entries_feedback, entries_release
from indexer.commands.common import add_command, emit, open_store, say

EXPORT_COLUMNS = ("algorithm", "hash", "external_id", "metadata")


def register(subcommands: Any) -> None:
    group = subcommands.add_parser("entries", help="list, show, export and release entries")
    verbs = group.add_subparsers(title="entries commands", metavar="VERB", required=True)
    entries_release.register(verbs)

    listing = add_command(
        verbs, "list", "List entries by ascending id, one page at a time; filters combine.",
        "indexer entries list --bank ncmec --disabled --limit 20", _list)
    _filters(listing)
    listing.add_argument("--limit", type=int, default=100,
                         help=f"entries per page (1..{LIMITS.page_entries}, default 100)")
    listing.add_argument("--page-token", default="",
                         help="continue after the previous page (its token is printed on stderr)")
    listing.add_argument("--json", action="store_true", help="one JSON object per entry")

    show = add_command(verbs, "show", "Show one entry, with its metadata, as JSON.",
                       "indexer entries show 17", _show)
    show.add_argument("id", type=int)

    export = add_command(
        verbs, "export", "Write a bank's entries as a hash list that `indexer import` reads "
        "back: CSV or JSON lines, with algorithm, hash, external_id and metadata.",
        "indexer entries export ncmec --format csv -o ncmec.csv", _export)
    export.add_argument("bank")
    export.add_argument("--format", choices=("csv", "jsonl"), default="jsonl")
    export.add_argument("-o", "--output", type=Path, metavar="FILE",
                        help="write here (default: stdout)")
    _state_filter(export)
    entries_feedback.register(verbs)


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bank", action="append", dest="banks", default=[],
                        help="only this bank (repeatable; default: every bank)")
    parser.add_argument("--external-id")
    parser.add_argument("--hash", metavar="ALGO:HEX", help="only entries with this hash")
    parser.add_argument("--exchange", help="only entries this exchange supplied (e.g. ncmec)")
    parser.add_argument("--upstream-id", help="only the entry an exchange lists under this id")
    _state_filter(parser)


def _state_filter(parser: argparse.ArgumentParser) -> None:
    state = parser.add_mutually_exclusive_group()
    state.add_argument("--disabled", dest="disabled", action="store_const", const=True,
                       help="only disabled entries")
    state.add_argument("--enabled", dest="disabled", action="store_const", const=False,
                       help="only entries that are not disabled")


def _query(args: argparse.Namespace) -> EntryQuery:
    found = None
    if args.hash:
        algorithm, sep, value = args.hash.partition(":")
        if not sep:
            raise HashsvcError(f"invalid --hash {args.hash!r}: expected ALGORITHM:HEX")
        parsed = parse_hash(algorithm, value)
        found = (parsed.algorithm, parsed.value)
    return EntryQuery(banks=args.banks, external_id=args.external_id, hash=found,
                      disabled=args.disabled, exchange=args.exchange,
                      upstream_id=args.upstream_id,
                      after_id=decode_page_token(args.page_token), limit=args.limit)


def entry_to_dict(entry: Entry) -> dict[str, Any]:
    return {
        "id": entry.id, "bank": entry.bank, "algorithm": entry.algorithm,
        "hash": get_algorithm(entry.algorithm).format(entry.hash),
        "external_id": entry.external_id, "metadata": entry.metadata,
        "added_at": _when(entry.added_at),
        "disabled": entry.disabled, "disabled_reason": entry.disabled_reason,
        "variant": entry.variant,
    }


def _when(stamp: float) -> str:
    return dt.datetime.fromtimestamp(stamp, dt.UTC).isoformat(timespec="seconds")


def _list(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        page = store.list_entries(_query(args))
    for entry in page.entries:
        if args.json:
            emit(entry_to_dict(entry))
        else:
            state = f"disabled ({entry.disabled_reason or 'no reason'})" if entry.disabled else ""
            sys.stdout.write("\t".join((
                str(entry.id), entry.bank, entry.algorithm,
                get_algorithm(entry.algorithm).format(entry.hash), entry.external_id or "-",
                state)).rstrip("\t") + "\n")
    if page.next_after_id:
        say(f"more: --page-token {encode_page_token(page.next_after_id)}")
    elif not page.entries:
        say("no entries match")
    return 0


def _show(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        entry = store.get_entry(args.id)
        record = entry_to_dict(entry)
        record["provenance"] = [  # where an exchange-synced entry came from (exchange.py)
            {"exchange": p.exchange, "upstream_id": p.upstream_id, "tags": list(p.tags),
             "first_seen": _when(p.first_seen), "last_seen": _when(p.last_seen)}
            for p in store.entry_provenance(entry.id)]
        record["feedback"] = [  # analysts' verdicts (entries_feedback.py), oldest first
            {"id": f.id, "verdict": f.verdict, "reason": f.reason, "case_id": f.case_id,
             "given_by": f.given_by, "given_at": _when(f.given_at),
             "scanned_hash": f.scanned_hash or None, "upload_id": f.upload_id or None,
             "upstream": f.upstream or None}
            for f in store.entries_feedback([entry.id])]
    sys.stdout.write(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    return 0


def _pages(store: Store, query: EntryQuery) -> Iterator[Entry]:
    while True:
        page = store.list_entries(query)
        yield from page.entries
        if not page.next_after_id:
            return
        query = replace(query, after_id=page.next_after_id)


def _export(args: argparse.Namespace) -> int:
    query = EntryQuery(banks=[args.bank], disabled=args.disabled, limit=LIMITS.page_entries)
    written = skipped = 0
    with open_store(args) as store:
        store.get_bank(args.bank)
        out: IO[str] = (args.output.open("w", encoding="utf-8", newline="")
                        if args.output else sys.stdout)
        try:
            writer = csv.writer(out, lineterminator="\n") if args.format == "csv" else None
            if writer is not None:
                writer.writerow(EXPORT_COLUMNS)
            for entry in _pages(store, query):
                if entry.variant:  # derived from an image by a strategy: not a list's hash
                    skipped += 1
                    continue
                _write(out, writer, entry)
                written += 1
        finally:
            if args.output:
                out.close()
    extra = f" (left out {skipped:,} derived variant hashes)" if skipped else ""
    say(f"exported {written:,} entries from {args.bank!r}{extra}")
    return 0


def _write(out: IO[str], writer: Any, entry: Entry) -> None:
    hex_value = get_algorithm(entry.algorithm).format(entry.hash)
    metadata = json.dumps(entry.metadata, ensure_ascii=False) if entry.metadata else ""
    if writer is not None:
        writer.writerow((entry.algorithm, hex_value, entry.external_id or "", metadata))
        return
    record: dict[str, Any] = {"algorithm": entry.algorithm, "hash": hex_value}
    if entry.external_id is not None:
        record["external_id"] = entry.external_id
    if entry.metadata:
        record["metadata"] = entry.metadata
    out.write(json.dumps(record, ensure_ascii=False) + "\n")
