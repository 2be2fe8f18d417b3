"""The same-photo exclusion: one photograph in two files (not byte-identical) is not a pair of
unrelated images, and must leave the false-positive pairs and the tail model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from indexer.evaluation.hashing import METHODS
from indexer.evaluation.run import Config, evaluate
from indexer.evaluation.same_photo import SAME_PHOTO_NCC, same_photo_pairs, thumbnail
from tests.conftest import PHOTOS


def _thumbnails(paths: list[Path]) -> list[np.ndarray]:
    out = []
    for path in paths:
        with Image.open(path) as opened:
            out.append(thumbnail(opened))
    return out


def test_distinct_photos_of_one_backdrop_are_not_the_same_photo() -> None:
    """photos-cc0 is garments on plain backdrops, the hardest case for a coarse check: none of
    the first 150 distinct photographs may be taken for another (each would be a real
    unrelated pair thrown away)."""
    paths = sorted(PHOTOS.iterdir())[:150]
    assert same_photo_pairs(_thumbnails(paths), [True] * len(paths)) == []


def test_a_reencoded_rotated_copy_is_found_in_both_directions(tmp_path: Path) -> None:
    paths = sorted(PHOTOS.iterdir())[:5]
    with Image.open(paths[2]) as opened:
        copy = opened.convert("RGB").rotate(90, expand=True)
        copy = copy.resize((copy.width * 3 // 4, copy.height * 3 // 4))
    copy.save(tmp_path / "copy.jpg", quality=60)
    found = same_photo_pairs(_thumbnails([*paths, tmp_path / "copy.jpg"]), [True] * 6)
    assert sorted((a, b) for a, b, _ in found) == [(2, 5), (5, 2)]
    assert all(ncc >= SAME_PHOTO_NCC for _, _, ncc in found)
    # a query-only image (a negative) is checked against the stored ones only
    found = same_photo_pairs(_thumbnails([*paths, tmp_path / "copy.jpg"]), [True] * 5 + [False])
    assert [(a, b) for a, b, _ in found] == [(5, 2)]


def test_evaluate_leaves_a_resaved_photo_out_of_the_pairs(tmp_path: Path) -> None:
    """A photo re-saved at another quality is at PDQ distance ~0 from its original: counted
    as unrelated it would be a false positive at every threshold. Here it, and a copy given
    as a negative, are reported and left out, and no false positive remains."""
    originals, negatives = tmp_path / "originals", tmp_path / "negatives"
    originals.mkdir()
    negatives.mkdir()
    paths = sorted(PHOTOS.iterdir())[:6]
    for path in paths:
        (originals / path.name).write_bytes(path.read_bytes())
    with Image.open(paths[1]) as opened:
        opened.convert("RGB").save(originals / "zz-resaved.jpg", quality=70)
    with Image.open(paths[3]) as opened:
        opened.convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(
            negatives / "mirrored.jpg", quality=80)
    pdq = tuple(m for m in METHODS if m.name in ("pdq", "pdq+dihedral"))
    evaluation = evaluate(Config(originals, negatives=(negatives,), methods=pdq, workers=1))
    assert evaluation.originals == 7 and evaluation.negatives == 1
    assert {(a, b) for a, b, _ in evaluation.same_photo} == {
        (paths[1].name, "zz-resaved.jpg"), ("mirrored.jpg", paths[3].name)}
    # 7 originals: 42 ordered pairs less 2; the negative against 7 originals less 1
    assert evaluation.pairs["pdq"].pairs == 42 - 2 + 7 - 1
    assert evaluation.pairs["pdq"].false_positives(31) == 0
    assert evaluation.pairs["pdq+dihedral"].false_positives(31) == 0
    assert evaluation.tails["pdq"].image_pairs == 42 - 2 + 7 - 1
