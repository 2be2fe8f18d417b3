"""The transform suite: the edits a re-uploaded copy of a known image typically went through.

Each transform is deterministic given the image and its index (randomness, such as noise or an
off-centre crop's direction, is seeded from both), returns encoded bytes that the scanner then
decodes exactly as it decodes an upload, and belongs to a group the report summarises. Amounts
follow imgaug's conventions, as Thorn's perception benchmark does: "crop 5%" cuts 5% from each
side, "pad 20%" adds 20% of the side on each side.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

Edit = Callable[[Image.Image, np.random.Generator], Image.Image]

JPEG_QUALITY = 90  # what a transformed copy is saved as, unless the transform is an encoding


@dataclass(frozen=True)
class Transform:
    name: str
    group: str  # the report's rows: e.g. every JPEG quality is "re-encode"
    edit: Edit
    quality: int = JPEG_QUALITY
    png: bool = False  # save losslessly (the screenshot-like transform)

    def apply(self, image: Image.Image, image_index: int) -> bytes:
        seed = zlib.crc32(f"{self.name}:{image_index}".encode())
        edited = self.edit(image, np.random.default_rng(seed)).convert("RGB")
        buffer = io.BytesIO()
        if self.png:
            edited.save(buffer, "PNG")
        else:
            edited.save(buffer, "JPEG", quality=self.quality)
        return buffer.getvalue()


def _same(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return image


def _resize(factor: float) -> Edit:
    def edit(image: Image.Image, rng: np.random.Generator) -> Image.Image:
        size = (max(8, round(image.width * factor)), max(8, round(image.height * factor)))
        return image.resize(size, Image.Resampling.BILINEAR)
    return edit


def _crop(percent: float, centred: bool = True) -> Edit:
    """Cut `percent` of each side; off-centre cuts twice that from one side of each axis."""
    def edit(image: Image.Image, rng: np.random.Generator) -> Image.Image:
        dx, dy = round(image.width * percent / 100), round(image.height * percent / 100)
        if centred:
            return image.crop((dx, dy, image.width - dx, image.height - dy))
        left = 2 * dx if rng.random() < 0.5 else 0
        top = 2 * dy if rng.random() < 0.5 else 0
        return image.crop((left, top, left + image.width - 2 * dx, top + image.height - 2 * dy))
    return edit


_PAD_COLOURS = ((0, 0, 0), (255, 255, 255), (128, 128, 128), (30, 60, 120))


def _pad(percent: float) -> Edit:
    def edit(image: Image.Image, rng: np.random.Generator) -> Image.Image:
        dx, dy = round(image.width * percent / 100), round(image.height * percent / 100)
        colour = _PAD_COLOURS[int(rng.integers(len(_PAD_COLOURS)))]
        return ImageOps.expand(image, border=(dx, dy, dx, dy), fill=colour)
    return edit


def _letterbox(percent: float) -> Edit:
    """Bars (top and bottom for a landscape frame, sides otherwise) taking `percent` of it."""
    def edit(image: Image.Image, rng: np.random.Generator) -> Image.Image:
        if image.width >= image.height:
            size = (image.width, round(image.height / (1 - percent / 100)))
        else:
            size = (round(image.width / (1 - percent / 100)), image.height)
        canvas = Image.new("RGB", size, (0, 0, 0))
        canvas.paste(image, ((size[0] - image.width) // 2, (size[1] - image.height) // 2))
        return canvas
    return edit


def _rotate(degrees: float) -> Edit:
    def edit(image: Image.Image, rng: np.random.Generator) -> Image.Image:
        return image.rotate(degrees, resample=Image.Resampling.BILINEAR, expand=False)
    return edit


def _transpose(method: Image.Transpose) -> Edit:
    def edit(image: Image.Image, rng: np.random.Generator) -> Image.Image:
        return image.transpose(method)
    return edit


def _enhance(kind: Callable[[Image.Image], ImageEnhance._Enhance], factor: float) -> Edit:
    def edit(image: Image.Image, rng: np.random.Generator) -> Image.Image:
        return kind(image).enhance(factor)
    return edit


def _gamma(gamma: float) -> Edit:
    table = [round(255 * (i / 255) ** gamma) for i in range(256)] * 3

    def edit(image: Image.Image, rng: np.random.Generator) -> Image.Image:
        return image.point(table)
    return edit


def _blur(radius: float) -> Edit:
    def edit(image: Image.Image, rng: np.random.Generator) -> Image.Image:
        return image.filter(ImageFilter.GaussianBlur(radius))
    return edit


def _noise(sigma: float) -> Edit:
    def edit(image: Image.Image, rng: np.random.Generator) -> Image.Image:
        pixels = np.asarray(image, dtype=np.float32)
        noisy = pixels + rng.normal(0.0, sigma, pixels.shape)
        return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    return edit


def _overlay(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A watermark: a caption along the bottom and a logo block in a corner."""
    marked = image.copy()
    draw = ImageDraw.Draw(marked)
    w, h = marked.size
    size = max(8, w // 10)
    corner = int(rng.integers(4))
    x = w - size - w // 20 if corner % 2 else w // 20
    y = h - size - h // 20 if corner // 2 else h // 20
    draw.rectangle((x, y, x + size, y + size), fill=(220, 30, 30), outline=(255, 255, 255))
    draw.text((w // 20, h - h // 8), "example.com  @hashsvc", fill=(255, 255, 255),
              font_size=max(8, h // 20))
    return marked


def _grayscale(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return image.convert("L")


def _screenshot(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Shown scaled on a screen and captured: rescaled, with a status bar above it."""
    scaled = image.resize((round(image.width * 1.3), round(image.height * 1.3)),
                          Image.Resampling.BILINEAR)
    bar = max(8, scaled.height // 16)
    canvas = Image.new("RGB", (scaled.width, scaled.height + bar), (24, 24, 24))
    canvas.paste(scaled, (0, bar))
    return canvas


def _then(first: Edit, second: Edit) -> Edit:
    def edit(image: Image.Image, rng: np.random.Generator) -> Image.Image:
        return second(first(image, rng), rng)
    return edit


SUITE: tuple[Transform, ...] = (
    *(Transform(f"jpeg_q{q}", "re-encode", _same, quality=q) for q in (30, 50, 70, 90, 95)),
    *(Transform(f"resize_{f}x", "resize", _resize(f)) for f in (0.25, 0.5, 2.0)),
    *(Transform(f"crop_{p}", f"crop {p}%", _crop(p)) for p in (2, 5, 10, 20)),
    *(Transform(f"crop_{p}_offcentre", "crop off-centre", _crop(p, centred=False))
      for p in (2, 5)),
    *(Transform(f"pad_{p}", f"pad {p}%", _pad(p)) for p in (10, 20, 30)),
    Transform("letterbox_20", "pad 20%", _letterbox(20)),
    Transform("rotate_90", "rotate 90/180/270", _transpose(Image.Transpose.ROTATE_90)),
    Transform("rotate_180", "rotate 90/180/270", _transpose(Image.Transpose.ROTATE_180)),
    Transform("rotate_270", "rotate 90/180/270", _transpose(Image.Transpose.ROTATE_270)),
    Transform("mirror", "mirror", _transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
    *(Transform(f"rotate_{d}deg", "small rotation", _rotate(d)) for d in (2, 4, 5)),
    Transform("brighter", "colour", _enhance(ImageEnhance.Brightness, 1.3)),
    Transform("darker", "colour", _enhance(ImageEnhance.Brightness, 0.7)),
    Transform("contrast_up", "colour", _enhance(ImageEnhance.Contrast, 1.5)),
    Transform("contrast_down", "colour", _enhance(ImageEnhance.Contrast, 0.6)),
    Transform("gamma_0.6", "colour", _gamma(0.6)),
    Transform("gamma_1.6", "colour", _gamma(1.6)),
    Transform("grayscale", "colour", _grayscale),
    Transform("blur", "blur", _blur(2.0)),
    Transform("noise", "noise", _noise(12.0)),
    Transform("overlay", "overlay", _overlay),
    Transform("screenshot", "screenshot", _screenshot, png=True),
    Transform("crop_5+jpeg_q50", "combination", _crop(5), quality=50),
    Transform("pad_20+mirror", "combination",
              _then(_pad(20), _transpose(Image.Transpose.FLIP_LEFT_RIGHT))),
)
BY_NAME = {t.name: t for t in SUITE}
