"""Bytes in, RGB pixels out: the one place hashsvc decodes images, with every limit in it.

Why one place: every decoder quirk (EXIF orientation, palette transparency, 16-bit grey, CMYK,
animation frames) and every defence (byte caps, decompression bombs, formats we refuse to parse)
must apply identically to the server, the indexer and the evaluation tools, or their hashes drift.

The pixel conversion mirrors python-threatexchange (Pillow `convert("RGB")`), because that is the
pipeline that produced Meta's bit-exact PDQ reference vectors; we only add the cases where a plain
`convert` warns or fails.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from hashsvc.errors import (
    CorruptImageError,
    HashsvcError,
    ImageTooLargeError,
    ImageTooSmallError,
    TruncatedImageError,
    UnsupportedFormatError,
)
from hashsvc.hashing.decode_budget import Lease, estimate_peak_bytes
from hashsvc.hashing.jpeg_layout import MAX_SEGMENTS, JpegLayout, read_layout

try:  # HEIC/HEIF is optional: a missing plugin narrows the formats, it does not break decoding.
    import pillow_heif

    pillow_heif.register_heif_opener()
    _HEIF_FORMATS: tuple[str, ...] = ("HEIF",)
except ImportError:  # pragma: no cover - depends on the install
    _HEIF_FORMATS = ()

# Formats a platform upload may be in. Everything else (EPS via Ghostscript, PSD, ICO, …) is
# refused before a decoder runs: each extra decoder is attack surface for no detection benefit.
SUPPORTED_FORMATS: tuple[str, ...] = (
    "JPEG",
    "PNG",
    "GIF",
    "WEBP",
    "BMP",
    "TIFF",
    "AVIF",
    *_HEIF_FORMATS,
)

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated upload is an error, not a grey half-image
# Pillow's own bomb check (a process-wide pixel cap) would fire inside `Image.open` with a vaguer
# message and a fixed limit; `decode` checks the header's dimensions against `DecodeLimits`
# before any pixel is decoded, so the global check is switched off in favour of that one.
Image.MAX_IMAGE_PIXELS = None

RGBArray = npt.NDArray[np.uint8]


# Formats whose decoder can produce a reduced image without decoding every pixel (libjpeg's DCT
# scaling, used by `hashsvc.hashing.fastpdq`); every other format costs a full decode.
SCALABLE_FORMATS: tuple[str, ...] = ("JPEG", "MPO")


@dataclass(frozen=True)
class DecodeLimits:
    """Limits a platform would choose for uploads; all checked before any pixel is decoded.

    `max_full_decode_pixels` caps every decode at full size: every format but JPEG always, and
    JPEG too wherever the full pixels are hashed (HashImage, pHash/dHash, `--no-scan-fast-pdq`).
    Only the scan fast path decodes JPEGs at reduced scale, so only it may take a larger JPEG.
    Measured (2026-11-23, shared 2-core machine, load ~15; peak RSS of a fresh process): a
    24 MP PNG took 2.5 s and 150 MB on the fast PDQ path (14 s and 850 MB on the reference
    path), a 50 MP JPEG 0.15 s and 46 MB on the fast path; a 50 MP JPEG decoded at full size
    took 7.8 s and 1.5 GB. The "cap" rows of `loadtests/bench_hashing.py` time them against the
    reference.

    `max_jpeg_scans` bounds a JPEG's decode time (`hashsvc.hashing.jpeg_layout`), and
    `decode_memory_budget` the memory of the decodes a process runs at once
    (`hashsvc.hashing.decode_budget`; every `Scanner` enforces it, `decode` alone does not).
    """

    max_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 50_000_000
    max_full_decode_pixels: int = 24_000_000
    max_side: int = 30_000
    min_side: int = 8
    max_jpeg_scans: int = 100
    decode_memory_budget: int = 1024 * 1024 * 1024


DEFAULT_LIMITS = DecodeLimits()


@dataclass
class DecodedImage:
    """A decoded upload: RGB pixels plus what we learnt about the file."""

    image: Image.Image
    format: str
    width: int
    height: int

    @cached_property
    def rgb(self) -> RGBArray:
        """H×W×3 uint8 array, made once and shared by every algorithm."""
        return np.asarray(self.image, dtype=np.uint8)

    @property
    def pixels(self) -> int:
        return self.width * self.height


def decode(
    data: bytes,
    limits: DecodeLimits = DEFAULT_LIMITS,
    *,
    apply_orientation: bool = True,
    name: str = "image",
    lease: Lease | None = None,
) -> DecodedImage:
    """Decode `data` to RGB, or raise an `ImageError` subclass whose message says what and why.

    `apply_orientation=False` hashes the stored pixels, as Meta's reference tools do; scans apply
    EXIF orientation so a photo is hashed the way people see it. `lease`: the call's share of
    the decode memory budget, which this decode's estimated peak is reserved from.
    """
    opened = open_checked(data, limits, name)
    with decoder_errors(name, opened.format):
        load_checked(opened, limits, name, full=True, lease=lease)
        image = opened.image
        if apply_orientation:
            image = ImageOps.exif_transpose(image)
        rgb = to_rgb(image)
    return DecodedImage(image=rgb, format=opened.format, width=rgb.width, height=rgb.height)


class Opened(NamedTuple):
    """An upload opened lazily: its header is read, no pixel is decoded yet."""

    image: Image.Image
    format: str
    jpeg: JpegLayout | None  # a JPEG's scans and sampling, read from its markers


def open_checked(data: bytes, limits: DecodeLimits, name: str) -> Opened:
    """Open `data` lazily (header only) and enforce every limit that the header can tell:
    bytes, format, pixels (decompression bombs), sides and a JPEG's scans. Every decoding path
    starts here, and decodes through `load_checked`."""
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(
            f"{name}: {len(data):,} bytes exceeds the limit of {limits.max_bytes:,} bytes"
        )
    if not data:
        raise CorruptImageError(f"{name}: empty file")
    layout = read_layout(data, max_scans=limits.max_jpeg_scans)  # before Pillow parses markers
    if layout is not None:
        _check_jpeg_layout(name, layout, limits)
    try:
        with decoder_errors(name, None):
            image: Image.Image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except UnidentifiedImageError:
        raise UnsupportedFormatError(
            f"{name}: not a supported image format "
            f"(supported: {', '.join(f.lower() for f in SUPPORTED_FORMATS)})"
        ) from None
    fmt = image.format or "unknown"
    _check_dimensions(name, fmt, image.width, image.height, limits)
    return Opened(image, fmt, layout if fmt in SCALABLE_FORMATS else None)


def load_checked(
    opened: Opened, limits: DecodeLimits, name: str, *, full: bool, lease: Lease | None
) -> None:
    """Decode `opened`'s pixels at the size it is set to (after any `draft`): the one place
    every decode passes through, so every decode is capped and budgeted the same way.

    `full`: the pixels will be hashed at this size (the reference path), not shrunk at once.
    Whatever decodes at full size (every format but a drafted JPEG) is held to
    `max_full_decode_pixels`; then the decode's estimated peak memory is reserved from `lease`.
    Call inside `decoder_errors`.
    """
    admit_decode(opened, limits, name, full=full, lease=lease)
    opened.image.load()


def admit_decode(
    opened: Opened, limits: DecodeLimits, name: str, *, full: bool, lease: Lease | None
) -> None:
    """`load_checked`'s checks without its decode: for a decoder other than Pillow's
    (`hashsvc.hashing.decode_png`, `decode_webp`), which must be held to the same caps."""
    width, height = opened.image.size
    pixels = width * height
    if pixels > limits.max_full_decode_pixels:
        raise ImageTooLargeError(
            f"{name}: {width}×{height} {opened.format} ({pixels:,} pixels) exceeds the limit of "
            f"{limits.max_full_decode_pixels:,} pixels for an image decoded at full size (only the "
            "fast PDQ scan path decodes JPEGs at reduced scale; refused before decoding)")
    if lease is not None:
        lease.reserve(estimate_peak_bytes(pixels, mode=opened.image.mode, fmt=opened.format,
                                          full=full, layout=opened.jpeg), name)


@contextmanager
def decoder_errors(name: str, fmt: str | None) -> Iterator[None]:
    """Turn any failure of a decoder inside the block into an `ImageError` naming the image.

    Decoders fail in every way Python can (OSError, SyntaxError, ValueError, EOFError, but also
    TypeError from a TIFF tag of the wrong type, RuntimeError from libavif, MemoryError from a
    header that asks for too much); whatever it is, the upload is what is wrong, so the caller
    gets INVALID_ARGUMENT with the decoder's message, never UNKNOWN. `fmt` None: the header
    was being read. Errors hashsvc raises on purpose pass through unchanged.
    """
    failed = f"corrupt {fmt} data" if fmt else "cannot read image header"
    try:
        yield
    except (HashsvcError, UnidentifiedImageError):
        raise
    except MemoryError:
        raise ImageTooLargeError(
            f"{name}: not enough memory to decode this {fmt or 'image'}") from None
    except OSError as err:
        if fmt and ("truncated" in str(err) or "broken data stream" in str(err)):
            raise TruncatedImageError(f"{name}: truncated {fmt} file: {err}") from None
        raise CorruptImageError(f"{name}: {failed}: {_describe(err)}") from None
    except Exception as err:  # a decoder bug is still a bad upload to the caller
        raise CorruptImageError(f"{name}: {failed}: {_describe(err)}") from None


def _describe(err: Exception) -> str:
    """The decoder's message, bounded (it can quote the file), or its type if it has none."""
    text = str(err) or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _check_jpeg_layout(name: str, layout: JpegLayout, limits: DecodeLimits) -> None:
    if layout.segments > MAX_SEGMENTS:
        raise ImageTooLargeError(
            f"{name}: JPEG with more than {MAX_SEGMENTS:,} marker segments (real JPEGs have a "
            "few dozen; refused before parsing)")
    if layout.scans > limits.max_jpeg_scans:
        raise ImageTooLargeError(
            f"{name}: JPEG with more than {limits.max_jpeg_scans:,} scans (real progressive "
            "JPEGs have about 10, and each scan costs another pass over the image; refused "
            "before decoding)")


