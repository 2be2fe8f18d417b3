"""A corpus of uploads as real encoders write them, for benchmarking the scan path.

    python loadtests/upload_corpus.py --out /tmp/corpus --count 600 --seed 1

Why: the fast scan path was tuned on photos that Pillow re-encoded as baseline JPEGs, and real
uploads differ (issue 15): web-sized JPEGs, progressive JPEGs, PNG, WebP and AVIF from their own
encoders, phone photos with EXIF orientation, screenshots. Each file is written by the tool a
platform's users actually run, and described in `manifest.jsonl` (one JSON object a line: file,
kind, format, encoder, options, size, source, sha256) so a benchmark can split by kind.

Where the pixels come from (nothing is fetched at run time):
- `photo`: a photos-cc0 photo (400×533, CC0) resized to the target (Lanczos, cover and crop);
- `mosaic`: photos-cc0 photos tiled at about 1:1, so a large image keeps camera-level detail
  instead of an upscale's smoothness;
- `real`: the real multi-megapixel photos among the PDQ reference images (12 MP exif-rotn-1,
  1.6 MP bridge, labelme subset, BSD) and matplotlib's `grace_hopper.jpg`, resized;
- screenshots: UI drawn with Pillow (DejaVu fonts, which matplotlib ships: text, buttons, a
  feed of photos), or locust's web-UI screenshots (shipped in its wheel) resized.

Encoders: libjpeg-turbo's `cjpeg` and ImageMagick for JPEG (baseline/progressive, 4:2:0/4:4:4,
optimized Huffman or not) and PNG (Adam7-interlaced or not), `cwebp` for WebP, `avifenc`
(libaom, one thread) for AVIF. Every choice comes from a `random.Random` seeded with
(seed, index): the same seed gives the same files byte for byte, and a larger `--count` keeps
the smaller one's files as its prefix.

The size and kind mix (`KINDS`) is an assumption, stated here so it can be argued with: most
uploads are web-sized (the issue's sample of real web JPEGs had most short sides under 384 px),
so 46% are JPEGs under 1 MP, 5% 1-3 MP, 10% 3-16 MP camera photos and 5% 12 MP phone photos
with an EXIF orientation; PNG and WebP 10% each, AVIF 4% (rare on upload), screenshots 10%
(phone and desktop resolutions, 0.4-3.7 MP). About two thirds of the files are under 1 MP.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # run as `python loadtests/upload_corpus.py`: find `loadtests`
    sys.path.insert(0, str(_ROOT))

from loadtests.corpus_pixels import (  # noqa: E402
    PHOTOS,
    cc0_photos,
    package_screenshots,
    pixels,
    real_photos,
)

# kind: weight in percent of the corpus (see the module docstring for why).
KINDS: dict[str, int] = {
    "web-jpeg": 46, "mid-jpeg": 5, "large-jpeg": 10, "phone": 5,
    "png": 10, "webp": 10, "avif": 4, "screenshot": 10,
}
# Phone and desktop screen resolutions (width × height).
SCREENS = ((1170, 2532), (1080, 2400), (750, 1334), (1920, 1080), (1366, 768), (1440, 900),
           (2560, 1440), (828, 1792))
ASPECTS = (1.0, 4 / 3, 3 / 2, 16 / 9, 5 / 4)
QUALITIES = (70, 75, 80, 85, 90, 92, 95)
# Debian package of each tool, for the one-line message when one is missing.
TOOLS = {"cjpeg": "libjpeg-turbo-progs", "cwebp": "webp", "avifenc": "libavif-bin",
         "imagemagick": "imagemagick"}
# ImageMagick's names, IM7 first. Plain `convert` is left out: it clashes with other tools.
MAGICK_NAMES = ("magick", "convert-im6.q16", "convert-im6")


@dataclass
class Spec:
    """One corpus file: everything needed to make it, and what the manifest says about it."""

    index: int
    kind: str
    format: str
    encoder: str
    width: int
    height: int
    source: str  # "photo:<name>", "mosaic:<first name>+N", "real:<name>", "ui", "package:<name>"
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def file(self) -> str:
        extension = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "AVIF": "avif"}[self.format]
        return f"{self.index:05d}-{self.kind}.{extension}"


def find_tools() -> dict[str, str]:
    """Every encoder's path, or exit with one line naming the Debian packages to install."""
    found: dict[str, str] = {}
    for tool in ("cjpeg", "cwebp", "avifenc"):
        path = shutil.which(tool)
        if path:
            found[tool] = path
    magick = next((p for p in (shutil.which(n) for n in MAGICK_NAMES) if p), None)
    if magick:
        found["imagemagick"] = magick
    missing = [tool for tool in TOOLS if tool not in found]
    if missing:
        raise SystemExit(f"upload_corpus: missing {', '.join(missing)}: apt-get install -y "
                         f"{' '.join(TOOLS[t] for t in missing)}")
    return found


