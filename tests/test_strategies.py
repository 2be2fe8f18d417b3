"""Per-bank matching strategies end to end: border trimming, crop variants, dihedral, on real
photos, through the store, a published snapshot, the matcher's delta and the scanner."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from hashsvc import snapshot as snapshots
from hashsvc.errors import HashsvcError
from hashsvc.hashing.algorithms import PDQ
from hashsvc.hashing.borders import Box, added_border_box, trim_box, trim_boxes
from hashsvc.hashing.imaging import Upload
from hashsvc.home import DataHome
from hashsvc.matching import variants
from hashsvc.matching.calibration import way_of_matching
from hashsvc.matching.delta import Delta
from hashsvc.matching.strategies import WAYS, MatchStrategies, parse_crop_list
from hashsvc.matching.variants import content_box
from hashsvc.scanner import Scanner, ScanOptions
from hashsvc.store import EntrySelector, NewEntry, SqliteStore, Store
from indexer.folders import hash_file
from tests.conftest import PHOTOS, hamming, run_indexer


def _photos_without_border(count: int) -> list[Path]:
    """Photos whose own frame has no uniform edge, so a padded copy trims back to them."""
    found = []
    for path in sorted(PHOTOS.iterdir()):
        if content_box(Upload(path.read_bytes()).decoded.image) is None:
            found.append(path)
        if len(found) == count:
            return found
    raise AssertionError("not enough photos without a border")


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _padded(path: Path, percent: int, colour: tuple[int, int, int]) -> bytes:
    with Image.open(path) as image:
        dx, dy = image.width * percent // 100, image.height * percent // 100
        return _jpeg(ImageOps.expand(image.convert("RGB"), (dx, dy, dx, dy), fill=colour))


def _cropped(path: Path, percent: float) -> bytes:
    with Image.open(path) as image:
        dx, dy = round(image.width * percent / 100), round(image.height * percent / 100)
        return _jpeg(image.crop((dx, dy, image.width - dx, image.height - dy)))


def _add_files(store: Store, bank: str, paths: list[Path]) -> None:
    """What `indexer add-images` stores, with the bank's strategies."""
    strategies = store.get_bank(bank).strategies
    entries = []
    for path in paths:
        result = hash_file(path, ["pdq"], strategies)
        assert result.error is None
        entries += [NewEntry("pdq", h.value, path.name) for h in result.hashes]
        entries += [NewEntry("pdq", h.value, path.name, variant=name)
                    for name, h in result.variants]
    store.add_entries(bank, entries)


def _scanner(store: Store, home: DataHome) -> Scanner:
    snapshots.publish(store, home.snapshots_dir)
    return Scanner(snapshots.load_current(home.snapshots_dir))


@pytest.mark.parametrize("colour", [(0, 0, 0), (255, 255, 255), (40, 90, 160)])
def test_padding_of_any_colour_trims_back_to_the_photo(colour: tuple[int, int, int]) -> None:
    (photo,) = _photos_without_border(1)
    with Image.open(photo) as image:
        width, height = image.size
    padded = Upload(_padded(photo, 20, colour)).decoded.image
    box = content_box(padded)
    assert box is not None
    dx, dy = width * 20 // 100, height * 20 // 100
    assert abs(box.left - dx) <= 2 and abs(box.top - dy) <= 2
    assert abs(box.right - (dx + width)) <= 2 and abs(box.bottom - (dy + height)) <= 2
    assert content_box(Image.new("RGB", (300, 200), colour)) is None  # flat: nothing to keep


def test_padded_copies_match_only_in_a_bank_that_trims_borders(
    store: Store, home: DataHome
) -> None:
    photos = _photos_without_border(3)
    store.create_bank("plain")
    store.create_bank("trimming", strategies=MatchStrategies(trim_borders=True))
    _add_files(store, "plain", photos)
    _add_files(store, "trimming", photos)
    scanner = _scanner(store, home)
    for photo, colour in zip(photos, [(0, 0, 0), (255, 255, 255), (128, 128, 128)], strict=True):
        copy = _padded(photo, 20, colour)
        assert hamming(PDQ.compute(Upload(copy)).value,
                       PDQ.compute(Upload(photo.read_bytes())).value) > 31  # PDQ alone fails
        result = scanner.scan_image(copy)
        assert [(m.bank, m.external_id) for m in result.matches] == [("trimming", photo.name)]
        assert result.matches[0].query_trimmed and result.matches[0].entry_variant == ""
        # Turned off per scan, the trimmed query is not even computed.
        assert not scanner.scan_image(copy, ScanOptions(trim_borders=False)).matches