def _check_dimensions(name: str, fmt: str, width: int, height: int, limits: DecodeLimits) -> None:
    pixels = width * height
    if pixels > limits.max_pixels or max(width, height) > limits.max_side:
        raise ImageTooLargeError(
            f"{name}: {width}×{height} ({pixels:,} pixels) exceeds the limit of "
            f"{limits.max_pixels:,} pixels / {limits.max_side:,} per side "
            "(refused before decoding: possible decompression bomb)"
        )
    if min(width, height) < limits.min_side:
        raise ImageTooSmallError(
            f"{name}: {width}×{height} is smaller than the minimum of "
            f"{limits.min_side} pixels per side"
        )


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB exactly as the PDQ reference pipeline does.

    Plain `convert("RGB")` is kept because the golden vectors depend on it (16-bit grey and
    grey+alpha included); the few modes it cannot take directly (e.g. `La`) go through RGBA.
    Pillow's palette-transparency warning is silenced: the conversion it recommends is the same.
    """
    if image.mode == "RGB":
        return image
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            return image.convert("RGB")
        except ValueError:
            return image.convert("RGBA").convert("RGB")


class Upload:
    """The bytes of one image, decoded at most once and only if a perceptual hash asks for it.

    Exact kinds (MD5, SHA-256) read `data`; a scan that wants only them never runs a decoder.
    """

    __slots__ = ("_decoded", "apply_orientation", "data", "lease", "limits", "name")

    def __init__(
        self,
        data: bytes,
        *,
        name: str = "image",
        limits: DecodeLimits = DEFAULT_LIMITS,
        apply_orientation: bool = True,
    ) -> None:
        self.data = data
        self.name = name
        self.limits = limits
        self.apply_orientation = apply_orientation
        self.lease: Lease | None = None  # set by the scanner: the call's decode memory budget
        self._decoded: DecodedImage | None = None

    @property
    def pixels(self) -> int:
        """Pixels of the decoded image, or 0 if nothing needed decoding."""
        return self._decoded.pixels if self._decoded is not None else 0

    @property
    def decoded(self) -> DecodedImage:
        if self._decoded is None:
            self._decoded = decode(
                self.data, self.limits, apply_orientation=self.apply_orientation, name=self.name,
                lease=self.lease,
            )
        return self._decoded
