"""The scan path's own PNG and WebP decoders (decode_png: libspng; decode_webp: Pillow's libwebp).

They must give the pixels Pillow gives (or, for a lossy WebP's Y plane, the same luma up to
rounding), take only the files where that holds, and be held to every decode limit before
they allocate anything.
"""

from __future__ import annotations

import io
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from hashsvc.errors import ImageError, ImageTooLargeError
from hashsvc.hashing import decode_png, decode_webp
from hashsvc.hashing.decode_budget import MemoryBudget
from hashsvc.hashing.fastpdq import EXACT, decode_reduced, pdq_fast, pdq_hashes
from hashsvc.hashing.imaging import DecodeLimits, decode, to_rgb
from hashsvc.matching.variants import trimmed_pdq_fast
from loadtests.upload_corpus import find_tools, missing_tools
from tests.conftest import BRIDGE_ORIGINAL, encode_image, hamming, png_header_only

PHOTO = Image.open(BRIDGE_ORIGINAL).convert("RGB").reduce(3)  # 533×334 of a real photo


def _pillow_luma(data: bytes) -> np.ndarray:
    """What the fast path made of any upload before these decoders: Pillow's L of its RGB."""
    return np.asarray(to_rgb(Image.open(io.BytesIO(data))).convert("L"))


def _assert_pillows_luma(decoded: tuple[np.ndarray, bool] | None, data: bytes) -> None:
    assert decoded is not None and not decoded[1]  # full range, and Pillow's bytes exactly
    assert np.array_equal(decoded[0], _pillow_luma(data))


def _with_chunk(png: bytes, kind: bytes, body: bytes) -> bytes:
    """`png` with a chunk inserted right after IHDR."""
    chunk = (struct.pack(">I", len(body)) + kind + body
             + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
    return png[:33] + chunk + png[33:]


PNG_KINDS = {
    "rgb": lambda: encode_image(PHOTO, "PNG"),
    "rgba": lambda: encode_image(PHOTO.convert("RGBA"), "PNG"),
    "grey": lambda: encode_image(PHOTO.convert("L"), "PNG"),
    "grey-alpha": lambda: encode_image(PHOTO.convert("LA"), "PNG"),
    "palette": lambda: encode_image(PHOTO.quantize(200), "PNG"),
    "palette-4-bit-transparent": lambda: encode_image(PHOTO.quantize(12), "PNG", bits=4,
                                                      transparency=3),
}


@pytest.mark.parametrize("kind", PNG_KINDS)
def test_libspng_gives_pillows_luma_for_every_png_it_takes(kind: str) -> None:
    data = PNG_KINDS[kind]()
    assert decode_png.applies(data)
    _assert_pillows_luma(decode_png.luma(data, *PHOTO.size), data)


def test_pngs_pillow_scales_or_turns_its_own_way_are_left_to_pillow() -> None:
    grey16 = encode_image(Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
                                          * 16), "PNG")
    assert Image.open(io.BytesIO(grey16)).mode == "I;16"
    one_bit = encode_image(PHOTO.convert("1"), "PNG")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: Pillow applies it
    rotated = _with_chunk(encode_image(PHOTO, "PNG"), b"eXIf", exif.tobytes()[6:])
    magick = _with_chunk(encode_image(PHOTO, "PNG"), b"tEXt", b"Raw profile type exif\0...")
    for data in (grey16, one_bit, rotated, magick):
        assert not decode_png.applies(data)
    assert pdq_fast(rotated).value == pdq_fast(encode_image(PHOTO.transpose(
        Image.Transpose.ROTATE_270), "PNG")).value  # the fallback still turns it


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_a_lossy_webps_y_plane_is_its_luma_up_to_rounding(mode: str) -> None:
    data = encode_image(PHOTO.convert(mode), "WEBP", quality=80)
    assert decode_webp.applies(data)
    decoded = decode_webp.luma(data, *PHOTO.size)
    assert decoded is not None and decoded[1]  # studio range: 16-235
    full_range = (decoded[0].astype(float) - 16) * 255 / 219
    difference = np.abs(full_range - _pillow_luma(data))
    # Measured: mean 0.17, a few saturated pixels up to 10.5, where Pillow's
    # decode clips RGB.
    assert difference.mean() < 0.4 and difference.max() <= 12


def test_a_lossless_webp_gives_pillows_luma_exactly() -> None:
    data = encode_image(PHOTO, "WEBP", lossless=True)
    _assert_pillows_luma(decode_webp.luma(data, *PHOTO.size), data)


