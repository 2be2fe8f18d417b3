"""Uploads that once cost a worker seconds, gigabytes or an UNKNOWN status (issue 12, defects 3-6).

Every recipe is a real file built with Pillow and edited byte by byte, decoded by the real
decoders, and (for each kind of failure) sent through a real server. Budget tests count bytes
reserved, never time, so they hold on a busy machine.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from hashsvc_client import Client, InvalidArgument
from PIL import Image
from prometheus_client import REGISTRY

from hashsvc.errors import (
    CorruptImageError,
    DecodeBudgetExhaustedError,
    ImageError,
    ImageTooLargeError,
)
from hashsvc.hashing.decode_budget import MemoryBudget, estimate_peak_bytes
from hashsvc.hashing.fastpdq import decode_reduced
from hashsvc.hashing.imaging import DEFAULT_LIMITS, Upload, decode, decoder_errors
from hashsvc.hashing.jpeg_layout import JpegLayout, read_layout
from hashsvc.scanner import Scanner
from hashsvc.server.observe import ScanObserver
from tests.conftest import BRIDGE_ORIGINAL, encode_image
from tests.server_process import ServerProcess
from tests.test_server import _seed_bridge_bank

MiB = 2**20


def _with_frame_size(jpeg: bytes, width: int, height: int) -> bytes:
    """`jpeg` with its SOF header claiming width×height: a few hundred bytes 'of' 50 MP."""
    position = 2
    while True:
        marker, length = jpeg[position + 1], struct.unpack(">H", jpeg[position + 2:position + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            return (jpeg[:position + 5] + struct.pack(">HH", height, width)
                    + jpeg[position + 9:])
        position += 2 + length


def jpeg_claiming(width: int, height: int, *, progressive: bool = False) -> bytes:
    small = encode_image(Image.new("RGB", (16, 16), (120, 60, 30)), "JPEG",
                         progressive=progressive)
    return _with_frame_size(small, width, height)


def repeated_scans(repeats: int, side: int = 3000) -> bytes:
    """Defect 5's recipe: a progressive JPEG whose scans (first SOS to EOI) repeat `repeats`
    times (3000 px and 200 repeats: 10.6 MB that decoded for 17.6 s)."""
    jpeg = encode_image(Image.new("RGB", (side, side), (9, 9, 9)), "JPEG", progressive=True,
                        quality=5)
    first_scan, end = jpeg.index(b"\xff\xda"), jpeg.rindex(b"\xff\xd9")
    return jpeg[:first_scan] + jpeg[first_scan:end] * repeats + jpeg[end:]


def tiff_with_strip_offsets_of_type(field_type: int) -> bytes:
    """Defect 6: a 64×64 TIFF whose StripOffsets (tag 273) is retyped from LONG (4) to
    RATIONAL (5) or FLOAT (11); Pillow then raised TypeError."""
    tiff = bytearray(encode_image(Image.new("RGB", (64, 64), (10, 200, 30)), "TIFF"))
    ifd = struct.unpack("<I", tiff[4:8])[0]
    for entry in range(ifd + 2, ifd + 2 + 12 * struct.unpack("<H", tiff[ifd:ifd + 2])[0], 12):
        if struct.unpack("<H", tiff[entry:entry + 2])[0] == 273:
            tiff[entry + 2:entry + 4] = struct.pack("<H", field_type)
            return bytes(tiff)
    raise AssertionError("no StripOffsets tag")


def avif_with_byte_flipped(offset: int) -> bytes:
    """Defect 6: a 64×64 AVIF with one byte XORed with 0xFF; libavif then raised RuntimeError
    (at 81 inside `Image.open`, at 209 and 241 on load) or SyntaxError (at 120)."""
    avif = bytearray(encode_image(Image.new("RGB", (64, 64), (10, 200, 30)), "AVIF"))
    avif[offset] ^= 0xFF
    return bytes(avif)


BROKEN_DECODER_INPUTS: dict[str, Callable[[], bytes]] = {
    "tiff-strip-offsets-rational": partial(tiff_with_strip_offsets_of_type, 5),
    "tiff-strip-offsets-float": partial(tiff_with_strip_offsets_of_type, 11),
    **{f"avif-flip-{offset}": partial(avif_with_byte_flipped, offset)
       for offset in (81, 120, 209, 241)},
}


# ---- defect 3: every full decode is capped, JPEG included ------------------------------------

def test_a_tiny_jpeg_claiming_50_mp_is_refused_in_full_and_decoded_small_for_scans() -> None:
    bomb = jpeg_claiming(7071, 7071)
    assert len(bomb) < 1200
    with pytest.raises(ImageTooLargeError) as refused:
        decode(bomb, name="bomb.jpg")
    assert str(refused.value) == (
        "bomb.jpg: 7071×7071 JPEG (49,999,041 pixels) exceeds the limit of 24,000,000 pixels "
        "for an image decoded at full size (only the fast PDQ scan path decodes JPEGs at "
        "reduced scale; refused before decoding)")
    with pytest.raises(ImageTooLargeError, match="decoded at full size"):
        Scanner(fast_pdq=False).hash_upload(Upload(bomb), ["pdq"])
    with pytest.raises(ImageTooLargeError, match="decoded at full size"):  # pHash: full pixels
        Scanner(fast_pdq=True).hash_upload(Upload(bomb), ["pdq", "phash"])
    # The fast path decodes it at 1/8 scale: a cheap 884×884.
    assert decode_reduced(bomb).luma.shape == (884, 884)
    hashes, _, _ = Scanner(fast_pdq=True).hash_upload(Upload(bomb), ["pdq"])
    assert hashes[0].algorithm == "pdq"


# ---- defect 4: each decode's memory estimated, capped, and admitted against a budget ---------

def test_a_progressive_jpeg_is_estimated_to_buffer_its_coefficients() -> None:
    baseline, progressive = jpeg_claiming(7071, 7071), jpeg_claiming(7071, 7071, progressive=True)
    base_layout = read_layout(baseline, max_scans=100)
    prog_layout = read_layout(progressive, max_scans=100)
    assert base_layout is not None and prog_layout is not None
    assert (base_layout.progressive, base_layout.buffers_coefficients) == (False, False)
    assert (prog_layout.progressive, prog_layout.scans) == (True, 10)
    # 4:2:0: 442×442 MCUs of 16 px, each 2×2 luma and 2 chroma blocks of 128 bytes (~145 MB
    # measured).
    assert prog_layout.coefficient_bytes == 442 * 442 * (4 + 2) * 128
    for layout, low, high in ((base_layout, 0, 10 * MiB), (prog_layout, 150_039_552, 160 * MiB)):
        # The fast path decodes the Y plane at 1/8 scale: 884×884 bytes.
        assert low < estimate_peak_bytes(884 * 884, mode="L", fmt="JPEG", full=False,
                                         layout=layout) < high


def test_estimates_cover_what_decoding_24_mp_measured() -> None:
    """Each estimate is at least the peak RSS measured for it (`hashsvc.hashing.decode_budget`)."""
    measured_bytes_per_pixel = [  # (mode, format, reference path?, measured)
        ("RGB", "PNG", False, 4.3), ("P", "PNG", False, 5.4), ("I;16", "PNG", False, 6.4),
        ("RGBA", "PNG", False, 8.4), ("LA", "PNG", False, 8.4), ("RGBA", "WEBP", False, 16.7),
        ("RGB", "JPEG", True, 29.6), ("RGBA", "PNG", True, 31.0), ("I;16", "PNG", True, 31.0),
        ("RGBA", "WEBP", True, 36.3),
    ]
    for mode, fmt, full, measured in measured_bytes_per_pixel:
        estimate = estimate_peak_bytes(24_000_000, mode=mode, fmt=fmt, full=full, layout=None)
        assert measured * 24_000_000 <= estimate <= 1.5 * measured * 24_000_000 + 4 * MiB, mode


def test_the_default_budget_admits_the_costliest_image_the_default_caps_accept() -> None:
    cap = DEFAULT_LIMITS.max_full_decode_pixels
    cmyk = JpegLayout(6000, 4000, True, 10, 30, ((1, 1),) * 4)
    costliest = max(
        estimate_peak_bytes(cap, mode="RGBA", fmt="WEBP", full=True, layout=None),
        estimate_peak_bytes(cap, mode="CMYK", fmt="JPEG", full=True, layout=cmyk),
    )
    assert 950 * MiB < costliest <= DEFAULT_LIMITS.decode_memory_budget


def test_an_image_over_the_whole_budget_is_refused_as_too_large() -> None:
    lease = MemoryBudget(100 * MiB).lease()
    with pytest.raises(ImageTooLargeError, match=r"bomb.jpg: decoding would take an estimated "
                       r"1\d\d MiB, more than the decode memory budget of 100 MiB"):
        decode_reduced(jpeg_claiming(7071, 7071, progressive=True), name="bomb.jpg", lease=lease)
    assert lease.held == 0
    decode_reduced(jpeg_claiming(7071, 7071), lease=lease)  # the baseline one fits
    assert 0 < lease.held < 10 * MiB


def test_calls_beyond_the_budget_are_refused_until_the_earlier_ones_finish() -> None:
    budget = MemoryBudget(250 * MiB)
    progressive = jpeg_claiming(7071, 7071, progressive=True)
    with budget.lease() as first:
        decode_reduced(progressive, lease=first)
        assert budget.in_use == first.held > 140 * MiB
        with budget.lease() as second, pytest.raises(DecodeBudgetExhaustedError) as busy:
            decode_reduced(progressive, name="second.jpg", lease=second)
        assert busy.value.code.value == "RESOURCE_EXHAUSTED"
        assert "second.jpg: server busy" in str(busy.value)
        with budget.lease() as small:  # small ones still fit
            decode_reduced(jpeg_claiming(7071, 7071), lease=small)
    assert budget.in_use == 0
    with budget.lease() as third:
        decode_reduced(progressive, lease=third)


def test_a_budget_refusal_counts_as_overload_for_the_alert() -> None:
    def overloads() -> float:
        value = REGISTRY.get_sample_value("hashsvc_rejected_requests_total",
                                          {"reason": "overload"})
        return value or 0.0

    before = overloads()
    ScanObserver.rejected(DecodeBudgetExhaustedError("image: server busy"))
    assert overloads() == before + 1


@pytest.mark.parametrize("fast", [False, True], ids=["reference", "fast-pdq"])
def test_a_scan_returns_its_reservation_whether_it_succeeds_or_fails(fast: bool) -> None:
    scanner = Scanner(fast_pdq=fast)
    hashes, _, _ = scanner.hash_upload(Upload(BRIDGE_ORIGINAL.read_bytes()), ["pdq", "dhash"],
                                       dihedral=True, trim=True)
    assert len(hashes) == 2 and scanner.budget.in_use == 0
    with pytest.raises(ImageError):
        scanner.hash_upload(Upload(tiff_with_strip_offsets_of_type(5)), ["pdq"])
    assert scanner.budget.in_use == 0


# ---- defect 5: a JPEG's scans are counted before decoding -----------------------------------

def test_a_jpeg_with_repeated_scans_is_refused_before_decoding_on_both_paths() -> None:
    recipe = repeated_scans(200)
    assert len(recipe) > 10 * MiB
    message = ("upload.jpg: JPEG with more than 100 scans (real progressive JPEGs have about "
               "10, and each scan costs another pass over the image; refused before decoding)")
    for path in (decode, decode_reduced):
        with pytest.raises(ImageTooLargeError) as refused:
            path(recipe, name="upload.jpg")
        assert str(refused.value) == message


def test_scans_up_to_the_limit_pass() -> None:
    at_limit = repeated_scans(10, side=256)  # 10 scans per repeat: exactly 100
    layout = read_layout(at_limit, max_scans=DEFAULT_LIMITS.max_jpeg_scans)
    assert layout is not None and layout.scans == DEFAULT_LIMITS.max_jpeg_scans
    assert decode(at_limit).pixels == 256 * 256
    with pytest.raises(ImageTooLargeError, match="JPEG with more than 100 scans"):
        end = at_limit.rindex(b"\xff\xd9")
        last_scan = at_limit[at_limit.rindex(b"\xff\xda", 0, end):end]
        decode(at_limit[:end] + last_scan + at_limit[end:])  # one scan more


@pytest.mark.parametrize("params", [
    {}, {"progressive": True}, {"subsampling": 0}, {"progressive": True, "quality": 100},
    {"restart_marker_blocks": 1}, {"progressive": True, "restart_marker_rows": 1},
    {"comment": b"\xff\xda\x00\x08 an SOS marker inside a comment is not a scan \xff\xd9"},
], ids=repr)
def test_real_jpegs_are_counted_right_and_pass(params: dict[str, object]) -> None:
    """Noise forces FF 00 stuffing into the entropy-coded data; restart markers and a comment
    that quotes markers must not be taken for scans."""
    noise = np.random.default_rng(12).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    jpeg = encode_image(Image.fromarray(noise), "JPEG", **params)
    assert b"\xff\x00" in jpeg
    layout = read_layout(jpeg, max_scans=100)
    assert layout is not None and (layout.width, layout.height) == (400, 300)
    assert layout.scans == (10 if params.get("progressive") else 1)
    assert decode(jpeg).pixels == 400 * 300


def test_a_flood_of_marker_segments_is_refused_before_pillow_parses_them() -> None:
    """8 million empty comments in 32 MiB kept Pillow's header parser busy for ~25 s."""
    jpeg = encode_image(Image.new("RGB", (64, 64)), "JPEG")
    flood = jpeg[:2] + b"\xff\xfe\x00\x02" * (8 * 2**20 - 4096) + jpeg[2:]
    with pytest.raises(ImageTooLargeError, match=r"^f\.jpg: JPEG with more than 1,000 marker "
                       "segments"):
        decode(flood, name="f.jpg")
    few = jpeg[:2] + b"\xff\xfe\x00\x02" * 900 + jpeg[2:]
    assert decode(few).pixels == 64 * 64


