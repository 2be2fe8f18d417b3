"""Hash images on the platform's side and send only hashes (`Client.scan_hashes`).

Needs the `hashing` extra (`pip install 'hashsvc-client[hashing]'`). The pipeline is the
server's: EXIF orientation applied, Pillow `convert("RGB")`, Meta's reference PDQ, digests of the
original bytes; a test checks that both produce identical hashes on every reference image.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from pathlib import Path

from hashsvc_client._channel import make_hash
from hashsvc_client.v1 import types_pb2

FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF", "HEIF")
MAX_PIXELS = 50_000_000


class LocalHashError(ValueError):
    """The file could not be hashed locally; the message says why."""


def hash_image(
    data: bytes, algorithms: Sequence[str] = ("pdq", "md5"), *, name: str = "image"
) -> list[types_pb2.Hash]:
    hashes: list[types_pb2.Hash] = []
    for algorithm in algorithms:
        if algorithm in ("md5", "sha256"):
            hashes.append(make_hash(algorithm, hashlib.new(algorithm, data).hexdigest()))
        elif algorithm == "pdq":
            hex_value, quality = _pdq(data, name)
            hashes.append(make_hash("pdq", hex_value, quality))
        else:
            raise LocalHashError(f"local hashing supports pdq, md5 and sha256, not {algorithm!r}")
    return hashes


def hash_file(path: Path, algorithms: Sequence[str] = ("pdq", "md5")) -> list[types_pb2.Hash]:
    return hash_image(Path(path).read_bytes(), algorithms, name=str(path))


def _pdq(data: bytes, name: str) -> tuple[str, int]:
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
    vector, quality = pdqhash.compute(np.asarray(rgb, dtype=np.uint8))
    return np.packbits(vector.astype(np.uint8)).tobytes().hex(), int(quality)
