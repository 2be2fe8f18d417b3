"""Same photograph, different files: pairs that must not count as unrelated images.

Why: the tail model extrapolates the distances between *unrelated* images over six decades, so
one photograph stored twice (re-encoded, resized or rotated, so not byte-identical) counted as
an unrelated pair at distance 0 flattens its lower tail and dominates every figure derived from
it. The check must not be PDQ itself (that would remove exactly the close pairs whose rate is
being measured): it compares small grey thumbnails, by normalised cross-correlation, in the
upload's 8 rotations/flips (a photograph stored rotated is the same photograph to a scan that
queries every rotation). A thumbnail keeps only the coarse layout, so two different photos of
similar composition (garments on one backdrop) still differ in it, while a re-encode, resize or
mild colour change of one photo does not.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps

SIDE = 32  # thumbnail side: coarse enough to survive re-encoding, fine enough to tell photos apart
# Normalised cross-correlation at or above which two thumbnails are one photograph. Measured on
# photos-cc0 at 32×32: its one photograph stored twice correlates at 1.0, JPEG q30, a 0.25×
# resize or +20% brightness of a photo at 0.995 or more, the closest pair of distinct photos
# (two T-shirts on one red backdrop) at 0.971, the next ones at 0.969 and below.
SAME_PHOTO_NCC = 0.99
Thumbnail = npt.NDArray[np.float32]  # (8, SIDE * SIDE): dihedral forms, zero mean, unit norm


def thumbnail(image: Image.Image) -> Thumbnail:
    """The image's grey SIDE×SIDE thumbnail in its 8 dihedral forms, each normalised for
    correlation (a flat image gets zeros: it correlates with nothing)."""
    grey = ImageOps.exif_transpose(image).convert("L").resize((SIDE, SIDE), Image.Resampling.BOX)
    pixels = np.asarray(grey, dtype=np.float32)
    forms = [np.rot90(pixels, k) for k in range(4)]
    forms += [np.fliplr(f) for f in forms]
    out = np.stack([f.ravel() for f in forms])
    out -= out.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    normalised: Thumbnail = np.divide(out, norm, out=np.zeros_like(out), where=norm > 1e-6)
    return normalised


def same_photo_pairs(
    thumbnails: Sequence[Thumbnail], stored: Sequence[bool],
    threshold: float = SAME_PHOTO_NCC,
) -> list[tuple[int, int, float]]:
    """(query image, stored image, correlation) for every ordered pair of distinct images, the
    second one stored, whose thumbnails correlate at `threshold` or more in some rotation/flip
    of the first (both directions listed when both are stored)."""
    if not thumbnails:
        return []
    forms = np.stack(thumbnails)  # (n, 8, SIDE²)
    targets = np.flatnonzero(np.asarray(stored, dtype=bool))
    plain = forms[targets, 0, :]  # (m, SIDE²)
    found: list[tuple[int, int, float]] = []
    for start in range(0, len(forms), 256):
        block = forms[start:start + 256]  # (b, 8, SIDE²)
        best = (block @ plain.T).max(axis=1)  # (b, m): the best rotation/flip
        for row, column in zip(*np.nonzero(best >= threshold), strict=True):
            query, target = start + int(row), int(targets[column])
            if query != target:
                found.append((query, target, float(best[row, column])))
    return found
