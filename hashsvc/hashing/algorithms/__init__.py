"""The registry of hash kinds. Everything else looks algorithms up here by name."""

from __future__ import annotations

from hashsvc.errors import InvalidHashError
from hashsvc.hashing.algorithms.base import HashAlgorithm, HashValue
from hashsvc.hashing.algorithms.exact import Md5, Sha256
from hashsvc.hashing.algorithms.imagehash_kinds import DHash, PHash
from hashsvc.hashing.algorithms.pdq import DIHEDRAL_TRANSFORMS, QUALITY_FLOOR, Pdq
from hashsvc.limits import quote

PDQ = Pdq()

ALGORITHMS: dict[str, HashAlgorithm] = {
    algorithm.name: algorithm for algorithm in (PDQ, PHash(), DHash(), Md5(), Sha256())
}


def get_algorithm(name: str) -> HashAlgorithm:
    try:
        return ALGORITHMS[name.lower()]
    except KeyError:
        raise InvalidHashError(
            f"unknown algorithm {quote(name)} (known: {', '.join(ALGORITHMS)})"
        ) from None


def parse_hash(algorithm: str, text: str) -> HashValue:
    """Parse the textual form of a hash of `algorithm`, strictly."""
    kind = get_algorithm(algorithm)
    return HashValue(kind.name, kind.parse(text))


__all__ = [
    "ALGORITHMS",
    "DIHEDRAL_TRANSFORMS",
    "PDQ",
    "QUALITY_FLOOR",
    "HashAlgorithm",
    "HashValue",
    "get_algorithm",
    "parse_hash",
]
