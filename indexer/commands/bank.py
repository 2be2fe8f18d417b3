"""`indexer bank create|list|update|delete`."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import Any

from hashsvc.errors import HashsvcError
from hashsvc.matching.strategies import WAYS, MatchStrategies, parse_crop_list, parse_margins
from hashsvc.store import BANK_KINDS, Bank, Store
from hashsvc.store.flood import DEFAULT_SETTINGS, FloodSettings
from indexer.commands.common import add_command, emit, open_store, say, when_served


def register(subcommands: Any) -> None:
    group = subcommands.add_parser("bank", help="create, list, update and delete banks")
    verbs = group.add_subparsers(title="bank commands", metavar="VERB", required=True)

    create = add_command(
        verbs, "create", "Create a bank of known hashes.",
        "indexer bank create ncmec --description 'NCMEC hash list' --tag csam "
        "--threshold pdq=31", _create,
    )
    create.add_argument("name")
    create.add_argument("--staged", action="store_true",
                        help="create it disabled: import and review its entries, which no "
                        "server matches until `indexer bank enable NAME`")
    _bank_fields(create)

    listing = add_command(verbs, "list", "List banks with entry counts.",
                          "indexer bank list --json", _list)
    listing.add_argument("--json", action="store_true", help="one JSON object per bank")

    update = add_command(
        verbs, "update", "Change a bank's fields (only those given).",
        "indexer bank update ncmec --threshold pdq=24 --disable", _update,
    )
    update.add_argument("name")
    update.add_argument("--rename", metavar="NEW_NAME")
    _bank_fields(update)
    state = update.add_mutually_exclusive_group()
    state.add_argument("--enable", dest="enabled", action="store_const", const=True)
    state.add_argument("--disable", dest="enabled", action="store_const", const=False,
                       help="keep the bank but stop serving it (as `bank disable`)")

    enable = add_command(
        verbs, "enable", "Put a bank live: running servers match its entries within about a "
        "second (no publish needed).", "indexer bank enable ncmec-2026-12", _enable)
    enable.add_argument("name")
    disable = add_command(
        verbs, "disable", "Take a bank out of service (its entries stay in the store): running "
        "servers stop matching it within about a second.", "indexer bank disable old-list",
        _disable)
    disable.add_argument("name")

    delete = add_command(verbs, "delete", "Delete a bank and all its entries.",
                         "indexer bank delete old-list --yes", _delete)
    delete.add_argument("name")
    delete.add_argument("--yes", action="store_true", help="required: deleting cannot be undone")


def _bank_fields(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--description")
    parser.add_argument("--kind", choices=BANK_KINDS,
                        help="match (report hits) or allowlist (suppress hits); default match")
    parser.add_argument("--tag", action="append", dest="tags", metavar="TAG",
                        help="label reported with every match (repeatable)")
    parser.add_argument("--threshold", action="append", dest="thresholds", metavar="ALGO=BITS",
                        help="per-algorithm distance threshold override (repeatable)")
    flood = parser.add_argument_group(
        "flood guard", "when an entry matching far more uploads than its own history is "
        "quarantined (README: Flood guard); live within about a second")
    flood.add_argument("--flood-min-matches", type=int, metavar="N",
                       help="matches of one entry in a server's flood window (default "
                       f"{DEFAULT_SETTINGS.min_matches}); 0 turns the guard off for this bank")
    flood.add_argument("--flood-factor", type=float, metavar="X",
                       help="... and at least X times its own rate before the window "
                       f"(default {DEFAULT_SETTINGS.factor:g})")
    strategies = parser.add_argument_group(
        "matching strategies", "how hard to look for altered copies (README: Detection quality)")
    strategies.add_argument("--dihedral", action=argparse.BooleanOptionalAction, default=None,
                            help="match rotated and mirrored copies (default on)")
    strategies.add_argument("--trim-borders", action=argparse.BooleanOptionalAction,
                            default=None, help="match copies with added borders or letterbox "
                            "bars; images added from files also store their trimmed hash")
    strategies.add_argument("--crop-variants", metavar="PERCENTS",
                            help="for images added from files, also store the PDQ of centred "
                            "crops removing these %% per side: 'default' (2,4,6,8,10), a list "
                            "such as 3,6,9, or 'none'")
    strategies.add_argument("--rotation-variants", metavar="DEGREES",
                            help="for images added from files, also store the PDQ of the image "
                            "turned this many degrees each way: a list such as 3,4, or 'none'")
    strategies.add_argument("--corner-crops", metavar="PERCENTS",
                            help="for images added from files, also store the PDQ of crops "
                            "cutting N%% from two adjacent sides, one per corner: a list such "
                            "as 4,10, or 'none'")
    strategies.add_argument("--variant-margin", type=int, metavar="BITS",
                            help="matches through a strategy (rotated or trimmed upload, stored "
                            "variant) must be this many bits inside the threshold (default 0); "
                            "the margin of every way --margin does not name")
    strategies.add_argument("--margin", action="append", dest="margins", metavar="WAY=BITS",
                            help="margin for one way of matching (repeatable): "
                            + ", ".join(WAYS) + "; e.g. --margin dihedral=0 --margin crop=12")


def _strategies(args: argparse.Namespace, current: MatchStrategies) -> MatchStrategies | None:
    """The bank's strategies with the flags given applied; None if no flag was given."""
    if (args.dihedral is None and args.trim_borders is None and args.crop_variants is None
            and args.variant_margin is None and args.margins is None
            and args.rotation_variants is None and args.corner_crops is None):
        return None
    return MatchStrategies(
        dihedral=current.dihedral if args.dihedral is None else args.dihedral,
        trim_borders=current.trim_borders if args.trim_borders is None else args.trim_borders,
        crop_variants=(current.crop_variants if args.crop_variants is None
                       else parse_crop_list(args.crop_variants)),
        rotation_variants=(current.rotation_variants if args.rotation_variants is None
                           else parse_crop_list(args.rotation_variants, (), "rotation variants",
                                                "degrees")),
        corner_crops=(current.corner_crops if args.corner_crops is None
                      else parse_crop_list(args.corner_crops, (), "corner crops")),
        variant_margin=(current.variant_margin if args.variant_margin is None
                        else args.variant_margin),
        margins=tuple({**dict(current.margins), **parse_margins(args.margins or [])}.items()),
    )