def missing_tools() -> list[str]:
    """Debian packages whose tools are absent (for tests that skip without them)."""
    try:
        find_tools()
    except SystemExit as exit_:
        return str(exit_).rsplit("install -y ", 1)[1].split()
    return []


# --------------------------------------------------------------------------- planning


def _size_under(rng: random.Random, low_mp: float, high_mp: float, min_short: int = 0) -> tuple[
        int, int]:
    """A width × height with megapixels log-uniform in [low, high), a common aspect, either way
    round."""
    megapixels = math.exp(rng.uniform(math.log(low_mp), math.log(high_mp)))
    aspect = rng.choice(ASPECTS)
    short = max(min_short, round(math.sqrt(megapixels * 1e6 / aspect)))
    long_ = round(short * aspect)
    return (long_, short) if rng.random() < 0.5 else (short, long_)


def _jpeg_options(rng: random.Random, progressive_share: float) -> tuple[str, dict[str, Any]]:
    encoder = "cjpeg" if rng.random() < 0.6 else "imagemagick"
    progressive = rng.random() < progressive_share
    return encoder, {
        "quality": rng.choice(QUALITIES),
        "progressive": progressive,
        "subsampling": "4:4:4" if rng.random() < 0.2 else "4:2:0",
        "optimize": progressive or rng.random() < 0.5,  # progressive implies optimized tables
    }


def _pixel_source(rng: random.Random, weights: tuple[float, float, float]) -> str:
    kind = rng.choices(("photo", "mosaic", "real"), weights)[0]
    photos = cc0_photos()
    if kind == "photo":
        return f"photo:{rng.choice(photos).name}"
    if kind == "mosaic":
        return f"mosaic:{rng.randrange(len(photos))}"
    return f"real:{rng.choice(real_photos()).name}"


