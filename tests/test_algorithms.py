"""Conformance of every hash algorithm: golden vectors, textual form, modes, dihedral variants."""

from __future__ import annotations

from pathlib import Path

import pytest

from hashsvc.errors import InvalidHashError
from hashsvc.hashing.algorithms import (
    ALGORITHMS,
    DIHEDRAL_TRANSFORMS,
    PDQ,
    QUALITY_FLOOR,
    parse_hash,
)
from hashsvc.hashing.imaging import Upload
from tests.conftest import IMAGES, GoldenRow, golden_rows, hamming

ROWS = golden_rows()


def _upload(path: Path, *, apply_orientation: bool = True) -> Upload:
    return Upload(path.read_bytes(), name=path.name, apply_orientation=apply_orientation)


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.path.name)
def test_pdq_reproduces_reference_vectors(row: GoldenRow) -> None:
    # The reference hashed stored pixels, ignoring EXIF orientation.
    value = PDQ.compute(_upload(row.path, apply_orientation=False))
    distance = hamming(value.value, bytes.fromhex(row.pdq_hex))
    assert distance <= row.max_distance, f"{row.path.name}: {distance} bits from the reference"
    if row.max_distance == 0:
        assert value.hex == row.pdq_hex
    if row.quality is not None:
        assert value.quality == row.quality


def test_bit_exact_rows_exist() -> None:
    # Guard against the suite above degenerating: the bit-exact expectations must be present.
    assert sum(1 for row in ROWS if row.max_distance == 0) >= 4


@pytest.mark.parametrize("path", sorted((IMAGES / "modes").iterdir()), ids=lambda p: p.name)
def test_every_pillow_mode_hashes_close_to_the_original(path: Path) -> None:
    original = PDQ.compute(_upload(IMAGES / "modes" / "original.jpg"))
    assert hamming(PDQ.compute(_upload(path)).value, original.value) <= 16


def test_dihedral_variants_match_the_transformed_files() -> None:
    files = sorted((IMAGES / "dih").iterdir())
    assert len(files) == len(DIHEDRAL_TRANSFORMS) == 8
    variants = PDQ.compute_dihedral(_upload(files[0]))
    for variant, path in zip(variants, files, strict=True):
        file_hash = PDQ.compute(_upload(path)).value
        assert hamming(variant.value, file_hash) <= 10, path.name
        others = [hamming(v.value, file_hash) for v in variants if v is not variant]
        assert min(others) > 64, f"{path.name} is close to a wrong variant"


@pytest.mark.parametrize(
    ("orientation", "transform"),
    [(1, "identity"), (3, "rotate_180"), (6, "rotate_270"), (8, "rotate_90")],
)
def test_exif_orientation_is_applied(orientation: int, transform: str) -> None:
    # Hashing the oriented image must equal hashing the stored pixels turned the way EXIF says.
    path = IMAGES / "exif-rotn" / f"exif-rotn-{orientation}.jpg"
    stored_variants = PDQ.compute_dihedral(_upload(path, apply_orientation=False))
    oriented = PDQ.compute(_upload(path))
    distances = {t: hamming(oriented.value, v.value)
                 for t, v in zip(DIHEDRAL_TRANSFORMS, stored_variants, strict=True)}
    assert distances[transform] <= 4
    assert sorted(distances.values())[1] > 64


def test_low_quality_is_reported() -> None:
    flat = PDQ.compute(_upload(IMAGES / "misc" / "small.jpg"))
    assert flat.quality is not None and flat.quality < QUALITY_FLOOR
    photo = PDQ.compute(_upload(IMAGES / "bridge-mods" / "aaa-orig.jpg"))
    assert photo.quality is not None and photo.quality >= QUALITY_FLOOR


@pytest.mark.parametrize("algorithm", list(ALGORITHMS.values()), ids=lambda a: a.name)
def test_textual_form_round_trips_and_is_strict(algorithm: object) -> None:
    from hashsvc.hashing.algorithms import HashAlgorithm

    assert isinstance(algorithm, HashAlgorithm)
    value = algorithm.compute(_upload(IMAGES / "misc" / "wee.jpg"))
    assert len(value.value) * 8 == algorithm.bits
    text = algorithm.format(value.value)
    assert text == text.lower() and len(text) == algorithm.bits // 4
    assert parse_hash(algorithm.name, text) == type(value)(algorithm.name, value.value)
    assert parse_hash(algorithm.name, text.upper()).value == value.value
    with pytest.raises(InvalidHashError, match=r"expected .* hex digits, got"):
        algorithm.parse(text[:-1])
    with pytest.raises(InvalidHashError, match=r"not hexadecimal") as err:
        algorithm.parse("z" + text[1:])
    assert "z" + text[1:5] in str(err.value)  # the message names the value


@pytest.mark.parametrize("algorithm", list(ALGORITHMS.values()), ids=lambda a: a.name)
def test_hashes_tell_images_apart_and_survive_reencoding(algorithm: object) -> None:
    from hashsvc.hashing.algorithms import HashAlgorithm

    assert isinstance(algorithm, HashAlgorithm)
    a = algorithm.compute(_upload(IMAGES / "bridge-mods" / "aaa-orig.jpg"))
    b = algorithm.compute(_upload(IMAGES / "pen-and-coaster.png"))
    a_again = algorithm.compute(_upload(IMAGES / "bridge-mods" / "aaa-orig.jpg"))
    assert a == a_again
    assert hamming(a.value, b.value) > (0 if algorithm.exact else algorithm.bits // 5)
    blurred = algorithm.compute(_upload(IMAGES / "bridge-mods" / "blur-a-little.jpg"))
    if algorithm.exact:
        assert blurred.value != a.value
    else:
        assert hamming(blurred.value, a.value) <= algorithm.default_threshold


def test_unknown_algorithm_names_the_known_ones() -> None:
    with pytest.raises(InvalidHashError, match=r"unknown algorithm 'sha1'.*pdq"):
        parse_hash("sha1", "00")