def test_every_reference_and_photo_jpeg_passes_the_scan_count() -> None:
    for path in sorted(BRIDGE_ORIGINAL.parent.parent.rglob("*.jp*g")):
        layout = read_layout(path.read_bytes(), max_scans=100)
        assert layout is not None and 1 <= layout.scans <= 12, path


# ---- defect 6: every decoder failure is a typed image error --------------------------------

@pytest.mark.parametrize("recipe", BROKEN_DECODER_INPUTS)
def test_decoder_failures_are_image_errors_on_every_path(recipe: str) -> None:
    data = BROKEN_DECODER_INPUTS[recipe]()
    for path in (decode, decode_reduced):
        with pytest.raises(CorruptImageError, match=rf"^{recipe}: (corrupt \w+ data|cannot "
                           r"read image header): \S"):
            path(data, name=recipe)
    for fast in (False, True):
        with pytest.raises(CorruptImageError):
            Scanner(fast_pdq=fast).hash_upload(Upload(data, name=recipe), ["pdq", "phash"])


def test_a_decoder_out_of_memory_is_a_refusal_too() -> None:
    refusal = r"^x\.tif: not enough memory to decode this TIFF"
    with pytest.raises(ImageTooLargeError, match=refusal), decoder_errors("x.tif", "TIFF"):
        raise MemoryError


