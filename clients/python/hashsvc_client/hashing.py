"""Hash images on the platform's side and send only hashes (`Client.scan_hashes`).

Needs the `hashing` extra (`pip install 'hashsvc-client[hashing]'`). The pipeline is the
server's: EXIF orientation applied, Pillow `convert("RGB")`, Meta's reference PDQ, digests of the
original bytes; a test checks that both produce identical hashes on every reference image.

Like ScanImage, the PDQ hashes include the image's 7 rotations and flips (`dihedral`, on by
default): a rotated or mirrored copy of a known image then matches through the hashes path too,
with `Match.query_transform` naming the variant. They follow the plain hashes, each marked with
its `Hash.transform`, so `hashes[0]` is still the upload's own PDQ.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from pathlib import Path

from hashsvc_client._channel import make_hash
from hashsvc_client.v1 import types_pb2

FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF", "HEIF")
# The order pdqhash.compute_dihedral returns its 8 hashes in (the server's DIHEDRAL_TRANSFORMS).
DIHEDRAL = (
    types_pb2.TRANSFORM_IDENTITY, types_pb2.TRANSFORM_ROTATE_90, types_pb2.TRANSFORM_ROTATE_180,
    types_pb2.TRANSFORM_ROTATE_270, types_pb2.TRANSFORM_FLIP_X, types_pb2.TRANSFORM_FLIP_Y,
    types_pb2.TRANSFORM_FLIP_PLUS_1, types_pb2.TRANSFORM_FLIP_MINUS_1,
)
MAX_PIXELS = 50_000_000


class LocalHashError(ValueError):
    """The file could not be hashed locally; the message says why."""


def hash_image(
    data: bytes, algorithms: Sequence[str] = ("pdq", "md5"), *, name: str = "image",
    dihedral: bool = True,
) -> list[types_pb2.Hash]:
    """The image's hashes, one per algorithm in order, then (`dihedral`) the PDQ of its 7
    rotations and flips, each marked with its transform."""
    hashes: list[types_pb2.Hash] = []
    variants: list[types_pb2.Hash] = []
    for algorithm in algorithms:
        if algorithm in ("md5", "sha256"):
            hashes.append(make_hash(algorithm, hashlib.new(algorithm, data).hexdigest()))
        elif algorithm == "pdq":
            hex_values, quality = _pdq(data, name, dihedral=dihedral)
            hashes.append(make_hash("pdq", hex_values[0], quality))
            for hex_value, transform in zip(hex_values[1:], DIHEDRAL[1:], strict=False):
                variant = make_hash("pdq", hex_value, quality)
                variant.transform = transform
                variants.append(variant)
        else:
            raise LocalHashError(f"local hashing supports pdq, md5 and sha256, not {algorithm!r}")
    return hashes + variants


def hash_file(
    path: Path, algorithms: Sequence[str] = ("pdq", "md5"), *, dihedral: bool = True
) -> list[types_pb2.Hash]:
    return hash_image(Path(path).read_bytes(), algorithms, name=str(path), dihedral=dihedral)


def _pdq(data: bytes, name: str, *, dihedral: bool) -> tuple[list[str], int]:
    """The PDQ hex of the image (`dihedral`: of its 8 variants, in `DIHEDRAL` order)."""
    try:
        import numpy as np
        import pdqhash
        from PIL import Image, ImageOps
    except ImportError as err:
        raise LocalHashError(
            f"local PDQ hashing needs the 'hashing' extra: pip install 'hashsvc-client[hashing]' "
            f"({err.name} is missing)"
        ) from None
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
    except ImportError:
        pass
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
        if image.width * image.height > MAX_PIXELS:
            raise LocalHashError(f"{name}: {image.width}×{image.height} is too large to hash")
        image.load()
        rgb = ImageOps.exif_transpose(image).convert("RGB")
    except LocalHashError:
        raise
    except Exception as err:  # Pillow raises many types for bad files; report, never crash
        raise LocalHashError(f"{name}: cannot decode image: {err}") from None
    pixels = np.asarray(rgb, dtype=np.uint8)
    if dihedral:
        vectors, quality = pdqhash.compute_dihedral(pixels)
    else:
        vector, quality = pdqhash.compute(pixels)
        vectors = [vector]
    return [np.packbits(v.astype(np.uint8)).tobytes().hex() for v in vectors], int(quality)
