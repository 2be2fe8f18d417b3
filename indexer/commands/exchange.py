"""`indexer exchange bind|sync|status`: banks fed by an exchange, synced incrementally."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from typing import Any

from tqdm import tqdm

from hashsvc.errors import HashsvcError, NotFoundError
from hashsvc.store import Store
from hashsvc.store.exchange_model import (
    SCHEDULE_KEY,
    Credentials,
    ExchangeBinding,
    SyncHealth,
)
from indexer.commands.common import (
    add_command,
    emit,
    open_store,
    say,
    show_progress,
    when_served,
)
from indexer.exchanges import EXCHANGES
from indexer.exchanges.sync import SyncResult, sync_bank
from indexer.hashlists import FORMATS, parse_column_map


def register(subcommands: Any) -> None:
    group = subcommands.add_parser("exchange", help="bind banks to exchanges and sync them")
    verbs = group.add_subparsers(title="exchange commands", metavar="VERB", required=True)

    bind = add_command(
        verbs, "bind", "Bind an existing bank to an exchange: `file` (a hash list at a local "
        "path), `url` (an https:// or s3:// URL), read again at every sync, or an exchange's "
        "API (needs the [exchanges] extra): `ncmec` (USER:PASSWORD), `stopncii` "
        "(FETCH_KEY,SUBSCRIPTION_KEY[,FEEDBACK_KEY]), `tat` (USERNAME:PASSWORD), "
        "`fb_threatexchange` (a ThreatExchange privacy group, e.g. GIFCT's; an app token "
        "APP_ID|SECRET). Only where the "
        "credentials are (an environment variable's name or a file's path) is stored, never "
        "the credentials. Binding again with the same source keeps the checkpoint.",
        "indexer exchange bind tat --type url --source https://example.org/tat.csv "
        "--credentials-env TAT_TOKEN", _bind)
    bind.add_argument("bank")
    bind.add_argument("--type", required=True, choices=sorted(EXCHANGES), dest="exchange")
    bind.add_argument("--source", metavar="PATH_OR_URL", help="file/url: the hash list")
    bind.add_argument("--environment", help="ncmec: which NCMEC API (default Industry)")
    bind.add_argument("--base-url", metavar="URL",
                      help="ncmec, stopncii, tat, fb_threatexchange: another address for "
                           "that API (a stand-in for tests)")
    bind.add_argument("--privacy-group", type=int, metavar="ID",
                      help="fb_threatexchange: the ThreatExchange privacy group's id")
    bind.add_argument("--s3-endpoint-url", metavar="URL",
                      help="url with s3://: an S3-compatible endpoint (default "
                           "$HASHSVC_S3_ENDPOINT_URL, then $AWS_ENDPOINT_URL, else AWS S3)")
    bind.add_argument("--format", choices=FORMATS, help="default: from the extension")
    bind.add_argument("--algorithm", help="for lists without an algorithm column")
    bind.add_argument("--columns", metavar="FIELD=COLUMN,...",
                      help="the list's column names, e.g. hash=MD5,external_id=ID")
    bind.add_argument("--page-size", type=int,
                      help="entries applied per store transaction (default 10000)")
    bind.add_argument("--alert-after", type=float, metavar="HOURS",
                      help="how long the bank may go without a successful sync before "
                           "`exchange status` calls it stale and HashsvcExchangeSyncStale "
                           "fires (default 24; kept when binding again)")
    bind.add_argument("--every", metavar="DURATION",
                      help="how often the admin service syncs the bank on its own, e.g. 15m, "
                           "6h, 1d or seconds (default: the server's --exchange-sync-every; "
                           "`off`: never on a schedule; kept when binding again without it; "
                           "changing it keeps the checkpoint)")
    secret = bind.add_mutually_exclusive_group()
    secret.add_argument("--credentials-env", metavar="VAR",
                        help="environment variable holding the exchange's token")
    secret.add_argument("--credentials-file", metavar="PATH",
                        help="file holding the exchange's token")

    sync = add_command(
        verbs, "sync", "Apply what changed upstream since the bank's checkpoint, page by page; "
        "each page lands with its checkpoint in one transaction, so an interrupted sync "
        "resumes where it stopped. Without BANK: every bound bank.",
        "indexer exchange sync tat", _sync)
    sync.add_argument("bank", nargs="?")

    status = add_command(
        verbs, "status", "Show bound banks, their exchange, checkpoint and how their syncs "
        "went: last success, last error, counts since binding, and `stale` when no sync has "
        "succeeded for longer than the bank's --alert-after (the condition the "
        "HashsvcExchangeSyncStale alert watches); and its feedback outbox: verdicts pending, "
        "sent, failed send attempts and the last error.", "indexer exchange status", _status)
    status.add_argument("bank", nargs="?")


def _bind(args: argparse.Namespace) -> int:
    config: dict[str, Any] = {}
    if args.exchange in ("file", "url"):
        if not args.source:
            raise HashsvcError(f"--type {args.exchange} needs --source")
        if args.exchange == "url" and "://" not in args.source:
            raise HashsvcError(f"--type url needs a URL, got {args.source!r}")
        if args.exchange == "file" and "://" in args.source:
            raise HashsvcError("--type file takes a local path; use --type url for a URL")
        config["source"] = args.source
        for key in ("format", "algorithm", "page_size", "s3_endpoint_url"):
            if getattr(args, key) is not None:
                config[key] = getattr(args, key)
        if args.columns:
            config["columns"] = parse_column_map(args.columns)
    else:
        for key in ("environment", "base_url", "privacy_group"):
            if getattr(args, key) is not None:
                config[key] = getattr(args, key)
    if args.alert_after is not None and not args.alert_after > 0:
        raise HashsvcError(f"--alert-after must be a positive number of hours, "
                           f"got {args.alert_after:g}")
    if args.every is not None:
        config[SCHEDULE_KEY] = parse_every(args.every)
    credentials = (Credentials("env", args.credentials_env) if args.credentials_env else
                   Credentials("file", args.credentials_file) if args.credentials_file else None)
    # the exchange's own checks (a password in a URL, an unknown environment), before storing
    EXCHANGES[args.exchange]({k: v for k, v in config.items() if k != SCHEDULE_KEY},
                             credentials)
    with open_store(args) as store:
        if args.every is None:
            config.update(_kept_schedule(store, args.bank))
        binding = store.bind_exchange(args.bank, args.exchange, config, credentials)
        if args.alert_after is not None:
            store.set_exchange_alert_after(args.bank, args.alert_after * 3600)
    resumed = " (checkpoint kept)" if binding.checkpoint else ""
    say(f"bank {binding.bank!r} bound to the {binding.exchange} exchange{resumed}; "
        f"`indexer exchange sync {binding.bank}` fetches it")
    emit(_record(binding))
    return 0


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_every(text: str) -> float:
    """`--every`: seconds, or a number with s, m, h or d; `off` (0) takes the bank off the
    schedule, even when the server has a default."""
    value = text.strip().lower()
    if value in ("off", "0"):
        return 0.0
    unit = _UNITS.get(value[-1:], 0)
    try:
        seconds = float(value[:-1] if unit else value) * (unit or 1)
    except ValueError:
        seconds = -1.0
    if not seconds > 0 or seconds == float("inf"):
        raise HashsvcError(f"--every must be a duration such as 90s, 15m, 6h or 1d (or off), "
                           f"got {text!r}")
    return seconds


def _kept_schedule(store: Store, bank: str) -> dict[str, Any]:
    """A re-bind without --every keeps the schedule the bank had."""
    try:
        [binding] = store.exchange_bindings(bank)
    except NotFoundError:
        return {}
    return {k: v for k, v in binding.config.items() if k == SCHEDULE_KEY}


def _sync(args: argparse.Namespace) -> int:
    """One bank: its error is the command's. Every bank: a failing one is reported and the
    others still sync (one exchange being down must not hold the rest back); exit 1 if any
    failed."""
    with open_store(args) as store:
        if args.bank:
            _sync_one(store, args.bank)
            return 0
        banks = [b.bank for b in store.exchange_bindings()]
        if not banks:
            raise HashsvcError("no bank is bound to an exchange (`indexer exchange bind`)")
        failed = 0
        for bank in banks:
            try:
                _sync_one(store, bank)
            except HashsvcError as err:
                failed += 1
                say(f"{bank}: sync failed: {err.message}")
                emit({"bank": bank, "error": err.message})
    return 1 if failed else 0


def _sync_one(store: Store, bank: str) -> None:
    """A progress bar on a terminal (pages, and what they changed so far); a line per page
    otherwise, for logs."""
    with tqdm(desc=bank, unit=" pages", disable=not show_progress(), leave=False) as bar:
        def progress(result: SyncResult) -> None:
            t = result.totals
            if bar.disable:
                say(f"  {bank}: page {result.pages} applied ({t.added:,} added, "
                    f"{t.deleted:,} deleted so far)")
            bar.set_postfix(added=t.added, updated=t.updated, deleted=t.deleted, refresh=False)
            bar.update(1)

        result = sync_bank(store, bank, on_page=progress)
    totals = result.totals
    say(f"{bank}: {result.pages} page(s) from {result.exchange}: {totals.added:,} added, "
        f"{totals.updated:,} updated, {totals.deleted:,} deleted, {totals.unchanged:,} "
        "unchanged; " + (when_served(store.get_bank(bank)) if result.pages else "nothing new"))
    emit({"bank": bank, "exchange": result.exchange, "pages": result.pages,
          "added": totals.added, "updated": totals.updated, "deleted": totals.deleted,
          "unchanged": totals.unchanged, "feedback_sent": result.feedback_sent,
          "feedback_failed": result.feedback_failed})
    if result.feedback_failed:
        say(f"{bank}: {result.feedback_failed} verdict(s) not sent to {result.exchange}, kept "
            "for the next sync (`indexer exchange status` shows the error)")


def _status(args: argparse.Namespace) -> int:
    now = time.time()
    with open_store(args) as store:
        health = {h.bank: h for h in store.exchange_health(args.bank)}
        for binding in store.exchange_bindings(args.bank):
            bank = health[binding.bank]
            if bank.stale(now):
                say(f"{bank.bank}: no successful sync for {_hours(bank.without_success(now))}"
                    f" (alert after {_hours(bank.alert_after)})"
                    + (f"; last error: {bank.last_error}" if bank.last_error else ""))
            outbox = store.feedback_outbox_health(binding.bank)
            emit(_record(binding) | _health_record(bank, now) | {"feedback": {
                "pending": outbox.pending, "sent": outbox.sent,
                "failed_attempts": outbox.failed_attempts, "last_error": outbox.last_error,
                "last_error_at": _when(outbox.last_error_at)}})
    return 0


def _health_record(health: SyncHealth, now: float) -> dict[str, Any]:
    return {
        "last_success": _when(health.last_success), "last_error": health.last_error,
        "last_error_at": _when(health.last_error_at), "errors": health.errors,
        "entries": {"fetched": health.fetched, "added": health.added,
                    "updated": health.updated, "deleted": health.deleted},
        "alert_after_hours": health.alert_after / 3600, "stale": health.stale(now),
    }


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h"


def _record(binding: ExchangeBinding) -> dict[str, Any]:
    """What status shows: the credentials' location, never their value."""
    credentials = binding.credentials
    return {
        "bank": binding.bank, "exchange": binding.exchange, "config": binding.config,
        "credentials": (f"{credentials.source}:{credentials.name}" if credentials else None),
        "checkpoint": _checkpoint(binding.checkpoint),
        "last_synced": _when(binding.synced_at),
    }


def _checkpoint(text: str | None) -> Any:
    """A connector's checkpoint, shown as JSON where it is JSON (the file exchange's is)."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _when(stamp: float | None) -> str | None:
    return None if stamp is None else dt.datetime.fromtimestamp(stamp, dt.UTC).isoformat(
        timespec="seconds")