# ---- all of it through a real server --------------------------------------------------------

@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    home = tmp_path_factory.mktemp("hardening") / "home"
    _seed_bridge_bank(Path(home))
    with ServerProcess(Path(home)) as server, \
            Client(server.target, api_key=server.keys["scanner"]) as connected:
        yield connected


@pytest.mark.parametrize("recipe", ["tiff-strip-offsets-rational", "avif-flip-81",
                                    "avif-flip-241"])
def test_the_server_answers_decoder_failures_with_invalid_argument(
    client: Client, recipe: str
) -> None:
    data = BROKEN_DECODER_INPUTS[recipe]()
    message = r"image: (corrupt \w+ data|cannot read image header): \S"
    with pytest.raises(InvalidArgument, match=message):
        client.scan_image(data, timeout=60)
    with pytest.raises(InvalidArgument, match=message):
        client.hash_image(data, timeout=60)


def test_the_server_refuses_bombs_and_repeated_scans_with_invalid_argument(
    client: Client,
) -> None:
    bomb = jpeg_claiming(7071, 7071)
    with pytest.raises(InvalidArgument, match=r"7071×7071 JPEG .* decoded at full size"):
        client.hash_image(bomb, timeout=60)
    assert client.scan_image(bomb, timeout=60).hashes[0].algorithm  # the fast path takes it
    with pytest.raises(InvalidArgument, match="JPEG with more than 100 scans"):
        client.scan_image(repeated_scans(200), timeout=60)


def test_the_decode_memory_budget_is_a_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    _seed_bridge_bank(home)
    monkeypatch.setenv("HASHSVC_DECODE_MEMORY_BUDGET", str(100 * MiB))
    with ServerProcess(home) as server, \
            Client(server.target, api_key=server.keys["scanner"]) as budgeted:
        with pytest.raises(InvalidArgument, match="more than the decode memory budget of 100"):
            budgeted.scan_image(jpeg_claiming(7071, 7071, progressive=True), timeout=60)
        result = budgeted.scan_image(BRIDGE_ORIGINAL.read_bytes(), timeout=60)
        assert [m.bank for m in result.matches] == ["bridge"]
