"""The scan path's TurboJPEG decode (`decode_turbojpeg`) gives the Pillow path's pixels exactly.

It replaces Pillow's `draft("L")` decode of YCbCr and grey JPEGs for speed only (issue 15), so
the luma handed to PDQ must be the same array: same DCT scale, same Y plane, same orientation,
and anything TurboJPEG cannot or will not decode goes to Pillow, errors and budget included.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from PIL import Image

from hashsvc.hashing import decode_turbojpeg
from hashsvc.hashing.decode_budget import MemoryBudget
from hashsvc.hashing.fastpdq import SCAN, Reduced, decode_reduced
from tests.conftest import BRIDGE_ORIGINAL, IMAGES, encode_image

pytestmark = pytest.mark.skipif(not decode_turbojpeg.available(),
                                reason="libturbojpeg is not installed (Debian: libturbojpeg0)")
PILLOW = replace(SCAN, turbojpeg=False)


def _through_turbojpeg(data: bytes, monkeypatch: pytest.MonkeyPatch) -> Reduced:
    """`decode_reduced(data)`, checked to have taken its pixels from TurboJPEG."""
    decoded: list[bool] = []
    real = decode_turbojpeg.luma

    def counted(*args: Any) -> Any:
        plane = real(*args)
        decoded.append(plane is not None)
        return plane

    monkeypatch.setattr(decode_turbojpeg, "luma", counted)
    reduced = decode_reduced(data)
    monkeypatch.setattr(decode_turbojpeg, "luma", real)
    assert decoded == [True]
    return reduced


def _assert_same(turbo: Reduced, pillow: Reduced) -> None:
    assert (turbo.width, turbo.height, turbo.ratios) == (pillow.width, pillow.height,
                                                          pillow.ratios)
    assert turbo.luma.dtype == pillow.luma.dtype == np.uint8
    assert np.array_equal(turbo.luma, pillow.luma)


@pytest.mark.parametrize("progressive", [False, True], ids=["baseline", "progressive"])
@pytest.mark.parametrize("subsampling", [0, 2], ids=["4:4:4", "4:2:0"])
@pytest.mark.parametrize("side", [300, 500, 900, 1700], ids=lambda s: f"{s}px")
def test_the_y_plane_is_pillows_at_every_dct_scale(side: int, subsampling: int,
                                                   progressive: bool,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # 300 px decodes at full size, 500 at 1/2, 900 at 1/4, 1700 at 1/8 (a progressive one
    # from its DC scans only).
    with Image.open(BRIDGE_ORIGINAL) as photo:
        image = photo.convert("RGB").resize((side * 4 // 3, side))
    data = encode_image(image, "JPEG", quality=85, subsampling=subsampling,
                        progressive=progressive)
    pillow = decode_reduced(data, reduction=PILLOW)
    _assert_same(_through_turbojpeg(data, monkeypatch), pillow)
    scale = pillow.ratios[0][1] // pillow.ratios[0][0]
    assert scale == {300: 1, 500: 2, 900: 4, 1700: 8}[side]
    whole = decode_turbojpeg.luma(data, image.width, image.height, scale)  # no scan cut
    assert whole is not None and np.array_equal(whole, pillow.luma)


def test_a_grey_jpeg_is_decoded_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    with Image.open(BRIDGE_ORIGINAL) as photo:
        data = encode_image(photo.convert("L").resize((640, 480)), "JPEG", quality=90)
    _assert_same(_through_turbojpeg(data, monkeypatch), decode_reduced(data, reduction=PILLOW))


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_exif_orientation_is_applied_as_the_pillow_path_applies_it(
        orientation: int, monkeypatch: pytest.MonkeyPatch) -> None:
    data = (IMAGES / "exif-rotn" / f"exif-rotn-{orientation}.jpg").read_bytes()
    _assert_same(_through_turbojpeg(data, monkeypatch), decode_reduced(data, reduction=PILLOW))


def test_a_cmyk_jpeg_goes_to_pillow_and_its_budget_is_held_once() -> None:
    # TurboJPEG's grey output of CMYK is not a Y plane: `luma` refuses it after the decode
    # was admitted, and Pillow's decode must not reserve the same decode's memory again.
    with Image.open(BRIDGE_ORIGINAL) as photo:
        data = encode_image(photo.convert("CMYK").resize((640, 480)), "JPEG", quality=90)
    assert decode_turbojpeg.luma(data, 640, 480, 1) is None
    budget = MemoryBudget(1 << 30)
    with budget.lease() as turbo_first:
        via_turbo = decode_reduced(data, lease=turbo_first)
        held = turbo_first.held
    with budget.lease() as pillow_only:
        via_pillow = decode_reduced(data, reduction=PILLOW, lease=pillow_only)
        assert held == pillow_only.held > 0
    _assert_same(via_turbo, via_pillow)


def test_a_truncated_jpeg_is_refused_by_turbojpeg() -> None:
    # A warning (here: premature end of data) makes `luma` give up, so Pillow decides: the
    # errors users see stay Pillow's (tests/test_fastpdq.py, bad inputs).
    data = BRIDGE_ORIGINAL.read_bytes()
    with Image.open(BRIDGE_ORIGINAL) as photo:
        width, height = photo.size
    assert decode_turbojpeg.luma(data, width, height, 1) is not None
    assert decode_turbojpeg.luma(data[: len(data) // 2], width, height, 1) is None
    assert decode_turbojpeg.luma(data, width + 1, height, 1) is None  # not the size expected
