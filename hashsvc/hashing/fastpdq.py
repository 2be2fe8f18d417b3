"""Fast PDQ for scans: decode small, then apply PDQ's own full-size downsampling, exactly.

The reference pipeline (full decode, `convert("RGB")`, `pdqhash.compute`) spends almost all of
its time on full-size pixels that PDQ only averages down to 64×64. Here:

1. a JPEG is decoded at the smallest libjpeg DCT scale (1/2, 1/4, 1/8; Pillow's `draft`) that
   keeps both sides >= `SCAN.jpeg_min_side` = 192 px, i.e. >= 3 decoded pixels per PDQ cell,
   and (YCbCr JPEGs) as its Y plane only, which is PDQ's luma (by TurboJPEG where installed:
   `decode_turbojpeg`, the same pixels as Pillow's decode for less overhead);
2. an image the decoder did not scale (PNG, WebP, every other format, JPEGs under 384 px) is
   converted to 8-bit luma and not reduced at all;
3. PDQ's blur-and-decimate (two Jarosz box passes with windows sized from the *original*
   dimensions, then sampling 64 rows and columns) is linear and separable, so it is applied to
   the small image as two banded 64-row operators built from the original size, in C
   (`_pdqfast.c`: no NumPy call overhead, so small uploads stop paying more for the filter
   than for their decode). With no reduction this reproduces `pdqhash` bit for bit on Meta's
   golden vectors (see the tests); with it, the only difference is what the reduction removed;
4. the DCT, torben median and bit layout follow Meta's `pdqhashing.cpp`, on floats: rounding
   the 64×64 to bytes to call `pdqhash` costs up to ~20 bits on flat images.

Why these numbers (measured with `loadtests/bench_hashing.py` and its predecessors over the
shared photos, upscaled to 1–12 MP, and the PDQ reference images): a JPEG's agreement with the
reference depends on its decoded short side. Quality >= 80 hashes stay 100% within 10 bits from
160 px up (median 2, p99 6 bits at 192–223 px), while 1.5–2 px per cell drifts up to 32 bits.
Resizing after DCT scaling only added error, so JPEGs stop at step 1; decoding the Y plane gave
the same agreement, ~25% faster. Images without DCT scaling were once box-reduced to 512 px
before a NumPy filter; the C filter reads the whole 8-bit luma for less than the resize
alone cost (3.4 ms CPU on a 720×960 PNG, load ~19) and hashes within 2 bits of the
reference instead of 10. 256 px instead of 192 would tighten JPEG agreement (p99 2, max 4
bits against p99 6, max 14 over 6,000 images) but slow a 1-MP photo ~1.5×: it then decodes at
1/2 scale, not 1/4.

Reference-exact hashing (`indexer hash`, exports, golden vectors) stays in `imaging` +
`algorithms.pdq`; this module is for scans. Its checks, messages and typed errors are
`imaging.decode`'s (`open_checked`, `load_checked`, `decoder_errors`), so bad input fails
here exactly as it fails there; only a JPEG too large to decode at full size passes here, since
it is decoded small.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
from PIL import ExifTags, Image, ImageFile, ImageOps, JpegImagePlugin

from hashsvc.hashing import _pdqfast, decode_png, decode_turbojpeg, decode_webp
from hashsvc.hashing.algorithms.base import HashValue
from hashsvc.hashing.algorithms.pdq import Pdq
from hashsvc.hashing.decode_budget import Lease
from hashsvc.hashing.decode_small_jpeg import luma_scans_only
from hashsvc.hashing.imaging import (
    DEFAULT_LIMITS,
    DecodeLimits,
    Opened,
    admit_decode,
    decode,
    decoder_errors,
    load_checked,
    open_checked,
    to_rgb,
)
from hashsvc.hashing.jpeg_layout import without_ac_scans

FloatArray = npt.NDArray[np.float64]
Float32Array = npt.NDArray[np.float32]
Ratio = tuple[int, int]  # (num, den): original pixel p lies in reduced pixel ⌊(p + ½)·num/den⌋


@dataclass(frozen=True)
class Reduction:
    """How far an upload is shrunk before PDQ's filter; None turns a step off.

    `jpeg_min_side`: JPEGs decode at the smallest DCT scale that keeps both sides at least this
    long. `work_side`: an image the decoder did not scale is reduced with `resample` to at most
    this many pixels per axis (aspect ratio not kept: PDQ maps each axis to 64 cells on its own).
    `jpeg_luma`: a YCbCr JPEG decodes to its Y plane only (with `jpeg_min_side` set).
    `byte_luma`: whatever was decoded in colour is converted to 8-bit luma (Pillow's
    `convert("L")`, ITU-R 601 like PDQ's, rounded to bytes: 1 byte per pixel for the C filter
    to read, where PDQ's float luma is 4; the rounding averages out over a cell's pixels).
    `alias_bits`: a DCT-scaled JPEG whose hash moves more than this when its decode is halved
    again is decoded again at full size (`_scale_sensitive`: content that reaches PDQ only
    as aliasing, like a chessboard), if `DecodeLimits.max_full_decode_pixels` allows.
    `rounding_bits`: an upload with more than this many hash bits decided by rounding alone
    (`_ill_posed`) is decoded again and hashed the reference's way, if
    `DecodeLimits.max_full_decode_pixels` allows.
    `dc_only`: a progressive JPEG decoded at 1/8 scale is decoded without its later AC scans.
    `luma_scans`: any other progressive YCbCr JPEG decoded as its Y plane is decoded without
    its chroma AC scans (`decode_small_jpeg`: the same Y pixels, less entropy decoding).
    `turbojpeg` (with `jpeg_luma`): JPEGs whose Y plane is their luma are decoded by
    TurboJPEG (`decode_turbojpeg`) instead of Pillow, where it is installed.
    `direct_luma` (with `byte_luma`): PNGs and lossy WebPs go to their own decoders
    (`decode_png`, `decode_webp`) for 8-bit luma, where those apply.
    """

    jpeg_min_side: int | None = 192
    work_side: int | None = None
    resample: Image.Resampling = Image.Resampling.BOX
    jpeg_luma: bool = True
    byte_luma: bool = True
    alias_bits: int | None = 16
    rounding_bits: int | None = 16
    dc_only: bool = True
    luma_scans: bool = True
    direct_luma: bool = True
    turbojpeg: bool = True


SCAN = Reduction()  # the scan policy, chosen by measurement (module docstring)
# The reference's pixels:
EXACT = Reduction(jpeg_min_side=None, work_side=None, jpeg_luma=False, byte_luma=False,
                  alias_bits=None, rounding_bits=None, direct_luma=False, turbojpeg=False)
_DIRECT_DECODERS = {"PNG": decode_png, "WEBP": decode_webp}  # luma without Pillow's decode


@dataclass(frozen=True)
class Reduced:
    """An upload decoded small: its luma, plus what PDQ needs to know about the original."""

    luma: npt.NDArray[np.uint8] | Float32Array
    width: int  # the original's size, after EXIF orientation
    height: int
    ratios: tuple[Ratio, Ratio]  # where original rows, then columns, lie in luma (see Ratio)
    format: str
    scan_hash: HashValue | None = None  # its PDQ, once `decode_reduced` has computed it
    studio_range: bool = False  # luma is BT.601 studio-range Y (16-235): a lossy WebP's plane
    coefficients: FloatArray | None = None  # scan_hash's 16×16 DCT (the dihedral hashes')
    reference_rgb: npt.NDArray[np.uint8] | None = None  # set: hash these, the reference way

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
_DCT_BYTES = _DCT.tobytes()  # the same matrix for `_pdqfast.pdq`
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


def pdq_hashes(reduced: Reduced, *, dihedral: bool = False) -> list[HashValue]:
    """PDQ of a reduced upload: one hash, or the 8 dihedral ones for the cost of about one."""
    if reduced.reference_rgb is not None:  # its fast hash was rounding noise (`_ill_posed`)
        return Pdq().hash_rgb(reduced.reference_rgb, dihedral=dihedral)
    if not dihedral:
        return [reduced.scan_hash or _hash(reduced)[0]]
    if reduced.scan_hash is not None and reduced.coefficients is not None:
        coefficients, quality = reduced.coefficients, reduced.scan_hash.quality or 0
    else:
        coefficients, quality = _dct16(reduced)
    # dct16OriginalTo*: each transform's DCT is the original's, re-signed or transposed
    a = coefficients
    variants = [a, (a * _ODD[None, :]).T, a * _CHECKER, (a * _ODD[:, None]).T,
                a * _ODD[:, None], a * _ODD[None, :], a.T, (a * _CHECKER).T]
    return [HashValue(Pdq.name, _bits(v), quality) for v in variants]


def _hash(reduced: Reduced) -> tuple[HashValue, FloatArray]:
    """`pdq_hashes`' single hash, with its 16×16 DCT coefficients, in one C call
    (`_pdqfast.pdq`: filter, DCT, median, bits), the same arithmetic as `_dct16` + `_bits`: a
    small upload paid more for their ~10 NumPy calls (~0.1 ms) than for its decode's tail
    (profile: README Performance)."""
    if min(reduced.width, reduced.height) < _MIN_HASHABLE_DIM:  # the reference's all-zero
        return HashValue(Pdq.name, bytes(32), 0), np.zeros((16, 16))  # hash, quality 0
    if reduced.studio_range:  # the quality needs the 64×64 mapped to full range (`_dct16`)
        coefficients, quality = _dct16(reduced)
        return HashValue(Pdq.name, _bits(coefficients), quality), coefficients
    (row_num, row_den), (col_num, col_den) = reduced.ratios
    pixels = np.ascontiguousarray(reduced.luma)
    value, quality, dct = _pdqfast.pdq(
        pixels, pixels.shape[0], pixels.shape[1], 1, pixels.dtype == np.float32,
        reduced.height, reduced.width, (row_num, row_den), (col_num, col_den), _DCT_BYTES)
    coefficients = np.frombuffer(dct, dtype=np.float32).reshape(16, 16).astype(np.float64)
    return HashValue(Pdq.name, value, quality), coefficients


def decode_reduced(
    data: bytes,
    limits: DecodeLimits = DEFAULT_LIMITS,
    *,
    name: str = "image",
    apply_orientation: bool = True,
    reduction: Reduction = SCAN,
    lease: Lease | None = None,
) -> Reduced:
    """Decode `data` small, or raise what `hashsvc.hashing.imaging.decode` raises, with its message.

    `lease`: the call's share of the decode memory budget (see `hashsvc.hashing.imaging.decode`).
    Where the fast hash is rounding noise (`_ill_posed`), the upload is decoded again the
    reference's way and `reference_rgb` set, if `DecodeLimits.max_full_decode_pixels` allows.
    """
    reduced = _decode_small(data, limits, name=name, apply_orientation=apply_orientation,
                            reduction=reduction, lease=lease)
    if reduction.rounding_bits is None or min(reduced.width, reduced.height) < _MIN_HASHABLE_DIM:
        return reduced
    coefficients = reduced.coefficients
    if reduced.scan_hash is None or coefficients is None:
        value, coefficients = _hash(reduced)
        reduced = replace(reduced, scan_hash=value, coefficients=coefficients)
    if (_ill_posed(coefficients, reduction.rounding_bits)
            and reduced.pixels <= limits.max_full_decode_pixels):
        rgb = decode(data, limits, apply_orientation=apply_orientation, name=name,
                     lease=lease).rgb
        reduced = replace(reduced, reference_rgb=rgb)
    return reduced


def _decode_small(
    data: bytes,
    limits: DecodeLimits,
    *,
    name: str,
    apply_orientation: bool,
    reduction: Reduction,
    lease: Lease | None,
) -> Reduced:
    """`decode_reduced` but for its `_ill_posed` check."""
    opened = open_checked(data, limits, name)
    if reduction.direct_luma and reduction.byte_luma:
        direct = _direct_luma(data, opened, limits, name, lease)
        if direct is not None:
            pixels, studio_range = direct
            height, width = pixels.shape
            return Reduced(pixels, width, height, ((height, height), (width, width)),
                           opened.format, studio_range=studio_range)
    side = reduction.jpeg_min_side
    layout = opened.jpeg
    if (side and reduction.jpeg_luma and reduction.turbojpeg and opened.format == "JPEG"
            and layout is not None and decode_turbojpeg.available()):
        turbo, admitted = decode_turbojpeg.y_plane(
            data, opened, limits, name, side, dc_only=reduction.dc_only,
            luma_scans=reduction.luma_scans, apply_orientation=apply_orientation, lease=lease)
        if turbo is not None:
            rows, cols = turbo.plane.shape
            ratios = ((rows, rows * turbo.scale), (cols, cols * turbo.scale))
            reduced = Reduced(turbo.plane, turbo.width, turbo.height, ratios, opened.format)
            return _unless_scale_sensitive(reduced, turbo.scale, data, limits, name,
                                           apply_orientation, reduction, lease)
        opened = open_checked(data, limits, name)  # `draft` is once per image: start again
        if admitted:  # the same decode's budget is held already: not twice
            lease = None
    if (side and reduction.dc_only and opened.format == "JPEG" and layout is not None
            and layout.progressive and min(opened.image.size) // side >= 8):
        # Decoded at 1/8 scale (Pillow's `draft` rule below), a block is its DC coefficient:
        # the AC scans' entropy decoding, most of the time, is skipped (`without_ac_scans`).
        dc_only = without_ac_scans(data)
        if dc_only is not None:
            with decoder_errors(name, opened.format):
                opened = opened._replace(
                    image=Image.open(io.BytesIO(dc_only), formats=("JPEG",)))
    elif side and reduction.jpeg_luma and reduction.luma_scans:
        opened = luma_scans_only(opened, data, name)
    image, fmt = opened.image, opened.format
    width, height = image.size
    dct_scale = 1  # libjpeg decoded ⌈side / dct_scale⌉ pixels per side
    with decoder_errors(name, fmt):
        if side and isinstance(image, JpegImagePlugin.JpegImageFile):  # MPO included
            # The largest DCT scale keeping both sides >= side (none for smaller images), and
            # for a YCbCr JPEG only its Y plane: PDQ's luma, without chroma IDCT, upsampling
            # or colour conversion (measured: same agreement, a 1-MP scan ~25% faster).
            drafted = image.draft("L" if reduction.jpeg_luma else "RGB", (side, side))
            if drafted is not None:
                dct_scale = round(width / drafted[1][2])
        if isinstance(image, ImageFile.ImageFile):  # one decoder call, not one per 64 KiB
            image.decodermaxblock = max(len(data), ImageFile.MAXBLOCK)
        load_checked(opened, limits, name, full=False, lease=lease)
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1) if apply_orientation else 1
        if orientation != 1:
            ImageOps.exif_transpose(image, in_place=True)  # after `draft`: on the small image
            if orientation in (5, 6, 7, 8):  # these swap the axes
                width, height = height, width
        # A JPEG decoded as its Y plane stays grey; everything else converts as the reference,
        # then (`byte_luma`) to Pillow's 8-bit luma, which the C filter reads directly.
        if image.mode == "L" and (reduction.byte_luma or (side and reduction.jpeg_luma)):
            small = image  # grey as decoded: its RGB conversion's luma is the same bytes
        else:
            small = to_rgb(image)
            if reduction.byte_luma:
                small = small.convert("L")
        decoded = small.size
        if dct_scale == 1 and reduction.work_side:
            target = (min(decoded[0], reduction.work_side), min(decoded[1], reduction.work_side))
            if target != decoded:
                small = small.resize(target, reduction.resample)
    luma: npt.NDArray[np.uint8] | Float32Array
    if small.mode == "L":
        luma = np.asarray(small)  # bytes: the operators' gather then moves a quarter as much
    else:
        red, green, blue = (np.asarray(plane, dtype=np.float32) for plane in small.split())
        red *= _LUMA[0]  # fillFloatLumaFromRGB, in float32 as there: planes are ~5× faster
        green *= _LUMA[1]  # than strided H×W×3 arithmetic, and a matmul would call BLAS
        blue *= _LUMA[2]
        luma = red + green + blue
    ratios = ((small.height, decoded[1] * dct_scale), (small.width, decoded[0] * dct_scale))
    return _unless_scale_sensitive(Reduced(luma, width, height, ratios, fmt), dct_scale, data,
                                   limits, name, apply_orientation, reduction, lease)


def _unless_scale_sensitive(reduced: Reduced, dct_scale: int, data: bytes,
                            limits: DecodeLimits, name: str, apply_orientation: bool,
                            reduction: Reduction, lease: Lease | None) -> Reduced:
    """`reduced` (decoded at 1/`dct_scale`), or where that DCT-scaled decode moves the hash
    (`_scale_sensitive`) and `DecodeLimits.max_full_decode_pixels` allows, the upload decoded
    again at full size."""
    if (dct_scale == 1 or reduction.alias_bits is None
            or reduced.pixels > limits.max_full_decode_pixels):
        return reduced
    value, coefficients = _hash(reduced)
    reduced = replace(reduced, scan_hash=value, coefficients=coefficients)
    if _scale_sensitive(reduced, reduction.alias_bits):
        return _decode_small(data, limits, name=name, apply_orientation=apply_orientation,
                             reduction=replace(reduction, jpeg_min_side=None), lease=lease)
    return reduced


def _direct_luma(data: bytes, opened: Opened, limits: DecodeLimits, name: str,
                 lease: Lease | None) -> tuple[npt.NDArray[np.uint8], bool] | None:
    """8-bit luma from the format's own decoder (and whether it is studio range), under
    `load_checked`'s caps and budget; None where it does not apply or refuses the file (then
    Pillow decodes it, and reports errors)."""
    decoder = _DIRECT_DECODERS.get(opened.format)
    if decoder is None or not decoder.applies(data):
        return None
    with decoder_errors(name, opened.format):
        admit_decode(opened, limits, name, full=False, lease=lease)
        luma: tuple[npt.NDArray[np.uint8], bool] | None = decoder.luma(data, *opened.image.size)
    return luma


def _scale_sensitive(reduced: Reduced, bits: int) -> bool:
    """Whether the hash of a DCT-scaled decode moves more than `bits` when it is halved again.

    A DCT-scaled decode is the image box-filtered before PDQ's own filter. For photographs
    that changes little, but content above PDQ's 64-cell sampling rate (a chessboard, fine
    stripes) reaches the reference's hash only as aliasing, which any extra prefilter
    reshapes: a 13.4 MP chessboard of 25 px squares hashed 26 bits from the reference at 1/8
    scale, one of 45 px 40 bits. Halving the decode once more (a 2×2 mean, then PDQ again:
    ~0.1 ms) exposes that sensitivity: over 60 corpus photos, screenshots and phone JPEGs it
    moved their hashes 2–14 bits; those two chessboards, 62 and 28. At 20 bits a 640×480
    chessboard of 11 px squares (moved exactly 20) hashed 28 bits off at 1/2 scale, 0 at full
    size; 16 catches it, and over the 140 DCT-scaled JPEGs of the seed-1 300-file corpus
    (upload_corpus.py) falls back on 3 instead of 2 (moves 32, 24, 18; next 16, 14).
    """
    (row_num, row_den), (col_num, col_den) = reduced.ratios
    halved = np.asarray(Image.fromarray(np.ascontiguousarray(reduced.luma)).reduce(2))
    coarser = Reduced(halved, reduced.width, reduced.height,
                      ((row_num, 2 * row_den), (col_num, 2 * col_den)), reduced.format)
    here, there = pdq_hashes(reduced)[0].value, _hash(coarser)[0].value
    return (int.from_bytes(here, "big") ^ int.from_bytes(there, "big")).bit_count() > bits


_ROUNDING = 0.01  # coefficients closer than this to the median: bits set by rounding alone


def _ill_posed(coefficients: FloatArray, bits: int) -> bool:
    """Whether more than `bits` of PDQ's 16×16 coefficients lie within `_ROUNDING` of their
    median: then the hash is decided by float rounding, not by the image.

    Why (issue 15): synthetic chessboards and stripes (5 px squares at 640×480, 800×600...)
    hashed 44-145 bits from `pdqhash` even from the same full-size pixels. Their 64×64 is
    PDQ's sampling aliased into frequencies above the 16×16 it keeps, so most coefficients are
    zero but for rounding (1e-15 in our double DCT, ~1e-5 in the reference's float one) and
    the median is one of them: each side's arithmetic order sets those bits, so no faithful
    reimplementation agrees with the reference short of repeating its float arithmetic
    step for step. With at most `bits` such coefficients, rounding cannot move more bits than
    that; past it the reference's own pipeline is the only faithful hash. Measured: over the
    600 files of `upload_corpus.py --seed 1`, at most 7 coefficients within 0.01 of a median
    (3 for quality >= 80), so none falls back; the boards that drifted had 118 to 256.

    The dihedral hashes re-sign the coefficients (`pdq_hashes`), each sign pattern with a
    median of its own, so each of the 4 patterns is checked (transposing changes no median).
    """
    values = np.ascontiguousarray(coefficients, dtype=np.float32).tobytes()
    return _pdqfast.near_median(values, _ROUNDING) > bits  # in C: 45 µs in NumPy, 5 here


def pdq_from_luma(
    luma: npt.NDArray[np.uint8] | Float32Array,
    rows: int,
    cols: int,
    ratios: tuple[Ratio, Ratio] | None = None,
) -> tuple[FloatArray, int]:
    """PDQ's 64×64 downsample and quality of a `rows`×`cols` image, from its reduced `luma`.

    `ratios` (rows, then columns) say where original pixels lie in `luma` (see `Ratio`); by
    default the ratio of the sizes. The work is `_pdqfast.downsample` (C): PDQ's two Jarosz
    box passes, sized from the original, and its decimation, as one banded operator per axis
    applied to `luma` (see that file for why C, and `Ratio` for the pixel mapping).
    """
    if ratios is None:
        ratios = ((luma.shape[0], rows), (luma.shape[1], cols))
    pixels = np.ascontiguousarray(luma)
    block, quality = _pdqfast.downsample(
        pixels, pixels.shape[0], pixels.shape[1], 1, pixels.dtype == np.float32, rows, cols,
        ratios[0], ratios[1])
    return np.frombuffer(block, dtype=np.float32).reshape(64, 64).astype(np.float64), quality


def _dct16(reduced: Reduced) -> tuple[FloatArray, int]:
    """dct64To16 of PDQ's 64×64 (the 16×16 lowest frequencies but DC), with quality.

    Below PDQ's minimum size the reference hashes to all zeros with quality 0; zero
    coefficients give exactly that.
    """
    if min(reduced.width, reduced.height) < _MIN_HASHABLE_DIM:
        return np.zeros((16, 16)), 0
    block, quality = pdq_from_luma(reduced.luma, reduced.height, reduced.width, reduced.ratios)
    if reduced.studio_range:  # to full range after the (linear) filter, not per pixel before
        block = (block - 16.0) * (255.0 / 219.0)
        quality = _quality(block)
    dct = np.einsum("ik,kl->il", _DCT, block)
    return np.einsum("il,jl->ij", dct, _DCT), quality


def _quality(block: FloatArray) -> int:
    """pdqImageDomainQualityMetric of a 64×64, as `_pdqfast.c`'s `quality` computes it."""
    cells = block.astype(np.float32)
    scale = np.float32(100.0) / np.float32(255.0)
    down = np.trunc((cells[:-1] - cells[1:]) * scale)
    across = np.trunc((cells[:, :-1] - cells[:, 1:]) * scale)
    return min(100, int(np.abs(down).sum() + np.abs(across).sum()) // 90)


def _bits(coefficients: FloatArray) -> bytes:
    """pdqBuffer16x16ToBits: bit i·16+j is set when that coefficient exceeds the median.

    The median is torben's, the lower of the two middle values; the 256-bit number is stored
    big-endian, as `hashsvc.hashing.algorithms.pdq` packs `pdqhash`'s output.
    """
    values = coefficients.astype(np.float32).ravel()
    median = np.partition(values, 127)[127]
    return np.packbits((values > median)[::-1]).tobytes()
