"""What a JPEG's marker segments say about the cost of decoding it, read without decoding it.

Three things make a small JPEG expensive, and none shows in its width and height:

- **Scans.** libjpeg decodes every scan (SOS segment) in turn, and a progressive decode revisits
  every coefficient of the image in each, so a file that repeats its scans costs time in
  proportion: 2,000 scans of a 3000×3000 image took 17.6 s. Real encoders write 1 (baseline) to
  about 12 (progressive) scans; libjpeg-turbo's tools cap it for the same reason (`-maxscans`).
- **Buffered coefficients.** A progressive or multi-scan JPEG cannot be decoded row by row:
  libjpeg keeps every DCT coefficient of the whole image (2 bytes × 64 per 8×8 block per
  component) until the last scan, even when it decodes at 1/8 scale. A 1.2 KB progressive JPEG
  claiming 7071×7071 costs ~145 MB that way; the same header as baseline costs ~4 MB.

- **Markers.** Pillow parses the header's marker segments in Python: a file of millions of empty
  segments takes it tens of seconds before any pixel (see `MAX_SEGMENTS`).

The walk follows libjpeg's own parsing: marker segments are skipped by their length; after an
SOS the entropy-coded data runs to the next 0xFF that is not stuffing (FF 00), a restart marker
(FF D0–D7) or fill (FF FF). Both searches run in the `re` engine, so the walk costs a fraction of
a millisecond per megabyte (~0.4 ms/MB measured on 24 MP baseline and progressive photos; the
10.6 MB repeated-scans recipe, walked to its end, 14 ms).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

# Any marker: 0xFF followed by a byte that is neither stuffing (00) nor more fill (FF).
_MARKER = re.compile(rb"\xff[^\x00\xff]")
# The end of entropy-coded data: as above, and not a restart marker either.
_AFTER_ENTROPY = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RST0-7, SOI: no length field
_EOI, _SOS = 0xD9, 0xDA
# Start-of-frame markers: C0-CF except DHT (C4), JPG (C8) and DAC (CC); progressive ones apart.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_PROGRESSIVE_SOF = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
_BYTES_PER_BLOCK = 64 * 2  # one 8×8 block of 16-bit coefficients (libjpeg's JCOEF)
# Real JPEGs have a few dozen markers; even 32 MiB of maximal (64 KiB) APPn chunks is 512. Each
# costs this walk (and Pillow's header parser, in Python too) a few microseconds: 8 million empty
# comment segments in a 32 MiB file took each of them ~25 s.
MAX_SEGMENTS = 1_000


@dataclass(frozen=True)
class JpegLayout:
    """The first frame of a JPEG as its markers describe it."""

    width: int
    height: int
    progressive: bool
    scans: int  # SOS segments before the first EOI (or the end of the data, or the walk's stop)
    segments: int  # markers seen, up to the walk's stop
    sampling: tuple[tuple[int, int], ...]  # (horizontal, vertical) factor per component

    @property
    def buffers_coefficients(self) -> bool:
        """Whether libjpeg keeps the whole image's coefficients in memory while decoding
        (its `has_multiple_scans`: progressive, or components in separate scans)."""
        return self.progressive or self.scans > 1

    @property
    def coefficient_bytes(self) -> int:
        """What that buffer holds: every 8×8 block of every component, at full resolution
        (DCT scaling happens after it, so decoding small does not shrink it)."""
        if not self.sampling:
            return 0
        h_max = max(h for h, _ in self.sampling)
        v_max = max(v for _, v in self.sampling)
        blocks = 0
        for h, v in self.sampling:
            # libjpeg pads each component to whole MCUs: h×v blocks per MCU.
            mcus_across = -(-self.width // (8 * h_max))
            mcus_down = -(-self.height // (8 * v_max))
            blocks += mcus_across * h * mcus_down * v
        return blocks * _BYTES_PER_BLOCK


def read_layout(data: bytes, *, max_scans: int) -> JpegLayout | None:
    """The layout of `data`'s first frame (zero size and no components if no frame header is
    found: the decoder then reports that), or None if `data` is not a JPEG.

    The walk stops once it has seen more than `max_scans` scans or `MAX_SEGMENTS` markers,
    whichever comes first: the caller refuses the file then, and the walk stays cheap.
    """
    if not data.startswith(b"\xff\xd8"):
        return None
    frame: tuple[int, int, bool, tuple[tuple[int, int], ...]] | None = None
    scans = segments = 0
    position = 2
    end = len(data)
    while (found := _MARKER.search(data, position)) is not None:
        segments += 1
        marker = data[found.start() + 1]
        position = found.end()
        if marker == _EOI or segments > MAX_SEGMENTS:
            break
        if marker in _STANDALONE:
            continue
        if position + 2 > end:
            break
        length = int.from_bytes(data[position:position + 2], "big")
        if length < 2:
            break
        if marker in _SOF and frame is None:
            frame = _frame(data[position + 2:position + length], marker in _PROGRESSIVE_SOF)
        position += length
        if marker == _SOS:
            scans += 1
            entropy_end = _AFTER_ENTROPY.search(data, position)
            if entropy_end is None or scans > max_scans:
                break
            position = entropy_end.start()
    height, width, progressive, sampling = frame or (0, 0, False, ())
    return JpegLayout(width, height, progressive, scans, segments, sampling)


def _frame(
    body: bytes, progressive: bool
) -> tuple[int, int, bool, tuple[tuple[int, int], ...]] | None:
    """SOFn: precision (1 byte), height, width (2 each), then 3 bytes per component."""
    if len(body) < 6:
        return None
    height = int.from_bytes(body[1:3], "big")
    width = int.from_bytes(body[3:5], "big")
    components = body[6:6 + 3 * body[5]]
    sampling = tuple((max(1, factors >> 4), max(1, factors & 0x0F))
                     for factors in components[1::3])
    return height, width, progressive, sampling


def without_ac_scans(data: bytes) -> bytes | None:
    """A progressive JPEG with every AC scan (spectral start > 0) cut out, or None if `data`
    is not one whose walk reaches its EOI cleanly or has no AC scan to cut.

    Why: decoded at 1/8 scale, libjpeg's 1×1 IDCT reads each block's DC coefficient only,
    yet a progressive decode entropy-decodes every scan first: ~97% of the fast path's time on
    progressive photos over 3 MP (loadtests/profile_corpus.py). Without the AC scans the same
    1/8-scale pixels come out (the tests compare them) for the DC scans' share of the work.
    Every other segment (tables, restart intervals, APPn) is kept in place.
    """
    return _without_scans(data, lambda scan: scan.spectral_start > 0 and not (
        scan.first_component_only and scan.spectral_start == 1 and scan.refines == 0))


def without_chroma_ac_scans(data: bytes) -> bytes | None:
    """A progressive JPEG with the AC scans of every component but the first (Cb and Cr in a
    YCbCr file) cut out, or None as for `without_ac_scans`.

    Why: decoded as its Y plane (`draft("L")`), a YCbCr JPEG's chroma is never shown, but a
    progressive decode still entropy-decodes every scan of every component into its
    coefficient buffer. An AC scan codes one component only, so cutting the chroma ones
    leaves every Y coefficient, hence every Y pixel, bit for bit as it was (the tests compare
    them), for 10-30% less decoding on small progressive photos (`decode_small_jpeg`).
    """
    return _without_scans(data, lambda scan: scan.spectral_start > 0
                          and not scan.first_component_only)


@dataclass(frozen=True)
class _Scan:
    """What `_without_scans` tells its predicate about one SOS segment."""

    first_component_only: bool  # the scan codes the frame's first component (Y) and no other
    spectral_start: int  # Ss: 0 for a DC scan
    refines: int  # Ah: 0 for a scan's first pass over its bits


def _without_scans(data: bytes, cut: Callable[[_Scan], bool]) -> bytes | None:
    """A progressive JPEG with the scans `cut` picks cut out (their SOS segment and entropy-
    coded data), or None if `data` is not one whose walk reaches its EOI cleanly or no scan
    was cut."""
    if not data.startswith(b"\xff\xd8"):
        return None
    kept: list[bytes] = []
    copied = 0  # data[copied:position] is still to be kept
    cut_any = False
    position = 2
    segments = 0
    frame_components = 0
    while (found := _MARKER.search(data, position)) is not None:
        segments += 1
        marker = data[found.start() + 1]
        position = found.end()
        if marker == _EOI:
            return b"".join([*kept, data[copied:position]]) if cut_any else None
        if segments > MAX_SEGMENTS:
            return None
        if marker in _STANDALONE:
            continue
        if position + 2 > len(data):
            return None
        length = int.from_bytes(data[position:position + 2], "big")
        body = data[position + 2:position + length]
        if length < 2 or len(body) != length - 2:
            return None
        if marker in _SOF:
            if marker not in _PROGRESSIVE_SOF or len(body) < 9:
                return None
            frame_components = position + 2 + 6  # the first component's id
        segment_start = found.start()
        position += length
        if marker == _SOS:
            entropy_end = _AFTER_ENTROPY.search(data, position)
            if entropy_end is None or not body or len(body) < 4 + 2 * body[0]:
                return None
            position = entropy_end.start()
            first_component = data[frame_components] if frame_components else -1
            scan = _Scan(first_component_only=body[0] == 1 and body[1] == first_component,
                         spectral_start=body[1 + 2 * body[0]],
                         refines=body[3 + 2 * body[0]] >> 4)
            if cut(scan):
                kept.append(data[copied:segment_start])
                copied = position
                cut_any = True
    return None
