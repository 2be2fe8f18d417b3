"""How much memory a decode will take, estimated from the header, and a budget to admit it against.

Why a budget and not only pixel caps: the memory a call takes depends on more than its pixels
(a progressive JPEG buffers all its coefficients even when decoded at 1/8 scale; the reference
PDQ path holds ~30 bytes per pixel at its peak), and `max_concurrent_rpcs` calls can run at once.
Each decode's peak is estimated before it starts (`estimate_peak_bytes`) and reserved from the
process's `MemoryBudget` until the call is done, so the calls in flight never hold more than the
budget, whatever they send.

When the budget has no room the call is refused at once with RESOURCE_EXHAUSTED rather than made
to wait: that is how `max_concurrent_rpcs` admission already behaves (nothing queues, so a client's
deadline is never spent waiting in a server queue and overload is visible to the caller and its
retry policy at once), and it needs no clock, so it behaves the same on a busy machine. An image
whose estimate exceeds the whole budget could never be admitted: it is refused as too large
(INVALID_ARGUMENT), since retrying cannot help.

Estimates, per decode, are calibrated on the peak RSS of a fresh process hashing one 24 MP
image through `Scanner.hash_upload` (PDQ with dihedral and trimmed queries, plus pHash/dHash on
the reference path; 2-core shared machine, 2026-12-06). Fast path, bytes per decoded pixel: RGB
PNG 4.3, LZW TIFF 4.5, palette PNG 5.4, 16-bit grey PNG 6.4, RGBA or LA PNG 8.4, RGBA WebP 16.7;
reference path: 29.6 (RGB JPEG) to 36.3 (RGBA WebP). A progressive JPEG holds its coefficients
on top (a 24 MP 4:2:0 one: 69 MB measured, 72 MB estimated; the 7071×7071 one: 144 MB measured,
150 MB estimated). What the budget does to many calls at once, `python
loadtests/decode_memory.py` measures (README, "Decoding and limits"): 32 of those progressive
JPEGs at once took a process to 4,080 MB without it, 771 MB with 1 GiB.
"""

from __future__ import annotations

import threading
from types import TracebackType

from hashsvc.errors import DecodeBudgetExhaustedError, ImageTooLargeError
from hashsvc.hashing.jpeg_layout import JpegLayout

# Bytes per pixel Pillow stores for a mode (RGB, RGBA, CMYK, LA and the 32-bit modes take 4).
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
# Decoders that fill a buffer of their own and copy it into the image (WebP measured: 16.7
# bytes per pixel for RGBA on the fast path, 8.4 for the same pixels as PNG; AVIF and HEIF
# decode the same way, assumed alike).
_DECODER_COPY_BYTES = {"WEBP": 8, "AVIF": 8, "HEIF": 8}
_CONVERSION_BYTES = 4  # `to_rgb`'s new image, for any mode but RGB (and the fast path's L)
# The reference path hashes the full-size RGB image: its numpy copy, pdqhash's float buffers,
# pHash/dHash and the trimmed copy. Measured peak: 29.6 bytes per pixel for RGB JPEGs (4 of
# them the decoded image), 31.0 for an RGBA or 16-bit grey PNG, 36.3 for an RGBA WebP.
_FULL_PATH_BYTES = 26
_REDUCED_PATH_BYTES = 1  # the fast path's box-reduced copy and luma arrays are small
DECODE_OVERHEAD_BYTES = 4 * 2**20  # decoder state, row buffers, small arrays: any image


def estimate_peak_bytes(
    decoded_pixels: int, *, mode: str, fmt: str, full: bool, layout: JpegLayout | None
) -> int:
    """Peak bytes of decoding (and hashing) an image to `decoded_pixels` pixels of `mode`.

    `full`: the reference path, which hashes the full-size pixels; otherwise the fast path,
    which shrinks them at once. `layout`: a JPEG's, whose coefficient buffer (progressive and
    multi-scan JPEGs only) comes on top, at full resolution whatever the decoded size.
    Calibrated on the figures above; each is a little over what was measured.
    """
    per_pixel = _MODE_BYTES.get(mode, 4) + _DECODER_COPY_BYTES.get(fmt, 0)
    if mode != "RGB" and (full or mode != "L"):
        per_pixel += _CONVERSION_BYTES
    per_pixel += _FULL_PATH_BYTES if full else _REDUCED_PATH_BYTES
    coefficients = layout.coefficient_bytes if layout and layout.buffers_coefficients else 0
    return DECODE_OVERHEAD_BYTES + decoded_pixels * per_pixel + coefficients


class MemoryBudget:
    """Bytes of decoding one process may have in flight; shared by every call's `Lease`."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._in_use = 0
        self._lock = threading.Lock()

    @property
    def in_use(self) -> int:
        return self._in_use

    def lease(self) -> Lease:
        return Lease(self)

    def _take(self, nbytes: int, name: str) -> None:
        if nbytes > self.capacity:
            raise ImageTooLargeError(
                f"{name}: decoding would take an estimated {_mb(nbytes)}, more than the decode "
                f"memory budget of {_mb(self.capacity)} (refused before decoding)")
        with self._lock:
            if self._in_use + nbytes > self.capacity:
                in_use = self._in_use
            else:
                self._in_use += nbytes
                return
        raise DecodeBudgetExhaustedError(
            f"{name}: server busy: decoding would take an estimated {_mb(nbytes)} and "
            f"{_mb(in_use)} of the {_mb(self.capacity)} decode memory budget is in use by other "
            "calls; retry shortly")

    def _give(self, nbytes: int) -> None:
        with self._lock:
            self._in_use -= nbytes


class Lease:
    """One call's share of a `MemoryBudget`: reservations add up and all return on `close`."""

    def __init__(self, budget: MemoryBudget) -> None:
        self._budget = budget
        self.held = 0

    def reserve(self, nbytes: int, name: str) -> None:
        """Hold `nbytes` more, or raise (too large for the budget, or no room just now)."""
        self._budget._take(nbytes, name)
        self.held += nbytes

    def close(self) -> None:
        held, self.held = self.held, 0
        if held:
            self._budget._give(held)

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


def _mb(nbytes: int) -> str:
    return f"{nbytes / 2**20:,.0f} MiB"
