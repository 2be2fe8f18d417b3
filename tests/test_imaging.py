"""Decoding: every supported format, every limit, and a precise error for each bad input."""

from __future__ import annotations

import hashlib
import io

import pytest
from PIL import Image

from hashsvc.errors import (
    CorruptImageError,
    ImageTooLargeError,
    ImageTooSmallError,
    TruncatedImageError,
    UnsupportedFormatError,
)
from hashsvc.hashing.algorithms import PDQ
from hashsvc.hashing.imaging import SUPPORTED_FORMATS, DecodeLimits, Upload, decode
from tests.conftest import BRIDGE_ORIGINAL, IMAGES, encode_image, hamming, png_header_only

BRIDGE = Image.open(BRIDGE_ORIGINAL).convert("RGB")
BRIDGE_HASH = PDQ.compute(Upload(BRIDGE_ORIGINAL.read_bytes())).value


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "AVIF", "HEIF"])
def test_supported_formats_decode_and_hash_close_to_the_original(fmt: str) -> None:
    assert fmt in SUPPORTED_FORMATS
    data = encode_image(BRIDGE, fmt, **({"quality": 90} if fmt in ("JPEG", "WEBP", "AVIF") else {}))
    decoded = decode(data)
    assert decoded.format == fmt
    assert decoded.image.mode == "RGB" and decoded.rgb.shape == (BRIDGE.height, BRIDGE.width, 3)
    assert hamming(PDQ.compute(Upload(data)).value, BRIDGE_HASH) <= 16


def test_animated_gif_uses_the_first_frame() -> None:
    white, black = Image.new("RGB", BRIDGE.size, "white"), Image.new("RGB", BRIDGE.size, "black")
    data = encode_image(BRIDGE, "GIF", save_all=True, append_images=[white, black], duration=100)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    assert hamming(PDQ.compute(Upload(data)).value, BRIDGE_HASH) <= 16


def test_refused_format_is_named() -> None:
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(UnsupportedFormatError, match=r"not a supported image format.*jpeg"):
        decode(eps)
    ico = encode_image(BRIDGE.resize((32, 32)), "ICO")
    with pytest.raises(UnsupportedFormatError):
        decode(ico)


def test_truncated_file_is_reported_as_truncated() -> None:
    data = BRIDGE_ORIGINAL.read_bytes()
    with pytest.raises(TruncatedImageError, match=r"upload.jpg: truncated JPEG"):
        decode(data[: len(data) // 2], name="upload.jpg")


def test_garbage_after_a_valid_header_is_corrupt() -> None:
    png = encode_image(BRIDGE.resize((64, 64)), "PNG")
    broken = png[:60] + bytes(200) + png[260:]
    with pytest.raises((CorruptImageError, TruncatedImageError)):
        decode(broken)


def test_empty_input() -> None:
    with pytest.raises(CorruptImageError, match=r"empty"):
        decode(b"")


def test_decompression_bomb_is_refused_before_decoding() -> None:
    with pytest.raises(ImageTooLargeError, match=r"50000×50000 .* decompression bomb"):
        decode(png_header_only(50_000, 50_000))


def test_limits_are_configurable() -> None:
    data = BRIDGE_ORIGINAL.read_bytes()
    with pytest.raises(ImageTooLargeError, match=r"bytes exceeds the limit"):
        decode(data, DecodeLimits(max_bytes=1000))
    with pytest.raises(ImageTooLargeError, match=r"pixels"):
        decode(data, DecodeLimits(max_pixels=10_000))
    with pytest.raises(ImageTooSmallError, match=r"smaller than the minimum of 5000"):
        decode(data, DecodeLimits(min_side=5000))


def test_tiny_images_below_the_minimum_are_refused() -> None:
    with pytest.raises(ImageTooSmallError, match=r"4×4"):
        decode(encode_image(BRIDGE.resize((4, 4)), "PNG"))
    # …but the reference's own tiny image (34×42) is accepted.
    assert decode((IMAGES / "misc" / "wee.jpg").read_bytes()).width == 34


def test_exact_hashes_hash_the_original_bytes_without_decoding() -> None:
    from hashsvc.hashing.algorithms import ALGORITHMS

    data = b"not an image at all"
    upload = Upload(data)
    assert ALGORITHMS["md5"].compute(upload).hex == hashlib.md5(data).hexdigest()
    assert ALGORITHMS["sha256"].compute(upload).hex == hashlib.sha256(data).hexdigest()
    with pytest.raises(UnsupportedFormatError):
        PDQ.compute(upload)