def test_crop_variants_match_a_cropped_copy_once_naming_the_variant(
    store: Store, home: DataHome
) -> None:
    (photo,) = _photos_without_border(1)
    store.create_bank("crops", strategies=MatchStrategies(crop_variants=(1, 4)))
    _add_files(store, "crops", [photo])
    assert {e.variant for e in store.find_entries("crops", _by_name(photo))} == {
        "", "crop_1", "crop_4"}
    scanner = _scanner(store, home)

    result = scanner.scan_image(_cropped(photo, 4))
    (match,) = result.matches
    assert match.entry_variant == "crop_4" and match.external_id == photo.name

    # A 1% crop is near both the plain hash and crop_1: still one match, the closer variant.
    copy = _cropped(photo, 1)
    distances = {e.variant: hamming(PDQ.compute(Upload(copy)).value, e.hash)
                 for e in store.find_entries("crops", _by_name(photo))}
    assert distances[""] <= 31 and distances["crop_1"] < distances[""]  # the premise
    (match,) = scanner.scan_image(copy).matches
    assert match.entry_variant == "crop_1" and match.distance == distances["crop_1"]

    # Turning the strategy off makes the stored variants inert from the next snapshot.
    store.update_bank("crops", strategies=MatchStrategies())
    assert not _scanner(store, home).scan_image(_cropped(photo, 4)).matches


def test_a_bank_without_dihedral_ignores_rotated_copies(store: Store, home: DataHome) -> None:
    (photo,) = _photos_without_border(1)
    store.create_bank("upright", strategies=MatchStrategies(dihedral=False))
    store.create_bank("any-way")
    _add_files(store, "upright", [photo])
    _add_files(store, "any-way", [photo])
    with Image.open(photo) as image:
        rotated = _jpeg(image.transpose(Image.Transpose.ROTATE_90))
    result = _scanner(store, home).scan_image(rotated)
    assert [(m.bank, m.query_transform) for m in result.matches] == [("any-way", "rotate_270")]


def test_plain_hash_lists_still_match_in_a_bank_with_every_strategy(
    store: Store, home: DataHome
) -> None:
    photos = _photos_without_border(2)
    store.create_bank("imported", strategies=MatchStrategies(
        trim_borders=True, crop_variants=parse_crop_list("default")))
    store.add_entries("imported", [
        NewEntry("pdq", PDQ.compute(Upload(p.read_bytes())).value, f"list-{i}")
        for i, p in enumerate(photos)])
    scanner = _scanner(store, home)
    (match,) = scanner.scan_image(photos[1].read_bytes()).matches
    assert (match.external_id, match.distance, match.entry_variant) == ("list-1", 0, "")
    (padded,) = scanner.scan_image(_padded(photos[0], 20, (0, 0, 0))).matches
    assert padded.external_id == "list-0" and padded.query_trimmed


def test_variants_added_after_the_snapshot_match_through_the_delta(
    store: Store, home: DataHome
) -> None:
    (photo,) = _photos_without_border(1)
    store.create_bank("crops", strategies=MatchStrategies(crop_variants=(4,)))
    scanner = _scanner(store, home)  # published while the bank is empty
    _add_files(store, "crops", [photo])
    snapshot = scanner.snapshot
    assert snapshot is not None
    scanner.apply_delta(Delta.build(
        store.changes_since(int(snapshot.manifest["store_revision"])), store.list_banks()))
    (match,) = scanner.scan_image(_cropped(photo, 4)).matches
    assert match.entry_variant == "crop_4" and match.external_id == photo.name


