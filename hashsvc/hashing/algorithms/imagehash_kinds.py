"""pHash and dHash (64-bit) from the `imagehash` library: widely used, cheap, and a second opinion
next to PDQ that fails on different edits."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import imagehash
import numpy as np

from hashsvc.hashing.algorithms.base import HashValue, HexCodec
from hashsvc.hashing.imaging import Upload


class _ImageHashKind(HexCodec):
    bits: ClassVar[int] = 64
    exact: ClassVar[bool] = False
    default_threshold: ClassVar[int] = 10
    _function: ClassVar[Callable[..., imagehash.ImageHash]]

    def compute(self, upload: Upload) -> HashValue:
        result = type(self)._function(upload.decoded.image)
        return HashValue(self.name, np.packbits(result.hash.flatten()).tobytes())


class PHash(_ImageHashKind):
    name: ClassVar[str] = "phash"
    _function = staticmethod(imagehash.phash)


class DHash(_ImageHashKind):
    name: ClassVar[str] = "dhash"
    _function = staticmethod(imagehash.dhash)