def plan(index: int, seed: int) -> Spec:
    """The spec of file `index`: a pure function of (seed, index)."""
    rng = random.Random(f"{seed}:{index}")
    kind = rng.choices(list(KINDS), list(KINDS.values()))[0]
    if kind in ("web-jpeg", "mid-jpeg", "large-jpeg"):
        low, high = {"web-jpeg": (0.03, 1.0), "mid-jpeg": (1.0, 3.0),
                     "large-jpeg": (3.0, 16.0)}[kind]
        width, height = _size_under(rng, low, high)
        weights = (0.7, 0.1, 0.2) if kind == "web-jpeg" else (0.3, 0.3, 0.4)
        source = _pixel_source(rng, weights)
        encoder, options = _jpeg_options(rng, 0.3 if kind == "web-jpeg" else 0.5)
        return Spec(index, kind, "JPEG", encoder, width, height, source, options)
    if kind == "phone":  # stored the way the sensor saw it, turned by the EXIF tag
        orientation = rng.choice((1, 1, 3, 6, 6, 8))
        width, height = (4032, 3024) if orientation in (1, 3) else (3024, 4032)
        options = {"quality": rng.choice((88, 90, 92, 95)), "progressive": False,
                   "subsampling": "4:2:0", "optimize": True, "orientation": orientation}
        return Spec(index, kind, "JPEG", "cjpeg", width, height,
                    _pixel_source(rng, (0.2, 0.4, 0.4)), options)
    if kind == "png":
        width, height = _size_under(rng, 0.05, 1.0 if rng.random() < 0.8 else 2.5)
        return Spec(index, kind, "PNG", "imagemagick", width, height,
                    _pixel_source(rng, (0.7, 0.1, 0.2)), {"interlaced": rng.random() < 0.5})
    if kind == "webp":
        width, height = _size_under(rng, 0.05, 1.0 if rng.random() < 0.85 else 3.0)
        lossless = rng.random() < 0.1
        options = {"lossless": True} if lossless else {"quality": rng.choice((75, 80, 85, 90))}
        return Spec(index, kind, "WEBP", "cwebp", width, height,
                    _pixel_source(rng, (0.7, 0.1, 0.2)), options)
    if kind == "avif":
        width, height = _size_under(rng, 0.05, 1.5)
        quantizer = rng.choice((18, 24, 30))
        return Spec(index, kind, "AVIF", "avifenc", width, height,
                    _pixel_source(rng, (0.7, 0.1, 0.2)),
                    {"min_quantizer": quantizer, "max_quantizer": quantizer + 8, "yuv": "420"})
    width, height = rng.choice(SCREENS)
    shipped = package_screenshots()
    source = (f"package:{rng.choice(shipped).name}" if shipped and rng.random() < 0.25
              else f"ui:{rng.randrange(1 << 30)}")
    if rng.random() < 0.8:
        return Spec(index, kind, "PNG", "imagemagick", width, height, source,
                    {"interlaced": False})
    encoder, options = _jpeg_options(rng, 0.2)
    return Spec(index, kind, "JPEG", encoder, width, height, source, options)


# --------------------------------------------------------------------------- encoding


def encode(spec: Spec, image: Image.Image, out: Path, tools: dict[str, str], tmp: Path) -> None:
    """Write `image` to `out` with the spec's encoder and options."""
    options = spec.options
    ppm, png = tmp / f"{spec.index}.ppm", tmp / f"{spec.index}.png"
    if spec.encoder in ("cjpeg", "imagemagick"):
        image.save(ppm)
    else:
        image.save(png, compress_level=1)
    if spec.encoder == "cjpeg":
        command = [tools["cjpeg"], "-quality", str(options["quality"]),
                   "-sample", "1x1" if options["subsampling"] == "4:4:4" else "2x2"]
        command += ["-progressive"] if options["progressive"] else []
        command += ["-optimize"] if options["optimize"] else []
        command += ["-outfile", str(out), str(ppm)]
    elif spec.encoder == "imagemagick" and spec.format == "JPEG":
        command = [tools["imagemagick"], str(ppm), "-strip", "-quality", str(options["quality"]),
                   "-sampling-factor", "1x1" if options["subsampling"] == "4:4:4" else "2x2",
                   "-interlace", "JPEG" if options["progressive"] else "none",
                   "-define", f"jpeg:optimize-coding={str(options['optimize']).lower()}",
                   str(out)]
    elif spec.encoder == "imagemagick":  # PNG; no date chunks, so the bytes are reproducible
        command = [tools["imagemagick"], str(ppm), "-strip",
                   "-define", "png:exclude-chunks=date,time",
                   "-interlace", "PNG" if options["interlaced"] else "none", f"PNG24:{out}"]
    elif spec.encoder == "cwebp":
        quality = ["-lossless"] if options.get("lossless") else ["-q", str(options["quality"])]
        command = [tools["cwebp"], "-quiet", *quality, str(png), "-o", str(out)]
    else:
        command = [tools["avifenc"], "--jobs", "1", "--speed", "8", "--yuv", options["yuv"],
                   "--min", str(options["min_quantizer"]), "--max", str(options["max_quantizer"]),
                   str(png), str(out)]
    result = subprocess.run(command, capture_output=True, check=False)
    for path in (ppm, png):
        path.unlink(missing_ok=True)
    if result.returncode != 0:
        raise SystemExit(f"upload_corpus: {spec.file}: {Path(command[0]).name} failed: "
                         f"{result.stderr.decode(errors='replace').strip()[:300]}")
    if options.get("orientation", 1) != 1:
        out.write_bytes(with_orientation(out.read_bytes(), options["orientation"]))