def _flood_settings(args: argparse.Namespace, bank: str,
                    current: FloodSettings = DEFAULT_SETTINGS) -> FloodSettings | None:
    """`current` with the flood-guard flags given applied (checked); None if none was."""
    if args.flood_min_matches is None and args.flood_factor is None:
        return None
    return FloodSettings(
        current.min_matches if args.flood_min_matches is None else args.flood_min_matches,
        current.factor if args.flood_factor is None else args.flood_factor).checked(bank)


def _set_flood_guard(store: Store, bank: str, args: argparse.Namespace) -> str:
    """Store the flood-guard flags given (the others keep their value); what was set, or ""."""
    settings = _flood_settings(args, bank,
                               store.flood_guard_settings().get(bank, DEFAULT_SETTINGS))
    if settings is None:
        return ""
    store.set_flood_guard(bank, settings)
    if not settings.enabled:
        return "flood guard off (live within about a second)"
    return (f"flood guard: {settings.min_matches} matches and {settings.factor:g}x the entry's "
            "own rate (live within about a second)")


def _thresholds(values: list[str] | None) -> dict[str, int] | None:
    if values is None:
        return None
    result: dict[str, int] = {}
    for value in values:
        name, sep, bits = value.partition("=")
        if not sep or not bits.strip().isdigit():
            raise HashsvcError(
                f"invalid --threshold {value!r}: expected ALGORITHM=BITS, e.g. pdq=31"
            )
        result[name.strip()] = int(bits)
    return result