def test_strategies_are_validated_and_persisted(store: Store) -> None:
    with pytest.raises(HashsvcError, match="whole percentages 1-30"):
        MatchStrategies(crop_variants=(0,))
    with pytest.raises(HashsvcError, match="comma-separated"):
        parse_crop_list("2,four")
    with pytest.raises(HashsvcError, match="unknown matching strategy: rotate"):
        MatchStrategies.from_dict({"rotate": True})
    store.create_bank("b", strategies=MatchStrategies(trim_borders=True, crop_variants=(6, 2)))
    assert store.get_bank("b").strategies == MatchStrategies(trim_borders=True,
                                                             crop_variants=(2, 6))


def test_a_version_2_store_is_upgraded_in_place(home: DataHome) -> None:
    with SqliteStore(home.store_path) as store:
        store.create_bank("old")
        store.add_entries("old", [NewEntry("pdq", bytes(32), "x")])
    db = sqlite3.connect(home.store_path)  # make it look as a v2 hashsvc left it
    db.executescript("ALTER TABLE entries DROP COLUMN variant; ALTER TABLE banks DROP COLUMN "
                     "strategies; UPDATE meta SET value = '2' WHERE key = 'schema';")
    db.close()
    with SqliteStore(home.store_path) as store:
        (entry,) = store.find_entries("old", _by_name_text("x"))
        assert entry.variant == "" and store.get_bank("old").strategies == MatchStrategies()
        store.update_bank("old", strategies=MatchStrategies(trim_borders=True))
        assert store.get_bank("old").strategies.trim_borders


def test_bank_flags_in_the_cli(home: DataHome) -> None:
    created = run_indexer(home, "bank", "create", "b", "--trim-borders", "--crop-variants",
                          "default", "--no-dihedral", check=True)
    assert "no dihedral, trim borders, crops 2%,4%,6%,8%,10%" in created.stderr
    updated = run_indexer(home, "bank", "update", "b", "--crop-variants", "none", check=True)
    assert "(no dihedral, trim borders)" in updated.stderr
    bad = run_indexer(home, "bank", "update", "b", "--crop-variants", "50")
    assert bad.returncode != 0 and "whole percentages 1-30" in bad.stderr

    # add-images stores each image's variants under its external id; match names the variant.
    (photo,) = _photos_without_border(1)
    run_indexer(home, "bank", "update", "b", "--crop-variants", "3,6", check=True)
    added = run_indexer(home, "add-images", "b", str(photo), "--algorithms", "pdq", check=True)
    assert "added 3 entries" in added.stderr  # plain + crop_3 + crop_6 (no border to trim)
    run_indexer(home, "publish", check=True)
    copy = home.root / "copy.jpg"
    copy.write_bytes(_cropped(photo, 6))
    matched = run_indexer(home, "match", str(copy))
    assert matched.returncode == 1, matched.stderr
    assert '"entry_variant": "crop_6"' in matched.stdout and photo.name in matched.stdout


def _by_name(path: Path) -> EntrySelector:
    return _by_name_text(path.name)


def _by_name_text(name: str) -> EntrySelector:
    return EntrySelector(external_ids=[name])


def test_variant_margin_makes_strategy_matches_stricter(store: Store, home: DataHome) -> None:
    (photo,) = _photos_without_border(1)
    copy = _padded(photo, 20, (0, 0, 0))
    store.create_bank("b", strategies=MatchStrategies(trim_borders=True))
    _add_files(store, "b", [photo])
    (match,) = _scanner(store, home).scan_image(copy).matches
    assert match.query_trimmed
    exact_fit = 31 - match.distance  # the largest margin that still lets this match through
    store.update_bank("b", strategies=MatchStrategies(trim_borders=True,
                                                      variant_margin=exact_fit))
    assert [m.distance for m in _scanner(store, home).scan_image(copy).matches] == [
        match.distance]
    store.update_bank("b", strategies=MatchStrategies(trim_borders=True,
                                                      variant_margin=exact_fit + 1))
    scanner = _scanner(store, home)
    assert not scanner.scan_image(copy).matches
    (plain,) = scanner.scan_image(photo.read_bytes()).matches  # plain matches keep threshold 31
    assert plain.distance == 0 and not plain.query_trimmed


