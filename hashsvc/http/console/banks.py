"""The console's "Banks" page: list with entry counts and strategies, create, edit thresholds
and strategies, enable/disable, and import a hash list (hashlist_upload.py).

Every action is one AdminService call with the analyst's key (CreateBank, UpdateBank with a
field mask naming only what the form changes, AddEntries); a refusal is shown on the page with
the HTTP status of its gRPC status, and nothing is changed.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from google.protobuf.field_mask_pb2 import FieldMask
from hashsvc_client.v1 import admin_pb2, types_pb2
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from hashsvc.http.console import hashlist_upload
from hashsvc.http.console.context import PREFIX, Console, describe
from hashsvc.http.console.numbers import INT32_MAX, whole_number
from hashsvc.http.gateway import GatewayError

PERCEPTUAL = ("pdq", "phash", "dhash")  # the algorithms with a threshold
KINDS = {"match": types_pb2.BANK_KIND_MATCH, "allowlist": types_pb2.BANK_KIND_ALLOWLIST}
KIND_NAMES = {value: name for name, value in KINDS.items()}


class FormError(Exception):
    """A field the analyst filled in wrongly: shown on the form, with 422."""


def routes(ctx: Console) -> list[BaseRoute]:
    async def banks(request: Request, *, status: int = 200, error: str = "",
                    form: dict[str, str] | None = None) -> Response:
        listed = await _list(ctx, request)
        return ctx.render(request, "banks/list.html", status=status, title="Banks",
                          banks=[_view(b) for b in listed], error=error, form=form or {},
                          kinds=KINDS, perceptual=PERCEPTUAL)

    async def create(request: Request) -> Response:
        form = _fields(await ctx.form(request))
        try:
            bank = types_pb2.Bank(
                name=form.get("name", "").strip(), description=form.get("description", ""),
                kind=_kind(form.get("kind", "match")),
                tags=_tags(form.get("tags", "")), thresholds=_thresholds(form),
                strategies=_strategies(form, types_pb2.MatchStrategies()))
        except FormError as err:
            return await banks(request, status=422, error=str(err), form=form)
        try:
            created = await ctx.call(request, "admin", "CreateBank",
                                     admin_pb2.CreateBankRequest(bank=bank),
                                     admin_pb2.CreateBankResponse)
        except GatewayError as err:
            status, message = describe(err)
            return await banks(request, status=status, error=message, form=form)
        name = created.bank.name  # type: ignore[attr-defined]
        return ctx.redirect(request, _bank_path(name), flash=f"Bank {name} created.")

    async def detail(request: Request, *, status: int = 200, error: str = "") -> Response:
        name = request.path_params["name"]
        bank = next((b for b in await _list(ctx, request) if b.name == name), None)
        if bank is None:
            return ctx.render(request, "error.html", status=404, title="No such bank",
                              error=f"There is no bank named {name!r}.", back=f"{PREFIX}/banks")
        return ctx.render(request, "banks/detail.html", status=status, title=f"Bank {name}",
                          bank=_view(bank), error=error, perceptual=PERCEPTUAL,
                          formats=hashlist_upload.FORMATS,
                          algorithms=hashlist_upload.ALGORITHMS)

    async def update(request: Request) -> Response:
        name = request.path_params["name"]
        form = _fields(await ctx.form(request))
        current = next((b for b in await _list(ctx, request, counts=False)
                        if b.name == name), None)
        if current is None:
            return await detail(request)
        try:
            bank = types_pb2.Bank(description=form.get("description", ""),
                                  tags=_tags(form.get("tags", "")), thresholds=_thresholds(form),
                                  strategies=_strategies(form, current.strategies))
        except FormError as err:
            return await detail(request, status=422, error=str(err))
        changed = [field for field in ("description", "tags", "thresholds", "strategies")
                   if _differs(field, bank, current)]
        if not changed:
            return ctx.redirect(request, _bank_path(name), flash="Nothing to change.")
        try:
            await _update(ctx, request, name, bank, changed)
        except GatewayError as err:
            status, message = describe(err)
            return await detail(request, status=status, error=message)
        return ctx.redirect(request, _bank_path(name),
                            flash=f"Bank {name} updated: {', '.join(changed)}.")

    async def set_enabled(request: Request) -> Response:
        name = request.path_params["name"]
        form = _fields(await ctx.form(request))
        if form.get("enabled") not in ("true", "false"):  # a crafted post: change nothing
            return await detail(request, status=422, error="Say whether to enable the bank: "
                                "enabled=true or enabled=false.")
        enabled = form["enabled"] == "true"
        try:
            await _update(ctx, request, name, types_pb2.Bank(enabled=enabled), ["enabled"])
        except GatewayError as err:
            status, message = describe(err)
            return await detail(request, status=status, error=message)
        back = form.get("back") == "list"
        return ctx.redirect(request, f"{PREFIX}/banks" if back else _bank_path(name),
                            flash=f"Bank {name} {'enabled' if enabled else 'disabled'}.")

    async def import_list(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            upload = await hashlist_upload.read(await ctx.form(request))
        except hashlist_upload.UploadError as err:
            return await detail(request, status=err.status, error=str(err))
        try:
            added = await ctx.stream(request, "admin", "AddEntries", upload.requests(name),
                                     admin_pb2.AddEntriesResponse)
        except GatewayError as err:
            status, message = describe(err)
            return await detail(request, status=status, error=message)
        return ctx.redirect(
            request, _bank_path(name),
            flash=f"Imported {upload.filename} into {name}: "
                  f"{added.added:,} added, "  # type: ignore[attr-defined]
                  f"{added.duplicates:,} already there.")  # type: ignore[attr-defined]

    return [
        Route("/banks", ctx.page(banks), methods=["GET"]),
        Route("/banks", ctx.page(create), methods=["POST"]),
        Route("/banks/{name}", ctx.page(detail), methods=["GET"]),
        Route("/banks/{name}/settings", ctx.page(update), methods=["POST"]),
        Route("/banks/{name}/enabled", ctx.page(set_enabled), methods=["POST"]),
        Route("/banks/{name}/import", ctx.page(import_list), methods=["POST"]),
    ]


async def _list(ctx: Console, request: Request, *,
                counts: bool = True) -> list[types_pb2.Bank]:
    """Every bank the key may see; `counts`: with entries counted (a pass over them, so only
    for the pages that show the counts)."""
    answer = await ctx.call(request, "admin", "ListBanks",
                            admin_pb2.ListBanksRequest(entry_counts=counts),
                            admin_pb2.ListBanksResponse)
    return list(answer.banks)  # type: ignore[attr-defined]


async def _update(ctx: Console, request: Request, name: str, bank: types_pb2.Bank,
                  fields: list[str]) -> None:
    await ctx.call(request, "admin", "UpdateBank",
                   admin_pb2.UpdateBankRequest(name=name, bank=bank,
                                               update_mask=FieldMask(paths=fields)),
                   admin_pb2.UpdateBankResponse)


def _bank_path(name: str) -> str:
    return f"{PREFIX}/banks/{urllib.parse.quote(name, safe='')}"


def _fields(form: Any) -> dict[str, str]:
    return {k: v for k, v in form.multi_items() if isinstance(v, str)}


def _tags(text: str) -> list[str]:
    return [tag.strip() for tag in text.split(",") if tag.strip()]


def _kind(text: str) -> types_pb2.BankKind.ValueType:
    """The chosen kind; anything else (only a crafted post sends it) is refused, rather than
    made the server's default kind."""
    if text not in KINDS:
        raise FormError(f"Unknown bank kind {text[:20]!r}: one of {', '.join(KINDS)}.")
    return KINDS[text]


