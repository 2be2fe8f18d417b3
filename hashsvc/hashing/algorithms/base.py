"""The one interface every hash kind implements, and the strict hex codec they share."""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

from hashsvc.errors import InvalidHashError
from hashsvc.hashing.imaging import Upload

_HEX_DIGITS = frozenset(string.hexdigits)


@dataclass(frozen=True, slots=True)
class HashValue:
    """One hash of one image. `quality` is PDQ's 0–100 score; None for kinds without one."""

    algorithm: str
    value: bytes
    quality: int | None = None

    @property
    def hex(self) -> str:
        return self.value.hex()


@runtime_checkable
class HashAlgorithm(Protocol):
    """A hash kind. Exact kinds hash the original bytes; perceptual kinds hash decoded pixels."""

    @property
    def name(self) -> str: ...

    @property
    def bits(self) -> int: ...

    @property
    def exact(self) -> bool: ...

    @property
    def default_threshold(self) -> int: ...

    def compute(self, upload: Upload) -> HashValue: ...

    def parse(self, text: str) -> bytes: ...

    def format(self, value: bytes) -> str: ...


class HexCodec:
    """Strict textual form: exactly bits/4 hex digits (either case in, lowercase out)."""

    name: ClassVar[str]
    bits: ClassVar[int]

    def parse(self, text: str) -> bytes:
        want = self.bits // 4
        if len(text) == want:  # the fast path, taken by every valid hash of a million-line list
            try:
                value = bytes.fromhex(text)
            except ValueError:
                value = b""
            # fromhex skips whitespace; with both lengths right there can be none.
            if len(value) * 2 == want:
                return value
        shown = text if len(text) <= 80 else text[:77] + "..."
        if len(text) != want:
            raise InvalidHashError(
                f"invalid {self.name} hash {shown!r}: expected {want} hex digits, got {len(text)}"
            )
        if not _HEX_DIGITS.issuperset(text):
            raise InvalidHashError(f"invalid {self.name} hash {shown!r}: not hexadecimal")
        return bytes.fromhex(text)

    def format(self, value: bytes) -> str:
        if len(value) * 8 != self.bits:
            raise InvalidHashError(
                f"invalid {self.name} hash: expected {self.bits // 8} bytes, got {len(value)}"
            )
        return value.hex()