def test_per_way_margins_load_old_configs_and_persist(store: Store) -> None:
    old = MatchStrategies.from_json('{"dihedral": true, "trim_borders": true, '
                                    '"crop_variants": [2], "variant_margin": 12}')
    assert [old.margin(way) for way in WAYS] == [12] * len(WAYS)  # one margin for every way
    ways = MatchStrategies(trim_borders=True, variant_margin=12, margins=(("dihedral", 0),))
    assert ways.margin("dihedral") == 0 and ways.margin("crop") == 12
    assert ways.margin_for(rotated=True, trimmed=False, variant="") == 0
    assert ways.margin_for(rotated=True, trimmed=False, variant="crop_4") == 12  # the larger
    assert ways.margin_for(rotated=False, trimmed=False, variant="") == 0  # plain: none
    assert MatchStrategies.from_json(ways.to_json()) == ways
    assert "margins" not in old.to_json()  # what a hashsvc before per-way margins reads
    # A way set to the default margin is the same setting as leaving it out.
    assert MatchStrategies(variant_margin=3, margins=(("crop", 3),)) == MatchStrategies(
        variant_margin=3)
    with pytest.raises(HashsvcError, match=r"unknown way.*: rotate \(known: dihedral"):
        MatchStrategies(margins=(("rotate", 1),))
    with pytest.raises(HashsvcError, match="crop margin must be 0-64 bits, got 65"):
        MatchStrategies(margins=(("crop", 65),))
    store.create_bank("b", strategies=ways)
    assert store.get_bank("b").strategies == ways


def test_margins_per_way_in_the_cli(home: DataHome) -> None:
    run_indexer(home, "bank", "create", "b", "--trim-borders", "--variant-margin", "12",
                "--margin", "dihedral=0", check=True)
    updated = run_indexer(home, "bank", "update", "b", "--margin", "crop=5", check=True)
    assert "variant margin 12, dihedral margin 0, crop margin 5" in updated.stderr
    more = run_indexer(home, "bank", "update", "b", "--rotation-variants", "4,3",
                       "--corner-crops", "4", "--margin", "rotation=2", check=True)
    assert "rotations ±3°,±4°, corner crops 4%, variant margin 12, dihedral margin 0, " \
        "crop margin 5, rotation margin 2" in more.stderr
    bad = run_indexer(home, "bank", "update", "b", "--margin", "crop:5")
    assert bad.returncode != 0 and "invalid margin 'crop:5': expected WAY=BITS" in bad.stderr


def test_a_rotation_margin_of_its_own(store: Store, home: DataHome) -> None:
    """A margin that stops a trimmed match need not stop a rotated one."""
    (photo,) = _photos_without_border(1)
    with Image.open(photo) as image:
        rotated = _jpeg(image.transpose(Image.Transpose.ROTATE_90))
    padded = _padded(photo, 20, (0, 0, 0))
    store.create_bank("b", strategies=MatchStrategies(trim_borders=True))
    _add_files(store, "b", [photo])
    scanner = _scanner(store, home)
    (turned,) = scanner.scan_image(rotated).matches
    (trimmed,) = scanner.scan_image(padded).matches
    assert turned.query_transform != "identity" and trimmed.query_trimmed
    tight = 31 - trimmed.distance + 1  # one bit too many for the trimmed match
    assert 31 - turned.distance >= 0
    store.update_bank("b", strategies=MatchStrategies(
        trim_borders=True, variant_margin=tight, margins=(("dihedral", 31 - turned.distance),)))
    scanner = _scanner(store, home)
    assert not scanner.scan_image(padded).matches
    assert [m.distance for m in scanner.scan_image(rotated).matches] == [turned.distance]


