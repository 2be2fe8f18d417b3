"""Fast PDQ for scans: decode small, then apply PDQ's own full-size downsampling, exactly.

The reference pipeline (full decode, `convert("RGB")`, `pdqhash.compute`) spends almost all of
its time on full-size pixels that PDQ only averages down to 64×64. Here:

1. a JPEG is decoded at the smallest libjpeg DCT scale (1/2, 1/4, 1/8; Pillow's `draft`) that
   keeps both sides >= `SCAN.jpeg_min_side` = 192 px, i.e. >= 3 decoded pixels per PDQ cell,
   and (YCbCr JPEGs) as its Y plane only, which is PDQ's luma;
2. an image the decoder did not scale (PNG, WebP, every other format, JPEGs under 384 px) is
   box-reduced to at most `SCAN.work_side` = 512 px per axis;
3. PDQ's blur-and-decimate (two Jarosz box passes with windows sized from the *original*
   dimensions, then sampling 64 rows and columns) is linear and separable, so it is applied to
   the small image as two banded 64-row operators built from the original size. With no
   reduction this reproduces `pdqhash` bit for bit on Meta's golden vectors (see the tests);
   with it, the only difference is what the reduction removed;
4. the DCT, torben median and bit layout follow Meta's `pdqhashing.cpp`, on floats: rounding
   the 64×64 to bytes to call `pdqhash` costs up to ~20 bits on flat images.

Why these numbers (measured with `loadtests/bench_hashing.py` and its predecessors over the
shared photos, upscaled to 1–12 MP, and the PDQ reference images): a JPEG's agreement with the
reference depends on its decoded short side. Quality >= 80 hashes stay 100% within 10 bits from
160 px up (median 2, p99 6 bits at 192–223 px), while 1.5–2 px per cell drifts up to 32 bits.
Resizing after DCT scaling only added error, so JPEGs stop at step 1; decoding the Y plane gave
the same agreement, ~25% faster. For images without DCT scaling a box filter beat bilinear,
bicubic, Hamming and Lanczos, and 512 px (p99 2, max 4 bits) costs little more than 256 px
(p99 6). 256 px instead of 192 would tighten JPEG agreement (p99 2, max 4 bits against p99 6,
max 14 over 6,000 images) but slow a 1-MP photo ~1.5×: it then decodes at 1/2 scale, not 1/4.

Reference-exact hashing (`indexer hash`, exports, golden vectors) stays in `hashsvc.imaging` +
`hashsvc.algorithms.pdq`; this module is for scans. Its checks, messages and typed errors are
`hashsvc.imaging.decode`'s, so bad input fails here exactly as it fails there.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt
from PIL import ExifTags, Image, ImageOps, JpegImagePlugin

from hashsvc.algorithms.base import HashValue
from hashsvc.algorithms.pdq import Pdq
from hashsvc.errors import (
    CorruptImageError,
    TruncatedImageError,
)
from hashsvc.imaging import DEFAULT_LIMITS, DecodeLimits, open_checked, to_rgb

FloatArray = npt.NDArray[np.float64]
Float32Array = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.intp]
Band = tuple[IntArray, Float32Array]  # per output row: first input row, weights from there


@dataclass(frozen=True)
class Reduction:
    """How far an upload is shrunk before PDQ's filter; None turns a step off.

    `jpeg_min_side`: JPEGs decode at the smallest DCT scale that keeps both sides at least this
    long. `work_side`: an image the decoder did not scale is reduced with `resample` to at most
    this many pixels per axis (aspect ratio not kept: PDQ maps each axis to 64 cells on its own).
    `jpeg_luma`: a YCbCr JPEG decodes to its Y plane only (with `jpeg_min_side` set).
    """

    jpeg_min_side: int | None = 192
    work_side: int | None = 512
    resample: Image.Resampling = Image.Resampling.BOX
    jpeg_luma: bool = True


SCAN = Reduction()  # the scan policy, chosen by measurement (module docstring)
EXACT = Reduction(jpeg_min_side=None, work_side=None, jpeg_luma=False)  # the reference's pixels


@dataclass(frozen=True)
class Reduced:
    """An upload decoded small: its luma, plus what PDQ needs to know about the original."""

    luma: Float32Array
    width: int  # the original's size, after EXIF orientation
    height: int
    scale: tuple[float, float]  # an original pixel centre (y, x) lies at (y·s0, x·s1) in luma
    format: str

    @property
    def pixels(self) -> int:
        return self.width * self.height


_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # pdqhashing.cpp's luma_from_*_coeff
_MIN_HASHABLE_DIM = 5  # pdqhashing.cpp: smaller images hash to all zeros with quality 0
# dct64To16's matrix: rows 1..16 of the 64-point DCT-II, stored as float like the reference.
_DCT = (
    np.sqrt(2.0 / 64)
    * np.cos((np.pi / 2.0 / 64) * np.outer(np.arange(1, 17), 2 * np.arange(64) + 1))
).astype(np.float32).astype(np.float64)
# Sign patterns of dct16OriginalTo*: index parity (odd → +1, even → -1) and checkerboard.
_ODD = np.where(np.arange(16) % 2 == 1, 1.0, -1.0)
_CHECKER = np.where(np.add.outer(np.arange(16), np.arange(16)) % 2 == 0, 1.0, -1.0)


def pdq_fast(
    data: bytes,
    limits: DecodeLimits = DEFAULT_LIMITS,
    *,
    name: str = "image",
    apply_orientation: bool = True,
    reduction: Reduction = SCAN,
) -> HashValue:
    """The PDQ hash (with quality) of an upload, the scan way: small decode, exact PDQ filter."""
    reduced = decode_reduced(data, limits, name=name, apply_orientation=apply_orientation,
                             reduction=reduction)
    return pdq_hashes(reduced)[0]


def pdq_fast_dihedral(
    data: bytes,
    limits: DecodeLimits = DEFAULT_LIMITS,
    *,
    name: str = "image",
    apply_orientation: bool = True,
    reduction: Reduction = SCAN,
) -> list[HashValue]:
    """The 8 dihedral hashes, in `hashsvc.algorithms.pdq.DIHEDRAL_TRANSFORMS` order."""
    reduced = decode_reduced(data, limits, name=name, apply_orientation=apply_orientation,
                             reduction=reduction)
    return pdq_hashes(reduced, dihedral=True)


def pdq_hashes(reduced: Reduced, *, dihedral: bool = False) -> list[HashValue]:
    """PDQ of a reduced upload: one hash, or the 8 dihedral ones for the cost of about one."""
    coefficients, quality = _dct16(reduced)
    if not dihedral:
        variants = [coefficients]
    else:  # dct16OriginalTo*: each transform's DCT is the original's, re-signed or transposed
        a = coefficients
        variants = [a, (a * _ODD[None, :]).T, a * _CHECKER, (a * _ODD[:, None]).T,
                    a * _ODD[:, None], a * _ODD[None, :], a.T, (a * _CHECKER).T]
    return [HashValue(Pdq.name, _bits(v), quality) for v in variants]


def decode_reduced(
    data: bytes,
    limits: DecodeLimits = DEFAULT_LIMITS,
    *,
    name: str = "image",
    apply_orientation: bool = True,
    reduction: Reduction = SCAN,
) -> Reduced:
    """Decode `data` small, or raise what `hashsvc.imaging.decode` raises, with its message."""
    image, fmt = open_checked(data, limits, name)
    width, height = image.size
    dct_scale = 1  # libjpeg decoded ⌈side / dct_scale⌉ pixels per side
    try:
        side = reduction.jpeg_min_side
        if side and isinstance(image, JpegImagePlugin.JpegImageFile):  # MPO included
            # The largest DCT scale keeping both sides >= side (none for smaller images), and
            # for a YCbCr JPEG only its Y plane: PDQ's luma, without chroma IDCT, upsampling
            # or colour conversion (measured: same agreement, a 1-MP scan ~25% faster).
            drafted = image.draft("L" if reduction.jpeg_luma else "RGB", (side, side))
            if drafted is not None:
                dct_scale = round(width / drafted[1][2])
        image.load()
        if apply_orientation:
            orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
            ImageOps.exif_transpose(image, in_place=True)  # after `draft`: on the small image
            if orientation in (5, 6, 7, 8):  # these swap the axes
                width, height = height, width
        # A JPEG decoded as its Y plane stays grey; everything else converts as the reference.
        small = image if image.mode == "L" and side and reduction.jpeg_luma else to_rgb(image)
    except OSError as err:  # hashsvc.imaging.decode's mapping, message for message
        if "truncated" in str(err) or "broken data stream" in str(err):
            raise TruncatedImageError(f"{name}: truncated {fmt} file: {err}") from None
        raise CorruptImageError(f"{name}: corrupt {fmt} data: {err}") from None
    except (SyntaxError, ValueError, EOFError) as err:
        raise CorruptImageError(f"{name}: corrupt {fmt} data: {err}") from None
    decoded = small.size
    if dct_scale == 1 and reduction.work_side:
        target = (min(decoded[0], reduction.work_side), min(decoded[1], reduction.work_side))
        if target != decoded:
            small = small.resize(target, reduction.resample)
    if small.mode == "L":
        luma = np.asarray(small, dtype=np.float32)
    else:
        red, green, blue = (np.asarray(plane, dtype=np.float32) for plane in small.split())
        red *= _LUMA[0]  # fillFloatLumaFromRGB, in float32 as there: planes are ~5× faster
        green *= _LUMA[1]  # than strided H×W×3 arithmetic, and a matmul would call BLAS
        blue *= _LUMA[2]
        luma = red + green + blue
    scale = (small.height / (decoded[1] * dct_scale), small.width / (decoded[0] * dct_scale))
    return Reduced(luma, width, height, scale, fmt)


def pdq_from_luma(
    luma: Float32Array, rows: int, cols: int, scale: tuple[float, float] | None = None
) -> tuple[FloatArray, int]:
    """PDQ's 64×64 downsample and quality of a `rows`×`cols` image, from its reduced `luma`.

    An original pixel centre (y, x) lies at (y·scale[0], x·scale[1]) in `luma`; by default the
    ratio of the sizes.
    """
    row_scale, col_scale = scale or (luma.shape[0] / rows, luma.shape[1] / cols)
    by_rows = _apply(_axis_operator(rows, luma.shape[0], row_scale), luma)
    block = _apply(_axis_operator(cols, luma.shape[1], col_scale), by_rows.T).T.astype(np.float64)
    return block, _quality(block)


def _apply(operator: Band, values: Float32Array) -> Float32Array:
    """`operator` applied along axis 0 of `values`: each output row a weighted sum of a band.

    A banded sum rather than a matrix product: far fewer operations, and no BLAS call, whose
    threads spin against the service's workers (a dense product with 2 OpenBLAS threads made a
    1-MP scan 7× slower on this 2-core machine).
    """
    starts, weights = operator
    out = np.zeros((64, values.shape[1]), dtype=np.float32)
    for offset in range(weights.shape[1]):
        out += weights[:, offset, None] * values[starts + offset]
    return out


@lru_cache(maxsize=256)
def _axis_operator(full: int, reduced: int, scale: float) -> Band:
    """PDQ's blur-and-decimate along an axis of `full` pixels, as 64 bands of weights over the
    same axis reduced to `reduced` pixels (an original pixel centre x lies at x·scale there).

    Mirrors downscaling.cpp: `jaroszFilterFloat` runs two passes of `box1DFloat` with window
    `w = computeJaroszFilterWindowSize(full, 64)` (output k averages pixels
    [k - w + half, k + half - 1], half = (w + 2) // 2, clipped at the edges), then
    `decimateFloat` keeps pixel ⌊(i + ½) · full / 64⌋. Two passes of one box are one linear map
    per output, found here with difference arrays; each original pixel's weight then goes to
    the reduced pixel covering it (measured closer to the reference than linear interpolation).
    """
    window = (full + 127) // 128
    reach = (window + 2) // 2 - 1  # box output k averages pixels [k - lead, k + reach]
    lead = window - 1 - reach
    samples = ((np.arange(64) + 0.5) * full / 64).astype(np.int64)
    # Second pass: a sample averages the first-pass outputs in its window (clipped: fewer).
    first = np.maximum(samples - lead, 0)
    last = np.minimum(samples + reach, full - 1)
    outputs = first[:, None] + np.arange(window)[None, :]
    weight = (outputs <= last[:, None]) / (last - first + 1)[:, None]
    outputs = np.minimum(outputs, full - 1)
    # First pass: each of those outputs averages its own window; sum the boxes per sample.
    box_first = np.maximum(outputs - lead, 0)
    box_last = np.minimum(outputs + reach, full - 1)
    weight /= box_last - box_first + 1
    origin = box_first[:, 0]
    span = int((box_last.max(axis=1) - origin).max()) + 2
    row = np.arange(64)[:, None] * span
    diff = np.bincount((row + box_first - origin[:, None]).ravel(), weight.ravel(), 64 * span)
    diff -= np.bincount((row + box_last + 1 - origin[:, None]).ravel(), weight.ravel(), 64 * span)
    pixel_weight = np.cumsum(diff.reshape(64, span)[:, :-1], axis=1)  # pixel origin + j
    pixels = np.minimum(origin[:, None] + np.arange(span - 1)[None, :], full - 1)
    # Each original pixel's weight goes to the reduced pixel whose footprint holds its centre.
    reduced_index = np.minimum(((pixels + 0.5) * scale).astype(np.intp), reduced - 1)
    width = int((reduced_index[:, -1] - reduced_index[:, 0]).max()) + 1
    band_start = np.minimum(reduced_index[:, 0], reduced - width)
    slot = np.arange(64)[:, None] * width + reduced_index - band_start[:, None]
    band = np.bincount(slot.ravel(), pixel_weight.ravel(), 64 * width).reshape(64, width)
    weights = band.astype(np.float32)
    band_start.setflags(write=False)  # cached and shared between threads: read-only
    weights.setflags(write=False)
    return band_start, weights


def _quality(block: FloatArray) -> int:
    """pdqImageDomainQualityMetric: count of significant gradients in the 64×64, 0–100."""
    block32 = block.astype(np.float32)
    down = np.trunc((block32[:-1, :] - block32[1:, :]) * np.float32(100) / np.float32(255))
    across = np.trunc((block32[:, :-1] - block32[:, 1:]) * np.float32(100) / np.float32(255))
    gradient_sum = int(np.abs(down).sum()) + int(np.abs(across).sum())
    return min(gradient_sum // 90, 100)


def _dct16(reduced: Reduced) -> tuple[FloatArray, int]:
    """dct64To16 of PDQ's 64×64 (the 16×16 lowest frequencies but DC), with quality.

    Below PDQ's minimum size the reference hashes to all zeros with quality 0; zero
    coefficients give exactly that.
    """
    if min(reduced.width, reduced.height) < _MIN_HASHABLE_DIM:
        return np.zeros((16, 16)), 0
    block, quality = pdq_from_luma(reduced.luma, reduced.height, reduced.width, reduced.scale)
    dct = np.einsum("ik,kl->il", _DCT, block)
    return np.einsum("il,jl->ij", dct, _DCT), quality


def _bits(coefficients: FloatArray) -> bytes:
    """pdqBuffer16x16ToBits: bit i·16+j is set when that coefficient exceeds the median.

    The median is torben's, the lower of the two middle values; the 256-bit number is stored
    big-endian, as `hashsvc.algorithms.pdq` packs `pdqhash`'s output.
    """
    values = coefficients.astype(np.float32).ravel()
    median = np.partition(values, 127)[127]
    return np.packbits((values > median)[::-1]).tobytes()
