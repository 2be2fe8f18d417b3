"""The pixels of the upload corpus (`upload_corpus.py`): where each file's image comes from.

Nothing is fetched: photos-cc0 and the PDQ reference images from the shared test data, images
Python packages ship (matplotlib's `grace_hopper.jpg` and DejaVu fonts, locust's web-UI
screenshots), and screenshots drawn here.
"""

from __future__ import annotations

import os
import random
from functools import cache
from importlib.util import find_spec
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

DATA = Path(os.environ.get("HASHSVC_SHARED_DATA", Path(__file__).parents[2] / "shared" / "data"))
PHOTOS = DATA / "photos-cc0" / "images"
REFERENCE = DATA / "pdq-reference" / "images"


@cache
def cc0_photos() -> list[Path]:
    return sorted(PHOTOS.glob("*.jpg"))


@cache
def real_photos() -> list[Path]:
    """Real photographs larger than the CC0 photos (see `upload_corpus`'s docstring)."""
    paths = [REFERENCE / "exif-rotn" / "exif-rotn-1.jpg",
             REFERENCE / "bridge-mods" / "aaa-orig.jpg",
             *sorted((REFERENCE / "labelme-subset").glob("*.jpg"))]
    paths += _package_files("matplotlib", "mpl-data/sample_data/grace_hopper.jpg")
    return [p for p in paths if p.is_file()]


@cache
def package_screenshots() -> list[Path]:
    return [p for p in _package_files("locust", "webui/dist/assets/graphs-light.png",
                                      "webui/dist/assets/graphs-dark.png",
                                      "webui/dist/assets/testruns-light.png",
                                      "webui/dist/assets/testruns-dark.png") if p.is_file()]


def _package_files(package: str, *relative: str) -> list[Path]:
    spec = find_spec(package)
    if spec is None or spec.origin is None:
        return []
    root = Path(spec.origin).parent
    return [root / r for r in relative]


def cover(image: Image.Image, width: int, height: int) -> Image.Image:
    """Resize to cover width × height, then crop the centre: no stretching, no borders."""
    scale = max(width / image.width, height / image.height)
    size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    resized = image.resize(size, Image.Resampling.LANCZOS)
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    return resized.crop((left, top, left + width, top + height))


def _mosaic(start: int, width: int, height: int) -> Image.Image:
    photos = cc0_photos()
    canvas = Image.new("RGB", (width, height))
    index = start
    for top in range(0, height, 533):
        for left in range(0, width, 400):
            with Image.open(photos[index % len(photos)]) as photo:
                canvas.paste(photo.convert("RGB"), (left, top))
            index += 1
    return canvas


def _font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    fonts = _package_files("matplotlib", f"mpl-data/fonts/ttf/{name}")
    if fonts and fonts[0].is_file():
        return ImageFont.truetype(str(fonts[0]), size)
    return ImageFont.load_default(size)


WORDS = ("upload", "share", "photo", "settings", "friends", "message", "today", "report",
         "profile", "search", "notifications", "comment", "like", "album", "story", "new")


def _screenshot(seed: int, width: int, height: int) -> Image.Image:
    """A UI screen: a header bar, text in two sizes, buttons and a feed of photos."""
    rng = random.Random(seed)
    dark = rng.random() < 0.3
    background, ink = ((24, 24, 28), (230, 230, 235)) if dark else ((250, 250, 250), (20, 20, 24))
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    unit = max(12, min(width, height) // 40)
    accent = tuple(rng.randrange(40, 220) for _ in range(3))
    draw.rectangle((0, 0, width, unit * 3), fill=accent)
    draw.text((unit, unit // 2), " ".join(rng.choices(WORDS, k=3)).title(),
              font=_font(unit * 3 // 2, bold=True), fill=(255, 255, 255))
    photos = cc0_photos()
    body, small = _font(unit), _font(unit * 3 // 4)
    top = unit * 4
    while top < height:
        if rng.random() < 0.35:  # a photo in the feed
            side = min(width - 2 * unit, rng.randrange(unit * 8, unit * 20))
            with Image.open(rng.choice(photos)) as photo:
                image.paste(cover(photo.convert("RGB"), side, side * 4 // 3), (unit, top))
            top += side * 4 // 3 + unit
        elif rng.random() < 0.3:  # a button
            label = rng.choice(WORDS).upper()
            draw.rounded_rectangle((unit, top, unit * 12, top + unit * 2), radius=unit // 2,
                                   fill=accent)
            draw.text((unit * 2, top + unit // 3), label, font=body, fill=(255, 255, 255))
            top += unit * 3
        else:  # a paragraph
            for _ in range(rng.randrange(1, 5)):
                words = rng.choices(WORDS, k=max(2, width // (unit * 6)))
                draw.text((unit, top), " ".join(words), font=rng.choice((body, small)), fill=ink)
                top += unit * 3 // 2
            draw.line((unit, top, width - unit, top), fill=(128, 128, 128), width=1)
            top += unit
    return image


def pixels(source: str, width: int, height: int) -> Image.Image:
    """The image a manifest's `source` names, at width × height."""
    kind, _, name = source.partition(":")
    if kind == "photo":
        with Image.open(PHOTOS / name) as photo:
            return cover(photo.convert("RGB"), width, height)
    if kind == "mosaic":
        return _mosaic(int(name), width, height)
    if kind == "real":
        path = next(p for p in real_photos() if p.name == name)
        with Image.open(path) as photo:  # the stored pixels: EXIF orientation is not applied
            return cover(photo.convert("RGB"), width, height)
    if kind == "package":
        path = next(p for p in package_screenshots() if p.name == name)
        with Image.open(path) as shot:
            return cover(shot.convert("RGB"), width, height)
    return _screenshot(int(name), width, height)