def test_animated_and_exif_webps_are_left_to_pillow() -> None:
    frames = [PHOTO, PHOTO.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    animated = encode_image(frames[0], "WEBP", save_all=True, append_images=frames[1:])
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = encode_image(PHOTO, "WEBP", exif=exif)
    for data in (animated, rotated):
        assert not decode_webp.applies(data)
    reference = pdq_fast(encode_image(PHOTO.transpose(Image.Transpose.ROTATE_270), "WEBP"))
    assert hamming(pdq_fast(rotated).value, reference.value) <= 8


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_the_direct_decoders_hash_like_the_reference(fmt: str) -> None:
    data = encode_image(PHOTO, fmt)
    fast, exact = pdq_fast(data), pdq_fast(data, reduction=EXACT)
    assert exact.quality is not None and exact.quality >= 80
    assert hamming(fast.value, exact.value) <= 4  # measured: 0-2 bits


def test_a_png_bomb_is_refused_before_libspng_allocates() -> None:
    with pytest.raises(ImageTooLargeError, match=r"4899×4900 PNG \(24,005,100 pixels\) exceeds"):
        decode_reduced(png_header_only(4899, 4900))
    budget = MemoryBudget(8 * 2**20)  # a 2000×2000 RGB PNG is estimated at ~24 MiB
    with budget.lease() as lease, pytest.raises(ImageTooLargeError, match="decode memory budget"):
        decode_reduced(png_header_only(2000, 2000), lease=lease)
    assert budget.in_use == 0


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_a_broken_file_fails_as_pillow_reports_it(fmt: str) -> None:
    data = encode_image(PHOTO, fmt)
    truncated = data[: len(data) * 2 // 3]
    direct = decode_png if fmt == "PNG" else decode_webp
    assert direct.applies(truncated) and direct.luma(truncated, *PHOTO.size) is None
    with pytest.raises(ImageError) as expected:
        decode(truncated, name="cut")
    with pytest.raises(type(expected.value)) as raised:
        decode_reduced(truncated, name="cut")
    assert str(raised.value) == str(expected.value)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_the_direct_decoders_are_held_to_the_cap_and_the_budget(fmt: str) -> None:
    """Real files that the direct decoders would decode: only the checks can refuse them."""
    data = encode_image(PHOTO, fmt)
    pixels = PHOTO.width * PHOTO.height
    assert decode_reduced(data, DecodeLimits(max_full_decode_pixels=pixels)).pixels == pixels
    with pytest.raises(ImageTooLargeError, match="exceeds the limit"):
        decode_reduced(data, DecodeLimits(max_full_decode_pixels=pixels - 1))
    small = MemoryBudget(4 * 2**20)  # under the overhead alone: nothing may be decoded
    with small.lease() as lease, pytest.raises(ImageTooLargeError, match="memory budget"):
        decode_reduced(data, lease=lease)
    roomy = MemoryBudget(64 * 2**20)
    with roomy.lease() as lease:
        decode_reduced(data, lease=lease)
        assert roomy.in_use == lease.held > 4 * 2**20  # reserved once, and held to the end
    assert small.in_use == roomy.in_use == 0


def test_a_trimmed_box_of_a_webp_is_hashed_in_full_range_too() -> None:
    """A dull photo (PDQ quality ~60, under its cap of 100, so the range shows) in a border,
    against the same file decoded by Pillow to full-range float luma (EXACT)."""
    dull = ImageEnhance.Contrast(PHOTO.filter(ImageFilter.GaussianBlur(2))).enhance(0.2)
    webp = encode_image(ImageOps.expand(dull, border=60, fill="grey"), "WEBP")
    direct, pillow = decode_reduced(webp), decode_reduced(webp, reduction=EXACT)
    assert direct.studio_range and not pillow.studio_range
    boxes = list(zip(trimmed_pdq_fast(direct), trimmed_pdq_fast(pillow), strict=True))
    assert boxes
    for got, expected in [(pdq_hashes(direct), pdq_hashes(pillow)), *boxes]:
        assert expected[0].quality is not None and 40 < expected[0].quality < 90
        assert got[0].quality is not None and abs(got[0].quality - expected[0].quality) <= 2
        assert hamming(got[0].value, expected[0].value) <= 8


@pytest.mark.skipif("imagemagick" in missing_tools(),
                    reason="needs ImageMagick (apt-get install imagemagick)")
def test_an_interlaced_png_from_imagemagick_gives_pillows_luma(tmp_path: Path) -> None:
    """Half the corpus's PNGs are Adam7-interlaced, which Pillow cannot write."""
    plain, interlaced = tmp_path / "plain.png", tmp_path / "interlaced.png"
    PHOTO.save(plain)
    subprocess.run([find_tools()["imagemagick"], str(plain), "-interlace", "PNG",
                    f"PNG24:{interlaced}"], check=True, capture_output=True)
    data = interlaced.read_bytes()
    assert data[28] == 1 and decode_png.applies(data)  # IHDR: Adam7
    _assert_pillows_luma(decode_png.luma(data, *PHOTO.size), data)
