"""A still WebP's luma for the scan path, straight from libwebp: a lossy one's Y plane, no RGB.

Why: Pillow decodes every WebP through libwebp's animation decoder to RGBA, then the fast path
converts that to RGB and to 8-bit luma; three full-size passes for what a lossy WebP already
stores. Inside, a lossy WebP is YUV 4:2:0, and its Y plane (BT.601 studio range, 16-235) is
PDQ's luma up to an affine map: libwebp turns YUV into RGB with R, G, B = 1.164 (Y - 16) +
chroma terms that cancel in 0.299 R + 0.587 G + 0.114 B. `WebPDecodeYUVInto` decodes that plane
(and the quarter-size chroma, which libwebp writes anyway) into our buffers. The C filter
reads the plane as it is, and `fastpdq` maps PDQ's 64×64 (the filter is linear) to full range
before the DCT: the hash bits depend on luma only up to such a map (DC is not in PDQ's DCT, and
the bits compare against the median), and the quality is computed on full-range values as the
reference's is. (Mapping every pixel with a table first cost ~10% of a WebP's scan.)

The library is Pillow's own libwebp, reached through its `_webp` extension (the dynamic loader
resolves a symbol through that module's dependencies): no new dependency, and the same
decoder, version and all, as the reference path. Without it, or for anything else (animation,
EXIF, an image libwebp refuses), `luma` returns None and the caller decodes through Pillow,
whose errors and messages are the ones users see.

Measured (`loadtests/bench_corpus.py`, README "On real-encoder uploads"): see the WebP row.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

_MAX_CHUNKS = 16
_EXIF_OR_ANIMATION = 0x08 | 0x02  # flags in the VP8X chunk


def _load_library() -> Any:
    """Pillow's libwebp, or None if this Pillow has no WebP support or lacks the symbols."""
    try:
        from PIL import _webp

        library = ctypes.CDLL(_webp.__file__)
        yuv, rgb, info = library.WebPDecodeYUVInto, library.WebPDecodeRGBInto, library.WebPGetInfo
    except (ImportError, OSError, AttributeError):  # pragma: no cover - depends on the install
        return None
    data, buffer, size, stride = ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int
    yuv.restype = rgb.restype = ctypes.c_void_p  # the output pointer given, or NULL on failure
    yuv.argtypes = [data, size, buffer, size, stride, buffer, size, stride, buffer, size, stride]
    rgb.argtypes = [data, size, buffer, size, stride]
    info.restype = ctypes.c_int
    info.argtypes = [data, size, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int)]
    return library


_LIBRARY = _load_library()


def applies(data: bytes) -> bool:
    """Whether `luma` can decode this WebP: a still one (from its chunk headers) with no EXIF,
    whose orientation Pillow applies."""
    return _LIBRARY is not None and _bitstream(data) is not None


def _bitstream(data: bytes) -> bytes | None:
    """The tag of the image's bitstream chunk (`VP8 ` lossy, `VP8L` lossless), None for an
    animation, a file with EXIF or anything unexpected. Extended files (`VP8X`) put ICC, EXIF
    or alpha chunks before it; a real file has a handful, so the walk stops at `_MAX_CHUNKS`."""
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    at = 12
    for _ in range(_MAX_CHUNKS):
        tag, size = data[at:at + 4], int.from_bytes(data[at + 4:at + 8], "little")
        if tag in (b"VP8 ", b"VP8L"):
            return tag
        flags = data[at + 8] if at + 8 < len(data) else 0
        if len(tag) < 4 or tag == b"ANIM" or (tag == b"VP8X" and flags & _EXIF_OR_ANIMATION):
            return None
        at += 8 + size + (size & 1)
    return None


def luma(data: bytes, width: int, height: int) -> tuple[npt.NDArray[np.uint8], bool] | None:
    """The 8-bit luma of a still WebP of `width`×`height` (the header's size, already checked
    against the decode limits), with whether it is studio range (16-235), or None where libwebp
    disagrees or refuses.

    Lossy: the Y plane as decoded (studio range: `fastpdq` maps PDQ's 64×64 to full range).
    Lossless (stored as RGB, so no Y plane to take):
    RGB straight into our buffer, skipping Pillow's RGBA copy, then `convert("L")`."""
    got_width, got_height = ctypes.c_int(), ctypes.c_int()
    if (_LIBRARY is None
            or not _LIBRARY.WebPGetInfo(data, len(data), got_width, got_height)
            or (got_width.value, got_height.value) != (width, height)):
        return None
    if _bitstream(data) == b"VP8L":
        rgb = np.empty((height, width, 3), dtype=np.uint8)
        if not _LIBRARY.WebPDecodeRGBInto(data, len(data), rgb.ctypes.data, rgb.size, 3 * width):
            return None
        return np.asarray(
            Image.frombuffer("RGB", (width, height), rgb, "raw", "RGB", 0, 1).convert("L")), False
    y = np.empty((height, width), dtype=np.uint8)
    chroma_width, chroma_height = (width + 1) // 2, (height + 1) // 2
    chroma = np.empty((2, chroma_height, chroma_width), dtype=np.uint8)
    decoded = _LIBRARY.WebPDecodeYUVInto(
        data, len(data),
        y.ctypes.data, y.size, width,
        chroma[0].ctypes.data, chroma[0].size, chroma_width,
        chroma[1].ctypes.data, chroma[1].size, chroma_width)
    if not decoded:
        return None
    return y, True