def with_orientation(jpeg: bytes, orientation: int) -> bytes:
    """`jpeg` with an EXIF APP1 segment carrying `orientation`, as a phone writes it (cjpeg
    writes no EXIF). It goes after the JFIF APP0 segment, which must stay first."""
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    exif[0x010F] = "hashsvc corpus"  # Make
    payload = exif.tobytes()  # starts with b"Exif\0\0"
    segment = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    at = 2
    if jpeg[2:4] == b"\xff\xe0":
        at = 4 + int.from_bytes(jpeg[4:6], "big")
    return jpeg[:at] + segment + jpeg[at:]


def build_one(job: tuple[Spec, str, dict[str, str]]) -> dict[str, Any]:
    spec, out_dir, tools = job
    out = Path(out_dir) / spec.file
    with tempfile.TemporaryDirectory(prefix="corpus-", dir=out_dir) as tmp:
        encode(spec, pixels(spec.source, spec.width, spec.height), out, tools, Path(tmp))
    data = out.read_bytes()
    return {"file": spec.file, **{k: v for k, v in asdict(spec).items() if k != "index"},
            "megapixels": round(spec.width * spec.height / 1e6, 3), "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


def build(out: Path, count: int, seed: int, jobs: int = 1,
          kinds: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Write `count` files and `manifest.jsonl` into `out`; return the manifest rows.

    `kinds`: keep only these kinds (the plan is unchanged, so files keep their names)."""
    tools = find_tools()
    if not cc0_photos():
        raise SystemExit(f"upload_corpus: no photos under {PHOTOS}: set HASHSVC_SHARED_DATA")
    out.mkdir(parents=True, exist_ok=True)
    specs = [plan(i, seed) for i in range(count)]
    if kinds:
        specs = [s for s in specs if s.kind in kinds]
    work = [(spec, str(out), tools) for spec in specs]
    if jobs > 1:
        with multiprocessing.get_context("forkserver").Pool(jobs) as pool:
            rows = pool.map(build_one, work, chunksize=1)
    else:
        rows = [build_one(job) for job in work]
    with (out / "manifest.jsonl").open("w") as manifest:
        for row in rows:
            manifest.write(json.dumps(row, sort_keys=True) + "\n")
    return rows


def read_manifest(corpus: Path) -> list[dict[str, Any]]:
    """The rows of a corpus's manifest, for benchmarks."""
    path = corpus / "manifest.jsonl"
    if not path.is_file():
        raise SystemExit(f"{corpus}: no manifest.jsonl: build it with loadtests/upload_corpus.py")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="directory to write into")
    parser.add_argument("--count", type=int, default=600, help="files (default %(default)s)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1, help="encoding processes")
    parser.add_argument("--kinds", nargs="+", choices=sorted(KINDS),
                        help="only these kinds (default all)")
    args = parser.parse_args(argv)
    rows = build(args.out, args.count, args.seed, args.jobs, args.kinds)
    by_kind: dict[str, int] = {}
    for row in rows:
        by_kind[row["kind"]] = by_kind.get(row["kind"], 0) + 1
    under = sum(row["megapixels"] < 1 for row in rows)
    print(f"{len(rows)} files in {args.out} ({under} under 1 MP): "
          + ", ".join(f"{k} {n}" for k, n in sorted(by_kind.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