def _thresholds(form: dict[str, str]) -> dict[str, int]:
    """The per-algorithm overrides filled in (blank: the algorithm's default)."""
    thresholds: dict[str, int] = {}
    for algorithm in PERCEPTUAL:
        text = form.get(f"threshold_{algorithm}", "").strip()
        if text:
            value = whole_number(text, INT32_MAX)
            if value is None:
                raise FormError(f"The {algorithm} threshold must be a whole number of bits, "
                                f"or blank for the default (got {text[:20]!r}).")
            thresholds[algorithm] = value
    return thresholds


def _numbers(form: dict[str, str], field: str, label: str) -> list[int]:
    numbers = [whole_number(item, INT32_MAX) for item in
               form.get(field, "").replace(",", " ").split()]
    if None in numbers:
        raise FormError(f"{label} must be whole numbers separated by commas.")
    return [number for number in numbers if number is not None]


def _strategies(form: dict[str, str],
                current: types_pb2.MatchStrategies) -> types_pb2.MatchStrategies:
    """The form's strategies over `current` (what the form does not show, e.g. per-way margins,
    is kept as it is)."""
    margin = whole_number(form.get("variant_margin", "").strip() or "0", INT32_MAX)
    if margin is None:
        raise FormError("The variant margin must be a whole number of bits.")
    strategies = types_pb2.MatchStrategies()
    strategies.CopyFrom(current)
    strategies.no_dihedral = form.get("dihedral") != "on"
    strategies.trim_borders = form.get("trim_borders") == "on"
    strategies.variant_margin = margin
    for field, label in (("crop_variants", "Crop variants"),
                         ("rotation_variants", "Rotation variants"),
                         ("corner_crops", "Corner crops")):
        del getattr(strategies, field)[:]
        getattr(strategies, field).extend(_numbers(form, field, label))
    return strategies


def _differs(field: str, new: types_pb2.Bank, current: types_pb2.Bank) -> bool:
    if field in ("tags",):
        return list(new.tags) != list(current.tags)
    if field == "thresholds":
        return dict(new.thresholds) != dict(current.thresholds)
    return bool(getattr(new, field) != getattr(current, field))


def _view(bank: types_pb2.Bank) -> dict[str, Any]:
    """A bank as the templates show it."""
    strategies = bank.strategies
    ways = ["rotated and mirrored copies"] if not strategies.no_dihedral else []
    if strategies.trim_borders:
        ways.append("borders trimmed")
    for label, values in (("crops", strategies.crop_variants),
                          ("rotations", strategies.rotation_variants),
                          ("corner crops", strategies.corner_crops)):
        if values:
            ways.append(f"{label} {', '.join(str(v) for v in values)}")
    counts = sorted((algorithm, c.enabled, c.disabled)
                    for algorithm, c in bank.entry_counts.items())
    return {
        "name": bank.name, "path": _bank_path(bank.name), "description": bank.description,
        "kind": KIND_NAMES.get(bank.kind, "match"), "enabled": bank.enabled,
        "tags": list(bank.tags), "thresholds": dict(sorted(bank.thresholds.items())),
        "entry_count": bank.entry_count, "counts": counts,
        "strategies": ways or ["exact copies only"],
        "dihedral": not strategies.no_dihedral, "trim_borders": strategies.trim_borders,
        "variant_margin": strategies.variant_margin,
        "crop_variants": ", ".join(str(v) for v in strategies.crop_variants),
        "rotation_variants": ", ".join(str(v) for v in strategies.rotation_variants),
        "corner_crops": ", ".join(str(v) for v in strategies.corner_crops),
    }
