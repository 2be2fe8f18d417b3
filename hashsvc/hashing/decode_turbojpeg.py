"""A JPEG's Y plane for the scan path from libjpeg-turbo's TurboJPEG API, not Pillow's decode.

Why: on JPEGs under 1 MP the fast path spent ~30% of its time beside libjpeg's own work (issue 15:
2.86× the reference against a 4.93× ceiling for Pillow's decode alone). Pillow's `load` sets up
a decoder object, feeds it from Python and copies the result into an image, then NumPy copies it
again. `tjDecompress2` decodes the buffer in one call, at the same DCT scale as Pillow's `draft`,
straight into our array, as grey: for a YCbCr file that is the Y plane, chroma never
inverse-transformed (libjpeg's own JCS_GRAYSCALE output, as `draft("L")` asks for).

It is the same libjpeg-turbo (Debian's `libturbojpeg0`; Pillow bundles its own libjpeg build):
the same integer IDCT, so the same pixels. Where the library is missing, the file is not
YCbCr or grey, or TurboJPEG reports anything, even a warning (`TJFLAG_STOPONWARNING`), `luma`
returns None and the caller decodes through Pillow, whose checks and messages users see.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
from PIL import ExifTags, Image

from hashsvc.hashing.decode_budget import Lease
from hashsvc.hashing.decode_small_jpeg import luma_scan_bytes
from hashsvc.hashing.imaging import DecodeLimits, Opened, admit_decode, decoder_errors
from hashsvc.hashing.jpeg_layout import without_ac_scans

_PIXEL_GRAY = 6  # TJPF_GRAY
_STOP_ON_WARNING = 8192  # TJFLAG_STOPONWARNING
_FLAGS = _STOP_ON_WARNING
_YCBCR, _GRAY = 1, 2  # TJCS_YCbCr, TJCS_GRAY: the colour spaces whose grey output is Y


def _load_library() -> Any:
    """libturbojpeg, or None where it is not installed (then Pillow decodes every JPEG)."""
    path = ctypes.util.find_library("turbojpeg")
    try:
        library = ctypes.CDLL(path or "libturbojpeg.so.0")
        init, header, decode = (library.tjInitDecompress, library.tjDecompressHeader3,
                                library.tjDecompress2)
    except (OSError, AttributeError):  # pragma: no cover - depends on the machine
        return None
    handle, data, size, integer = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_int
    out = ctypes.POINTER(ctypes.c_int)
    init.restype = handle
    init.argtypes = []
    header.restype = integer
    header.argtypes = [handle, data, size, out, out, out, out]
    decode.restype = integer
    decode.argtypes = [handle, data, size, ctypes.c_void_p, integer, integer, integer, integer,
                       integer]
    return library


_LIBRARY = _load_library()
_HANDLES = threading.local()  # a TurboJPEG handle is not for two threads at once


def available() -> bool:
    return _LIBRARY is not None


def _handle() -> int | None:
    handle: int | None = getattr(_HANDLES, "handle", None)
    if handle is None and _LIBRARY is not None:
        handle = _HANDLES.handle = _LIBRARY.tjInitDecompress()  # freed with the process
    return handle


def _header(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, colour space) from the JPEG's header, or None."""
    handle = _handle()
    if handle is None:
        return None
    width, height, sampling, colorspace = (ctypes.c_int() for _ in range(4))
    if _LIBRARY.tjDecompressHeader3(handle, data, len(data), width, height, sampling,
                                    colorspace) != 0:
        return None
    return width.value, height.value, colorspace.value


def luma(data: bytes, width: int, height: int, scale: int) -> npt.NDArray[np.uint8] | None:
    """The Y plane of a YCbCr or grey JPEG of `width`×`height` (the header's size, already
    checked against the decode limits) decoded at 1/`scale` (1, 2, 4 or 8: ⌈side / scale⌉
    pixels per side, as libjpeg scales), or None where TurboJPEG disagrees, refuses or warns."""
    handle = _handle()
    if handle is None or _header(data) not in ((width, height, _YCBCR), (width, height, _GRAY)):
        return None
    rows, cols = -(-height // scale), -(-width // scale)
    plane = np.empty((rows, cols), dtype=np.uint8)
    if _LIBRARY.tjDecompress2(handle, data, len(data), plane.ctypes.data, cols, cols, rows,
                              _PIXEL_GRAY, _FLAGS) != 0:
        return None
    return plane


class Plane(NamedTuple):
    """A JPEG's Y plane as `y_plane` decoded it, with the original's size after orientation."""

    plane: npt.NDArray[np.uint8]
    width: int
    height: int
    scale: int  # decoded at 1/scale


_TRANSPOSES = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
               4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
               6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
               8: Image.Transpose.ROTATE_90}  # EXIF orientation: `ImageOps.exif_transpose`'s


def y_plane(data: bytes, opened: Opened, limits: DecodeLimits, name: str, side: int, *,
            dc_only: bool, luma_scans: bool, apply_orientation: bool,
            lease: Lease | None) -> tuple[Plane | None, bool]:
    """The scan path's decode of an opened JPEG, from TurboJPEG: its Y plane at the DCT scale
    Pillow's `draft` picks for `side`, under `load_checked`'s caps and budget, oriented as the
    Pillow path orients it; None where `luma` does not apply or refuses (`opened` is then
    drafted: reopen it). Second: whether the decode was admitted (its budget reserved).

    Its input is what the Pillow path would decode: without the AC scans of a progressive
    file decoded at 1/8 (`dc_only`), or else without its chroma AC scans (`luma_scans`,
    `decode_small_jpeg`)."""
    image = opened.image
    width, height = image.size
    with decoder_errors(name, opened.format):
        drafted = image.draft("L", (side, side))
        if drafted is None or image.mode != "L":
            return None, False
        scale = round(width / drafted[1][2])
        source: bytes | None = None
        layout = opened.jpeg
        if layout is not None and layout.progressive:
            if scale == 8 and dc_only:
                source = without_ac_scans(data)
            elif luma_scans:
                source = luma_scan_bytes(opened, data)
        admit_decode(opened, limits, name, full=False, lease=lease)
        plane = luma(source or data, width, height, scale)
        if plane is None:
            return None, True
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1) if apply_orientation else 1
    if orientation in _TRANSPOSES:
        plane = np.asarray(Image.fromarray(plane).transpose(_TRANSPOSES[orientation]))
        if orientation in (5, 6, 7, 8):  # these swap the axes
            width, height = height, width
    return Plane(plane, width, height, scale), True
