"""The console's "Check an image" page: upload a file, see its hashes (HashImage) and every
match (ScanImage) with how it matched.

The image lives only in this request's memory: the form parser holds uploads in memory
(context.py), the bytes go to the two calls and are dropped with the request. Nothing here logs
or stores them; the scan's audit record, as for any scan, holds hashes and ids only.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from hashsvc_client.v1 import scan_pb2, types_pb2
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from hashsvc.http.console.context import Console
from hashsvc.http.gateway import GatewayError

TEMPLATE = "check/page.html"
# How the upload had to be turned or mirrored to match (types.proto: counter-clockwise).
TRANSFORMS = {
    types_pb2.TRANSFORM_UNSPECIFIED: "as uploaded", types_pb2.TRANSFORM_IDENTITY: "as uploaded",
    types_pb2.TRANSFORM_ROTATE_90: "rotated 90° counter-clockwise to match",
    types_pb2.TRANSFORM_ROTATE_180: "rotated 180° to match",
    types_pb2.TRANSFORM_ROTATE_270: "rotated 270° counter-clockwise to match",
    types_pb2.TRANSFORM_FLIP_X: "mirrored left-right to match",
    types_pb2.TRANSFORM_FLIP_Y: "mirrored top-bottom to match",
    types_pb2.TRANSFORM_FLIP_PLUS_1: "transposed to match",
    types_pb2.TRANSFORM_FLIP_MINUS_1: "mirrored across the anti-diagonal to match",
}


@dataclass(frozen=True)
class HashRow:
    algorithm: str
    hex: str
    quality: str


@dataclass(frozen=True)
class MatchRow:
    outcome: str  # "match", "quarantined", "suppressed by an allowlist", "allowlist hit"
    bank: str
    entry_id: int
    external_id: str
    algorithm: str
    distance: int
    threshold: int
    transform: str
    trimmed: bool
    variant: str
    probability: str


def routes(ctx: Console) -> list[BaseRoute]:
    async def form(request: Request) -> Response:
        return ctx.render(request, TEMPLATE, title="Check an image")

    async def check(request: Request) -> Response:
        upload = (await ctx.form(request)).get("image")
        image = await upload.read() if isinstance(upload, UploadFile) else b""
        if not image:
            return ctx.render(request, TEMPLATE, status=422, title="Check an image",
                              error="Choose an image file to check (the upload was empty).")
        limit = ctx.config.max_image_bytes
        if len(image) > limit:
            return ctx.render(request, TEMPLATE, status=413, title="Check an image",
                              error=f"The image is {len(image):,} bytes, over this server's "
                                    f"limit of {limit:,} bytes (--max-image-bytes).")
        try:
            hashed = await ctx.call(request, "scan", "HashImage",
                                    scan_pb2.HashImageRequest(image=image),
                                    scan_pb2.HashImageResponse)
            scanned = await ctx.call(request, "scan", "ScanImage",
                                     scan_pb2.ScanImageRequest(image=image),
                                     scan_pb2.ScanImageResponse)
        except GatewayError as err:
            if err.code == grpc.StatusCode.UNIMPLEMENTED:
                return ctx.render(request, TEMPLATE, status=501, title="Check an image",
                                  error="This server does not scan (it runs --role admin): "
                                        "check images on a server with --role all.")
            if err.code == grpc.StatusCode.INVALID_ARGUMENT:
                err = GatewayError(err.code, f"The file {_filename(upload)} could not be checked: "
                                   f"{err.details}")
            return ctx.gateway_error(request, err, template=TEMPLATE, title="Check an image")
        assert isinstance(hashed, scan_pb2.HashImageResponse)
        assert isinstance(scanned, scan_pb2.ScanImageResponse)
        result = scanned.result
        rows = ([_match("match" if m.status != types_pb2.MATCH_STATUS_QUARANTINED
                        else "quarantined", m) for m in result.matches]
                + [_match("suppressed by an allowlist", m) for m in result.suppressed]
                + [_match("allowlist hit", m) for m in result.allowlisted])
        return ctx.render(request, TEMPLATE, title="Check an image", checked=True,
                          filename=_filename(upload), hashes=[_hash(h) for h in hashed.hashes],
                          matches=rows, matched=result.matched,
                          snapshot=result.snapshot_version)

    return [Route("/check", ctx.page(form), methods=["GET"]),
            Route("/check", ctx.page(check), methods=["POST"])]


def _hash(computed: types_pb2.ComputedHash) -> HashRow:
    quality = ""
    if computed.HasField("quality"):
        quality = f"{computed.quality}" + (" (below the floor: not matched)"
                                           if computed.low_quality else "")
    return HashRow(_algorithm(computed.algorithm), computed.hex, quality)


def _match(outcome: str, match: types_pb2.Match) -> MatchRow:
    probability = (f"{match.false_match_probability:.2g}"
                   if match.HasField("false_match_probability") else "")
    return MatchRow(outcome=outcome, bank=match.bank, entry_id=match.entry_id,
                    external_id=match.external_id, algorithm=_algorithm(match.algorithm),
                    distance=match.distance, threshold=match.threshold,
                    transform=TRANSFORMS.get(match.query_transform, "as uploaded"),
                    trimmed=match.query_trimmed, variant=match.entry_variant,
                    probability=probability)


def _algorithm(value: int) -> str:
    return types_pb2.Algorithm.Name(value).removeprefix("ALGORITHM_").lower()  # type: ignore[arg-type]


def _filename(upload: object) -> str:
    """The file's name as the browser sent it, shortened: shown back, never stored."""
    name = upload.filename if isinstance(upload, UploadFile) else None
    return (name or "the upload")[:120]