def _create(args: argparse.Namespace) -> int:
    _flood_settings(args, args.name)  # refused before the bank is created, not after
    with open_store(args, create=True) as store:
        bank = store.create_bank(
            args.name, description=args.description or "", kind=args.kind or "match",
            tags=args.tags or (), thresholds=_thresholds(args.thresholds),
            strategies=_strategies(args, MatchStrategies()), enabled=not args.staged,
        )
        _set_flood_guard(store, bank.name, args)
    say(f"created {bank.kind} bank {bank.name!r} ({bank.strategies.describe()})"
        + (f"; {when_served(bank)}" if args.staged else ""))
    return 0


def _enable(args: argparse.Namespace) -> int:
    return _set_enabled(args.name, args, True)


def _disable(args: argparse.Namespace) -> int:
    return _set_enabled(args.name, args, False)


def _set_enabled(name: str, args: argparse.Namespace, enabled: bool) -> int:
    with open_store(args) as store:
        bank = store.update_bank(name, enabled=enabled)
    say(f"{'enabled' if enabled else 'disabled'} bank {name!r} ({bank.entry_count:,} entries): "
        f"{when_served(bank)}")
    return 0


def _list(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        banks = store.list_banks()
    if args.json:
        for bank in banks:
            emit(bank_to_dict(bank))
        return 0
    if not banks:
        say("no banks yet: create one with `indexer bank create NAME`")
        return 0
    rows = [("NAME", "KIND", "ENABLED", "ENTRIES", "TAGS / THRESHOLDS / STRATEGIES")]
    for bank in banks:
        parts = [",".join(bank.tags),
                 " ".join(f"{k}={v}" for k, v in sorted(bank.thresholds.items())),
                 f"[{bank.strategies.describe()}]"]
        rows.append((bank.name, bank.kind, "yes" if bank.enabled else "no",
                     f"{bank.entry_count:,}", " ".join(part for part in parts if part)))
    # Columns as wide as their widest cell: names are up to 64 characters.
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    for name, kind, enabled, entries, details in rows:
        print(f"{name:{widths[0]}}  {kind:{widths[1]}}  {enabled:{widths[2]}}  "
              f"{entries:>{widths[3]}}  {details}")
    return 0


def _update(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        bank = store.update_bank(
            args.name, new_name=args.rename, description=args.description, kind=args.kind,
            enabled=args.enabled, tags=args.tags, thresholds=_thresholds(args.thresholds),
            strategies=_strategies(args, store.get_bank(args.name).strategies),
        )
        flood = _set_flood_guard(store, bank.name, args)
    settings = [args.rename, args.description, args.kind, args.tags, args.thresholds]
    later = any(v is not None for v in settings) or _strategies(args, bank.strategies) is not None
    say(f"updated bank {bank.name!r} ({bank.strategies.describe()})"
        + (f"; {flood}" if flood else "")
        + (f"; {when_served(bank)}" if args.enabled is not None else "")
        + ("; name, kind, tags, thresholds and strategies apply from the next `indexer publish`"
           if later else ""))
    return 0


def _delete(args: argparse.Namespace) -> int:
    if not args.yes:
        raise HashsvcError(f"deleting bank {args.name!r} removes all its entries: add --yes")
    with open_store(args) as store:
        removed = store.delete_bank(args.name)
    say(f"deleted bank {args.name!r} and its {removed:,} entries")
    return 0


def bank_to_dict(bank: Bank) -> dict[str, Any]:
    return {
        "name": bank.name, "kind": bank.kind, "enabled": bank.enabled,
        "description": bank.description, "tags": list(bank.tags),
        "thresholds": bank.thresholds, "entries": bank.entry_count,
        "strategies": json.loads(bank.strategies.to_json()),
        "created_at": _iso(bank.created_at), "updated_at": _iso(bank.updated_at),
    }


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="seconds")
