"""Cheaper decodes of JPEGs for the scan path that give the Y plane bit for bit.

The fast path decodes a YCbCr JPEG as its Y plane (`draft("L")`). For a baseline JPEG that
already skips the chroma IDCT, upsampling and colour conversion, but a progressive JPEG is
entropy-decoded scan by scan into a coefficient buffer first, chroma included. Its AC scans
each code one component, so the chroma ones can be cut from the file before decoding without
changing one Y coefficient (`jpeg_layout.without_chroma_ac_scans`).

Profile of the JPEGs under 1 MP of `loadtests/upload_corpus.py --count 300 --seed 1`
(`loadtests/profile_corpus.py`, load ~9 on 2 cores): decoding is ~65% of the fast path, and
a progressive photo's Y-plane decode costs about what its full RGB decode does (0.3 MP:
2.7 against 3.0 ms), where a baseline one's costs a third. Cutting the chroma AC scans took
10-30% off those decodes (44 progressive files, pixels identical in all).
"""

from __future__ import annotations

import io

from PIL import Image

from hashsvc.hashing.imaging import Opened, decoder_errors
from hashsvc.hashing.jpeg_layout import without_chroma_ac_scans


def luma_scans_only(opened: Opened, data: bytes, name: str) -> Opened:
    """`opened` reopened without its chroma AC scans, when it is a progressive JPEG whose
    Y plane is its luma; otherwise `opened` as it is."""
    cut = luma_scan_bytes(opened, data)
    if cut is None:
        return opened
    with decoder_errors(name, opened.format):
        return opened._replace(image=Image.open(io.BytesIO(cut), formats=("JPEG",)))


def luma_scan_bytes(opened: Opened, data: bytes) -> bytes | None:
    """`data` without its chroma AC scans, when it is a progressive JPEG whose Y plane is its
    luma; otherwise None.

    The Y plane is PDQ's luma only in a YCbCr file, and libjpeg computes grey from every
    component of an RGB-coded one; so the cut is made only where libjpeg itself reads YCbCr:
    a JFIF file without an Adobe segment, or an Adobe segment saying so (transform 1).
    """
    layout, image = opened.jpeg, opened.image
    if (layout is None or not layout.progressive or len(layout.sampling) != 3
            or image.mode != "RGB"):
        return None
    adobe = image.info.get("adobe_transform") if "adobe" in image.info else None
    if not (adobe == 1 or (adobe is None and "jfif" in image.info)):
        return None
    return without_chroma_ac_scans(data)
