"""Meta's PDQ: 256 bits with a 0–100 quality score, via the reference C++ code (`pdqhash`).

PDQ is the interchange format of GIFCT, StopNCII, NCMEC and the Tech Coalition, so the hash must be
bit-compatible with theirs: we feed the reference code the RGB array python-threatexchange feeds it.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import numpy.typing as npt
import pdqhash

from hashsvc.hashing.algorithms.base import HashValue, HexCodec
from hashsvc.hashing.imaging import Upload

# Below this quality a PDQ hash is dominated by flat regions and matches unrelated images;
# ThreatExchange recommends ignoring such hashes, so scans report them instead of matching.
QUALITY_FLOOR = 50

# The order `pdqhash.compute_dihedral` returns its 8 hashes in: the hash of the image after
# each of these transforms (shared/data/pdq-reference/images/dih shows them). Rotations are
# counter-clockwise (EXIF orientation 8 is undone by rotate_90); flip_plus_1 is the transpose.
DIHEDRAL_TRANSFORMS: tuple[str, ...] = (
    "identity",
    "rotate_90",
    "rotate_180",
    "rotate_270",
    "flip_x",
    "flip_y",
    "flip_plus_1",
    "flip_minus_1",
)


def _pack(bit_vector: npt.NDArray[np.integer]) -> bytes:
    return np.packbits(bit_vector.astype(np.uint8)).tobytes()


class Pdq(HexCodec):
    name: ClassVar[str] = "pdq"
    bits: ClassVar[int] = 256
    exact: ClassVar[bool] = False
    default_threshold: ClassVar[int] = 31

    def compute(self, upload: Upload) -> HashValue:
        return self.hash_rgb(upload.decoded.rgb)[0]

    def compute_dihedral(self, upload: Upload) -> list[HashValue]:
        """The 8 dihedral hashes, in `DIHEDRAL_TRANSFORMS` order, for the cost of about one."""
        return self.hash_rgb(upload.decoded.rgb, dihedral=True)

    def hash_rgb(self, rgb: npt.NDArray[np.uint8], *, dihedral: bool = False) -> list[HashValue]:
        """PDQ of an H×W×3 array (a whole upload, or a region of one such as its trimmed box)."""
        rgb = np.ascontiguousarray(rgb)
        if not dihedral:
            vector, quality = pdqhash.compute(rgb)
            return [HashValue(self.name, _pack(vector), int(quality))]
        vectors, quality = pdqhash.compute_dihedral(rgb)
        return [HashValue(self.name, _pack(v), int(quality)) for v in vectors]
