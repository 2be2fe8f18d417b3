"""The extra PDQ hashes the matching strategies (`hashsvc.matching.strategies`) compute.

Index side also: small rotations each way and corner crops, when the bank asks for them.
Query side: the hashes of an upload with its uniform borders trimmed, fully and (when that
differs) with only the added border cut (`borders.trim_boxes`). Index side: for a known
image added from a file, the hashes of its trimmed box and of centred crops. Both sides use the
same trimming code, so an original and its padded copy trim to the same box.
"""

from __future__ import annotations

import math
from typing import cast

import numpy as np
import numpy.typing as npt
from PIL import Image

from hashsvc.hashing.algorithms import PDQ, HashValue
from hashsvc.hashing.borders import DETECT_SIDE, Box, trim_box, trim_boxes
from hashsvc.hashing.fastpdq import Reduced, pdq_hashes
from hashsvc.hashing.imaging import Upload
from hashsvc.matching.strategies import (
    CORNERS,
    TRIMMED,
    MatchStrategies,
    corner_variant_name,
    crop_variant_name,
    rotation_variant_name,
)


def content_box(image: Image.Image) -> Box | None:
    """The box inside `image`'s uniform borders (full-size pixels), or None."""
    small = _small_luma(image)
    box = trim_box(small)
    return None if box is None else _full_size(box, image, small)


def _small_luma(image: Image.Image) -> npt.NDArray[np.float32]:
    factor = max(1, math.ceil(max(image.size) / DETECT_SIDE))
    small = (image.reduce(factor) if factor > 1 else image).convert("L")
    return np.asarray(small, dtype=np.float32)


def _full_size(box: Box, image: Image.Image, small: npt.NDArray[np.float32]) -> Box:
    return box.scaled(image.height / small.shape[0], image.width / small.shape[1])


def trimmed_pdq(upload: Upload, *, dihedral: bool = False) -> list[list[HashValue]]:
    """Per trimmed box (`borders.trim_boxes`: fully trimmed, then added border only), the PDQ
    of the upload's box (8 dihedral hashes with `dihedral`); [] if there is no border."""
    image = upload.decoded.image
    small = _small_luma(image)
    rgb = upload.decoded.rgb
    return [PDQ.hash_rgb(rgb[box.top:box.bottom, box.left:box.right], dihedral=dihedral)
            for box in (_full_size(b, image, small) for b in trim_boxes(small))]


def trimmed_pdq_fast(reduced: Reduced, *, dihedral: bool = False) -> list[list[HashValue]]:
    """`trimmed_pdq` on the scan fast path's reduced luma (already small: no further shrink)."""
    (row_num, row_den), (col_num, col_den) = reduced.ratios  # luma px = original px · num/den
    found = []
    for box in trim_boxes(reduced.luma):
        luma = cast("npt.NDArray[np.uint8]",
                    reduced.luma[box.top:box.bottom, box.left:box.right])
        region = Reduced(
            luma=np.ascontiguousarray(luma),  # uint8 or float32, whichever the decoder gave
            width=max(1, round((box.right - box.left) * col_den / col_num)),
            height=max(1, round((box.bottom - box.top) * row_den / row_num)),
            ratios=reduced.ratios,
            format=reduced.format,
            studio_range=reduced.studio_range,
        )
        found.append(pdq_hashes(region, dihedral=dihedral))
    return found


def index_variants(
    upload: Upload, strategies: MatchStrategies, plain: HashValue
) -> list[tuple[str, HashValue]]:
    """(variant name, PDQ) for each extra hash `strategies` store per known image.

    A variant whose hash equals the image's `plain` PDQ (e.g. nothing to trim) is left out."""
    if not strategies.index_variants:
        return []
    rgb = upload.decoded.rgb
    found: list[tuple[str, HashValue]] = []
    if strategies.trim_borders:
        box = content_box(upload.decoded.image)  # stored: the full trim, as before
        if box is not None:
            found.append((TRIMMED, PDQ.hash_rgb(rgb[box.top:box.bottom,
                                                    box.left:box.right])[0]))
    height, width = rgb.shape[:2]
    for percent in strategies.crop_variants:
        dy, dx = round(height * percent / 100), round(width * percent / 100)
        if height - 2 * dy < 8 or width - 2 * dx < 8:
            continue
        found.append((crop_variant_name(percent),
                      PDQ.hash_rgb(rgb[dy:height - dy, dx:width - dx])[0]))
    if strategies.rotation_variants:
        image = Image.fromarray(rgb)
        for degrees in strategies.rotation_variants:
            for signed in (degrees, -degrees):
                turned = image.rotate(signed, resample=Image.Resampling.BILINEAR, expand=False)
                found.append((rotation_variant_name(signed),
                              PDQ.hash_rgb(np.asarray(turned))[0]))
    for percent in strategies.corner_crops:
        dy, dx = round(height * percent / 100), round(width * percent / 100)
        if height - dy < 8 or width - dx < 8:
            continue
        for corner in CORNERS:
            top = dy if corner[0] == "b" else 0
            left = dx if corner[1] == "r" else 0
            found.append((corner_variant_name(percent, corner),
                          PDQ.hash_rgb(rgb[top:top + height - dy, left:left + width - dx])[0]))
    seen = {plain.value}
    unique: list[tuple[str, HashValue]] = []
    for name, value in found:
        if value.value not in seen:
            seen.add(value.value)
            unique.append((name, value))
    return unique
