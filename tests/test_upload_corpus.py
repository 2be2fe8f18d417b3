"""The upload corpus builder: real encoders, a faithful manifest, the same bytes for a seed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from hashsvc.hashing.imaging import decode
from loadtests import upload_corpus
from loadtests.upload_corpus import Spec, build, encode, find_tools, missing_tools

MISSING = missing_tools()
needs_tools = pytest.mark.skipif(
    bool(MISSING), reason=f"encoders not installed: apt-get install -y {' '.join(MISSING)}")
# Seed 1's first 8 files: PNG (plain and interlaced), baseline and progressive JPEG, WebP, AVIF
# and a screenshot; the multi-megapixel kinds are left out to keep this to a few seconds.
SMALL_KINDS = ["web-jpeg", "png", "webp", "avif", "screenshot"]
ROOT = Path(__file__).resolve().parents[1]


@needs_tools
def test_small_corpus_matches_its_manifest_and_is_reproducible(tmp_path: Path) -> None:
    rows = build(tmp_path / "a", count=8, seed=1, kinds=SMALL_KINDS)
    assert {row["format"] for row in rows} == {"JPEG", "PNG", "WEBP", "AVIF"}
    assert {row["kind"] for row in rows} == set(SMALL_KINDS)
    assert upload_corpus.read_manifest(tmp_path / "a") == rows
    for row in rows:
        data = (tmp_path / "a" / row["file"]).read_bytes()
        decoded = decode(data, name=row["file"])  # every file decodes the way the service does
        assert (decoded.format, decoded.width, decoded.height) == (
            row["format"], row["width"], row["height"])
        with Image.open(tmp_path / "a" / row["file"]) as image:
            if row["format"] == "JPEG":
                assert bool(image.info.get("progressive")) == row["options"]["progressive"]
            if row["format"] == "PNG":
                assert bool(image.info.get("interlace")) == row["options"]["interlaced"]
    # The same seed writes the same bytes (no timestamps in PNGs, one encoder thread for AVIF).
    again = build(tmp_path / "b", count=8, seed=1, kinds=SMALL_KINDS)
    assert [r["sha256"] for r in again] == [r["sha256"] for r in rows]


@needs_tools
def test_phone_photo_carries_its_exif_orientation(tmp_path: Path) -> None:
    """cjpeg writes no EXIF; the builder adds the tag, and decoding turns the image by it."""
    spec = Spec(0, "phone", "JPEG", "cjpeg", 64, 48, "ui:1",
                {"quality": 90, "progressive": False, "subsampling": "4:2:0", "optimize": True,
                 "orientation": 6})
    out = tmp_path / spec.file
    encode(spec, Image.new("RGB", (64, 48), (200, 30, 30)), out, find_tools(), tmp_path)
    with Image.open(out) as image:
        assert image.getexif()[0x0112] == 6 and image.size == (64, 48)
    decoded = decode(out.read_bytes())
    assert (decoded.width, decoded.height) == (48, 64)


def test_missing_encoder_names_the_debian_package(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no encoder on the PATH
    with pytest.raises(SystemExit, match="apt-get install -y libjpeg-turbo-progs webp "
                                         "libavif-bin imagemagick"):
        find_tools()


@needs_tools
def test_corpus_benchmark_reports_every_kind(tmp_path: Path) -> None:
    """One round over the small corpus: every file timed and compared, grouped by kind."""
    build(tmp_path / "corpus", count=8, seed=1, kinds=SMALL_KINDS)
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "loadtests" / "bench_corpus.py"), "--corpus",
         str(tmp_path / "corpus"), "--rounds", "1", "--jobs", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=300, check=True)
    report = json.loads(out.read_text())
    assert report["images"] == len(report["images_detail"]) == 8
    assert {"JPEG < 1 MP", "PNG", "WebP", "AVIF", "screenshot", "all"} <= set(report["groups"])
    overall = report["groups"]["all"]
    assert overall["images"] == 8 and overall["median_speedup"] > 0
    assert 0 <= overall["share_fast_slower"] <= 1
    # Photos and screenshots hash far from flat: each file's distance is a real comparison.
    assert all(0 <= d["distance"] <= 256 and d["quality"] > 0 for d in report["images_detail"])
    assert "JPEG < 1 MP" in result.stdout and "target" in result.stdout
