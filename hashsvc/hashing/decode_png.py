"""An 8-bit PNG's luma for the scan path, decoded by libspng (pyspng) instead of Pillow.

Why: a PNG has no reduced decode (every row must be inflated and unfiltered), so the fast path's
floor is the decoder itself: 74% of its time on PNGs went to Pillow's inflate and unfilter
(README, "On real-encoder uploads"). libspng decodes the same pixels for less CPU and hands
back a NumPy array, which Pillow's `convert("L")` reads as before: the PNG scan's speed-up
over the reference pipeline went from 1.50× to 2.09× on the upload corpus (`bench_corpus.py`,
README).

Which PNGs: those whose 8-bit RGB (or grey) pixels libspng and Pillow produce identically,
checked from the header: bit depth 8, any colour type, and palette images of any depth (a
palette lookup). libspng, like Pillow, ignores gamma, ICC and alpha here (alpha is dropped,
as `convert("RGB")` drops it). 16-bit and 1/2/4-bit grey are left to Pillow, which scales and
clips them its own way (the golden vectors depend on it). A PNG libspng refuses returns None,
and the caller decodes through Pillow, whose errors and messages are the ones users see.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from PIL import Image

try:
    import pyspng  # libspng: MIT, wheels for CPython on Linux, macOS and Windows
except ImportError:  # pragma: no cover - depends on the install
    pyspng = None

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_GREY, _PALETTE, _GREY_ALPHA = 0, 3, 4
_EXIF_KEYWORD = b"Raw profile type exif"


def applies(data: bytes) -> bool:
    """Whether `luma` can decode this PNG (from its IHDR, the first chunk), and it carries no
    EXIF (an eXIf chunk, or ImageMagick's raw-profile text), whose orientation Pillow applies."""
    if pyspng is None or len(data) < 33 or data[:8] != _SIGNATURE or data[12:16] != b"IHDR":
        return False
    depth, colour = data[24], data[25]
    return (depth == 8 or colour == _PALETTE) and not _has_exif(data)


def _has_exif(data: bytes) -> bool:
    """Whether a chunk may hold EXIF, walking the chunk headers (a search through the bytes
    cost ~0.2 ms a PNG); a text chunk is taken as EXIF if its keyword is ImageMagick's."""
    at = 8
    while at + 8 <= len(data):
        size, tag = int.from_bytes(data[at:at + 4], "big"), data[at + 4:at + 8]
        if tag == b"eXIf" or (tag in (b"tEXt", b"zTXt", b"iTXt")
                              and data[at + 8:at + 8 + size].startswith(_EXIF_KEYWORD)):
            return True
        if tag == b"IEND":
            return False
        at += 12 + size
    return False


def luma(data: bytes, width: int, height: int) -> tuple[npt.NDArray[np.uint8], bool] | None:
    """The 8-bit luma (Pillow's `convert("L")`) of a PNG of `width`×`height` (the header's size,
    already checked against the decode limits), and False (full range, unlike a WebP's), or
    None if libspng refuses it."""
    grey = data[25] in (_GREY, _GREY_ALPHA)
    try:
        # libspng gives grey only from grey without alpha; grey with alpha comes as RGB.
        pixels = pyspng.load(data, "L" if data[25] == _GREY else "RGB")
    except RuntimeError:
        return None
    if pixels.shape[:2] != (height, width):
        return None
    if grey:  # as decoded: no copy (the decode budget counts 1 byte per pixel for grey)
        return (np.ascontiguousarray(pixels[..., 0]) if pixels.ndim == 3 else pixels), False
    rgb = Image.frombuffer("RGB", (width, height), pixels, "raw", "RGB", 0, 1)
    return np.asarray(rgb.convert("L")), False
