"""Cryptographic digests of the original bytes: the form NCMEC and many industry lists ship.

They only match byte-identical files, so they cost nothing to match and never false-positive.
"""

from __future__ import annotations

import hashlib
from typing import ClassVar

from hashsvc.hashing.algorithms.base import HashValue, HexCodec
from hashsvc.hashing.imaging import Upload


class _Digest(HexCodec):
    exact: ClassVar[bool] = True
    default_threshold: ClassVar[int] = 0

    def compute(self, upload: Upload) -> HashValue:
        return HashValue(self.name, hashlib.new(self.name, upload.data).digest())


class Md5(_Digest):
    name: ClassVar[str] = "md5"
    bits: ClassVar[int] = 128


class Sha256(_Digest):
    name: ClassVar[str] = "sha256"
    bits: ClassVar[int] = 256