def test_only_the_added_border_is_trimmed_for_a_photo_with_an_edge_of_its_own() -> None:
    """A white band of the photo's own stays when a black pad around it is cut, while the
    full trim removes both."""
    luma = np.random.default_rng(3).uniform(0, 255, (200, 300)).astype(np.float32)  # busy
    luma[:30] = 250.0  # the photo's own near-uniform top edge (a bright sky)
    padded = np.zeros((260, 360), dtype=np.float32)
    padded[30:230, 30:330] = luma
    assert added_border_box(padded) == Box(30, 230, 30, 330)
    assert trim_box(padded) == Box(60, 230, 30, 330)
    assert trim_boxes(padded) == [Box(60, 230, 30, 330), Box(30, 230, 30, 330)]
    assert trim_boxes(luma) == [Box(30, 200, 0, 300)]  # nothing added: one box, the sky cut
    assert added_border_box(np.zeros((50, 50), dtype=np.float32)) is None  # flat


def test_a_hash_only_bank_matches_padded_photos_with_an_edge_of_their_own(
    store: Store, home: DataHome
) -> None:
    """An imported list holds plain hashes only; a padded copy of a photo with its own flat
    edge must trim back to the photo's frame, not past it."""
    photos = [p for p in sorted(PHOTOS.iterdir())[:40]
              if content_box(Upload(p.read_bytes()).decoded.image) is not None][:6]
    assert len(photos) >= 3
    store.create_bank("imported", strategies=MatchStrategies(trim_borders=True))
    store.add_entries("imported", [NewEntry("pdq", PDQ.compute(Upload(p.read_bytes())).value,
                                            p.name) for p in photos])
    scanner = _scanner(store, home)
    rescued = 0
    for photo in photos:
        copy = _padded(photo, 20, (30, 60, 120))
        full = variants.trimmed_pdq(Upload(copy))[0][0]
        (match,) = scanner.scan_image(copy).matches
        assert match.external_id == photo.name and match.query_trimmed
        rescued += hamming(full.value, PDQ.compute(Upload(photo.read_bytes())).value) > 31
    assert rescued >= 1  # the premise: the full trim alone would have missed some


def test_stored_rotations_and_corner_crops_match_tilted_and_off_centre_copies(
    store: Store, home: DataHome
) -> None:
    (photo,) = _photos_without_border(1)
    store.create_bank("more", strategies=MatchStrategies(rotation_variants=(4,),
                                                         corner_crops=(6,)))
    _add_files(store, "more", [photo])
    assert {e.variant for e in store.find_entries("more", _by_name(photo))} == {
        "", "rotate_4", "rotate_-4", "corner_6_tl", "corner_6_tr", "corner_6_bl",
        "corner_6_br"}
    scanner = _scanner(store, home)
    with Image.open(photo) as opened:
        image = opened.convert("RGB")
    tilted = _jpeg(image.rotate(-4, resample=Image.Resampling.BILINEAR))  # clockwise
    dx, dy = round(image.width * 0.06), round(image.height * 0.06)
    shifted = _jpeg(image.crop((dx, 0, image.width, image.height - dy)))  # keeps top-right
    plain = PDQ.compute(Upload(photo.read_bytes())).value
    for copy, variant in ((tilted, "rotate_-4"), (shifted, "corner_6_tr")):
        assert hamming(PDQ.compute(Upload(copy)).value, plain) > 31  # PDQ alone fails
        (match,) = scanner.scan_image(copy).matches
        assert match.entry_variant == variant and match.external_id == photo.name
    # Each has its own margin: a rotation margin past the tilted copy's distance stops it only.
    (tilted_match,) = scanner.scan_image(tilted).matches
    store.update_bank("more", strategies=MatchStrategies(
        rotation_variants=(4,), corner_crops=(6,),
        margins=(("rotation", 31 - tilted_match.distance + 1),)))
    scanner = _scanner(store, home)
    assert not scanner.scan_image(tilted).matches
    assert [m.entry_variant for m in scanner.scan_image(shifted).matches] == ["corner_6_tr"]
    # Calibrated scores name the same ways as the margins.
    assert [way_of_matching("identity", False, v) for v in ("rotate_-4", "corner_6_tr")] == [
        "rotation", "corner"]
    old = MatchStrategies(trim_borders=True, crop_variants=(2,))
    assert "rotation_variants" not in old.to_json() and "corner_crops" not in old.to_json()
    with pytest.raises(HashsvcError, match="rotation variants must be whole degrees 1-15"):
        MatchStrategies(rotation_variants=(20,))
