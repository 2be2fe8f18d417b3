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
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from hashsvc.errors import (
    CorruptImageError,
    ImageTooLargeError,
    ImageTooSmallError,
    TruncatedImageError,
    UnsupportedFormatError,
)

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
# scaling, used by `hashsvc.fastpdq`); every other format costs a full decode.
SCALABLE_FORMATS: tuple[str, ...] = ("JPEG", "MPO")


@dataclass(frozen=True)
class DecodeLimits:
    """Limits a platform would choose for uploads; all checked before any pixel is decoded.

    `max_full_decode_pixels` caps the formats that can only be decoded at full size (PNG, WebP,
    GIF, …): their cost grows with every pixel, a JPEG's (decoded at reduced scale) mostly with
    its bytes. Measured (2026-11-23, shared 2-core machine, load ~15; peak RSS of a fresh
    process): a 24 MP PNG took 2.5 s and 150 MB on the fast PDQ path (14 s and 850 MB on the
    reference path), a 50 MP JPEG 0.15 s and 46 MB on the fast path. The "cap" rows of
    `loadtests/bench_hashing.py` time them against the reference.
    """

    max_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 50_000_000
    max_full_decode_pixels: int = 24_000_000
    max_side: int = 30_000
    min_side: int = 8


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
) -> DecodedImage:
    """Decode `data` to RGB, or raise an `ImageError` subclass whose message says what and why.

    `apply_orientation=False` hashes the stored pixels, as Meta's reference tools do; scans apply
    EXIF orientation so a photo is hashed the way people see it.
    """
    image, fmt = open_checked(data, limits, name)
    try:
        image.load()
        if apply_orientation:
            image = ImageOps.exif_transpose(image)
        rgb = to_rgb(image)
    except OSError as err:
        if "truncated" in str(err) or "broken data stream" in str(err):
            raise TruncatedImageError(f"{name}: truncated {fmt} file: {err}") from None
        raise CorruptImageError(f"{name}: corrupt {fmt} data: {err}") from None
    except (SyntaxError, ValueError, EOFError) as err:
        raise CorruptImageError(f"{name}: corrupt {fmt} data: {err}") from None
    return DecodedImage(image=rgb, format=fmt, width=rgb.width, height=rgb.height)


def open_checked(data: bytes, limits: DecodeLimits, name: str) -> tuple[Image.Image, str]:
    """Open `data` lazily (header only) and enforce every limit that the header can tell:
    bytes, format, pixels (decompression bombs) and sides. Every decoding path starts here."""
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(
            f"{name}: {len(data):,} bytes exceeds the limit of {limits.max_bytes:,} bytes"
        )
    if not data:
        raise CorruptImageError(f"{name}: empty file")
    try:
        image: Image.Image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except UnidentifiedImageError:
        raise UnsupportedFormatError(
            f"{name}: not a supported image format "
            f"(supported: {', '.join(f.lower() for f in SUPPORTED_FORMATS)})"
        ) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise CorruptImageError(f"{name}: cannot read image header: {err}") from None
    fmt = image.format or "unknown"
    _check_dimensions(name, fmt, image.width, image.height, limits)
    return image, fmt


def _check_dimensions(name: str, fmt: str, width: int, height: int, limits: DecodeLimits) -> None:
    pixels = width * height
    if pixels > limits.max_pixels or max(width, height) > limits.max_side:
        raise ImageTooLargeError(
            f"{name}: {width}×{height} ({pixels:,} pixels) exceeds the limit of "
            f"{limits.max_pixels:,} pixels / {limits.max_side:,} per side "
            "(refused before decoding: possible decompression bomb)"
        )
    if pixels > limits.max_full_decode_pixels and fmt not in SCALABLE_FORMATS:
        raise ImageTooLargeError(
            f"{name}: {width}×{height} {fmt} ({pixels:,} pixels) exceeds the limit of "
            f"{limits.max_full_decode_pixels:,} pixels for formats decoded at full size "
            "(only JPEG decodes at reduced scale; refused before decoding)"
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

    __slots__ = ("_decoded", "apply_orientation", "data", "limits", "name")

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
        self._decoded: DecodedImage | None = None

    @property
    def pixels(self) -> int:
        """Pixels of the decoded image, or 0 if nothing needed decoding."""
        return self._decoded.pixels if self._decoded is not None else 0

    @property
    def decoded(self) -> DecodedImage:
        if self._decoded is None:
            self._decoded = decode(
                self.data, self.limits, apply_orientation=self.apply_orientation, name=self.name
            )
        return self._decoded
