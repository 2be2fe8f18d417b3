"""Upload caps: bytes, and pixels for every image decoded at full size.

Each refusal happens before any pixel is decoded, is an `ImageTooLargeError` whose message names
the image, its size and the limit, fails the same way on the reference and the fast PDQ path
(except a JPEG, which only the fast path decodes small), and reaches a client as
INVALID_ARGUMENT. The caps are settings like every other limit
(flags > HASHSVC_* > TOML > defaults).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hashsvc_client import Client, InvalidArgument
from PIL import Image

from hashsvc import config
from hashsvc.errors import ImageTooLargeError
from hashsvc.hashing.fastpdq import pdq_fast
from hashsvc.hashing.imaging import DEFAULT_LIMITS, DecodeLimits, decode, open_checked
from tests.conftest import BRIDGE_ORIGINAL, encode_image, png_header_only
from tests.server_process import ServerProcess
from tests.test_config import _parse
from tests.test_server import _seed_bridge_bank

BRIDGE = Image.open(BRIDGE_ORIGINAL).convert("RGB")
BRIDGE_PIXELS = BRIDGE.width * BRIDGE.height


def _refusals(data: bytes, limits: DecodeLimits) -> str:
    """The message both decoding paths refuse `data` with; they must agree word for word."""
    with pytest.raises(ImageTooLargeError) as reference:
        decode(data, limits, name="upload.bin")
    with pytest.raises(ImageTooLargeError) as fast:
        pdq_fast(data, limits, name="upload.bin")
    assert str(fast.value) == str(reference.value)
    return str(reference.value)


def test_default_caps() -> None:
    assert DEFAULT_LIMITS.max_bytes == 32 * 2**20
    assert DEFAULT_LIMITS.max_full_decode_pixels == 24_000_000
    assert DEFAULT_LIMITS.max_pixels == 50_000_000


def test_a_png_just_over_the_default_full_decode_cap_is_refused_a_jpeg_only_in_full() -> None:
    # A real 6000×4001 image (24,006,000 pixels), grey so that it encodes quickly.
    image = Image.new("L", (6000, 4001), 128)
    message = _refusals(encode_image(image, "PNG"), DEFAULT_LIMITS)
    assert message == (
        "upload.bin: 6000×4001 PNG (24,006,000 pixels) exceeds the limit of 24,000,000 pixels "
        "for an image decoded at full size (only the fast PDQ scan path decodes JPEGs at "
        "reduced scale; refused before decoding)")
    # The same pixels as a JPEG: the full decode (HashImage, pHash, the reference PDQ path) is
    # refused alike; the scan fast path decodes it at 1/8 scale and hashes it.
    jpeg = encode_image(image, "JPEG")
    with pytest.raises(ImageTooLargeError, match=r"6000×4001 JPEG \(24,006,000 pixels\) exceeds"
                       " the limit of 24,000,000 pixels for an image decoded at full size"):
        decode(jpeg, name="upload.jpg")
    assert open_checked(jpeg, DEFAULT_LIMITS, "upload.jpg")[1] == "JPEG"
    assert pdq_fast(jpeg).quality == 0  # flat grey: PDQ's quality says there is nothing to see


def test_a_png_at_the_configured_cap_is_accepted_one_pixel_over_is_refused() -> None:
    png = encode_image(BRIDGE, "PNG")
    at_cap = DecodeLimits(max_full_decode_pixels=BRIDGE_PIXELS)
    assert decode(png, at_cap).pixels == BRIDGE_PIXELS
    assert pdq_fast(png, at_cap).quality is not None
    message = _refusals(png, DecodeLimits(max_full_decode_pixels=BRIDGE_PIXELS - 1))
    assert f"({BRIDGE_PIXELS:,} pixels) exceeds the limit of {BRIDGE_PIXELS - 1:,}" in message
    for fmt in ("WEBP", "BMP", "TIFF", "GIF"):  # every format without reduced-scale decoding
        _refusals(encode_image(BRIDGE, fmt), DecodeLimits(max_full_decode_pixels=BRIDGE_PIXELS - 1))


def test_a_header_only_bomb_between_the_two_pixel_caps_is_refused_before_decoding() -> None:
    # 4899×4900 is under the 50 MP cap but over the full-decode cap; its data would not even
    # fill one row, so reaching the decoder would fail differently.
    message = _refusals(png_header_only(4899, 4900), DEFAULT_LIMITS)
    assert "4899×4900 PNG (24,005,100 pixels) exceeds the limit of 24,000,000" in message


def test_bytes_over_the_default_cap_are_refused_before_parsing() -> None:
    data = b"\xff\xd8\xff" + bytes(32 * 2**20 - 2)
    message = _refusals(data, DEFAULT_LIMITS)
    assert message == ("upload.bin: 33,554,433 bytes exceeds the limit of 33,554,432 bytes")


def test_the_full_decode_cap_is_a_setting(tmp_path: Path) -> None:
    toml = tmp_path / "hashsvc.toml"
    toml.write_text("max_image_full_decode_pixels = 1000\nmax_image_bytes = 2000\n")
    environ = {"HASHSVC_CONFIG": str(toml), "HASHSVC_MAX_IMAGE_FULL_DECODE_PIXELS": "3000"}
    assert config.load(_parse(), {}).limits == DEFAULT_LIMITS
    from_file = config.load(_parse("--config", str(toml)), {}).limits
    assert (from_file.max_full_decode_pixels, from_file.max_bytes) == (1000, 2000)
    assert config.load(_parse(), environ).limits.max_full_decode_pixels == 3000
    flagged = config.load(_parse("--max-image-full-decode-pixels", "4000"), environ)
    assert flagged.limits.max_full_decode_pixels == 4000


@pytest.mark.parametrize("fast", [False, True], ids=["reference", "fast-pdq"])
def test_the_server_refuses_with_invalid_argument_and_the_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast: bool
) -> None:
    home = tmp_path / "home"
    _seed_bridge_bank(home)
    monkeypatch.setenv("HASHSVC_MAX_IMAGE_FULL_DECODE_PIXELS", str(BRIDGE_PIXELS - 1))
    flags = ("--scan-fast-pdq",) if fast else ("--no-scan-fast-pdq",)
    with ServerProcess(home, *flags) as server, \
            Client(server.target, api_key=server.keys["scanner"]) as client:
        with pytest.raises(InvalidArgument, match=r"PNG \(.* pixels\) exceeds the limit of "
                           rf"{BRIDGE_PIXELS - 1:,} pixels for an image decoded at full size"):
            client.scan_image(encode_image(BRIDGE, "PNG"), timeout=30)
        with pytest.raises(InvalidArgument, match=r"24,005,100 pixels.*decoded at full size"):
            client.scan_image(png_header_only(4899, 4900), timeout=30)
        # The same picture as a JPEG: the fast path decodes it small and matches its bank; the
        # reference path, and HashImage always, decode it at full size and are refused alike.
        jpeg = BRIDGE_ORIGINAL.read_bytes()
        full_decode = rf"JPEG \({BRIDGE_PIXELS:,} pixels\) exceeds .* decoded at full size"
        if fast:
            result = client.scan_image(jpeg, timeout=30)
            assert [m.bank for m in result.matches] == ["bridge"]
        else:
            with pytest.raises(InvalidArgument, match=full_decode):
                client.scan_image(jpeg, timeout=30)
        with pytest.raises(InvalidArgument, match=full_decode):
            client.hash_image(jpeg, timeout=30)
