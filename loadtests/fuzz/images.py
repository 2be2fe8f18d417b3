"""A seeded generator of hostile images: every supported format, broken in every way we know.

Input `i` of seed `s` depends on (s, i) alone, so any failure is reproduced by its name with
`--only NAME`. Families:

- `mutate`: a small valid image (random content, mode and encoder settings) truncated, with
  bytes flipped or XORed, ranges zeroed, bytes inserted, segments repeated, or its header's
  dimensions edited;
- `bomb`: a file claiming a large image: valid and tiny when the format compresses (PNG, TIFF
  deflate, BMP RLE8), header-patched otherwise (JPEG baseline and progressive, GIF, WebP, AVIF,
  HEIF), at sizes below, at and beyond the limits;
- `frames` / `pages`: GIF, WebP and PNG animations of up to 1,000 frames, TIFFs of up to 1,000
  pages;
- `scans`: progressive JPEGs whose scans are repeated (issue 12, defect 5's recipe);
- `exif`: JPEGs with odd or broken EXIF orientation blocks;
- `recipe`: the exact inputs of issue 12 (defects 3-6), emitted first in every run.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageDraw, features

from loadtests.fuzz.headers import SET_SIZE, jpeg_set_size, png_chunk, tiff_retype

try:
    import pillow_heif

    pillow_heif.register_heif_opener()
    _HEIF = True
except ImportError:  # pragma: no cover - depends on the install
    _HEIF = False

MAX_BYTES = 32 * 1024 * 1024  # the server's default upload limit: larger inputs test nothing new


@dataclass(frozen=True)
class FuzzImage:
    name: str
    data: bytes
    defect: str = ""  # for recipes: the defect of issue 12 it reproduces
    refuse: tuple[str, ...] = ()  # paths (scan, hash) on which the issue says it must be refused


def formats() -> tuple[str, ...]:
    """Encoders available here (AVIF needs Pillow >= 11.2, HEIF the pillow-heif plugin)."""
    found = ["jpeg", "jpeg-progressive", "png", "gif", "bmp", "tiff"]
    if features.check("webp"):
        found.append("webp")
    if features.check("avif"):
        found.append("avif")
    if _HEIF:
        found.append("heif")
    return tuple(found)


# ---- valid images -----------------------------------------------------------------------------


def _content(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    kind = rng.choice(("noise", "gradient", "flat", "shapes"))
    if kind == "noise":
        return Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
    if kind == "gradient":
        return Image.linear_gradient("L").resize(size).convert("RGB")
    image = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    if kind == "shapes":
        draw = ImageDraw.Draw(image)
        for _ in range(rng.randrange(1, 8)):
            box = sorted(rng.randrange(size[0]) for _ in range(2))
            rows = sorted(rng.randrange(size[1]) for _ in range(2))
            draw.rectangle((box[0], rows[0], box[1], rows[1]),
                           fill=tuple(rng.randrange(256) for _ in range(3)))
    return image


_MODES = {"jpeg": ("RGB", "L", "CMYK"), "jpeg-progressive": ("RGB", "L"),
          "png": ("RGB", "RGBA", "L", "LA", "P", "1", "I;16"), "gif": ("P", "L"),
          "bmp": ("RGB", "L", "P", "1"), "tiff": ("RGB", "RGBA", "L", "CMYK", "1", "I;16"),
          "webp": ("RGB", "RGBA"), "avif": ("RGB", "RGBA"), "heif": ("RGB", "RGBA")}


def _params(rng: random.Random, fmt: str, mode: str) -> tuple[str, dict[str, object]]:
    if fmt.startswith("jpeg"):
        return "JPEG", {"quality": rng.randrange(1, 96), "progressive": fmt.endswith("progressive"),
                        "subsampling": rng.choice((0, 1, 2))}
    if fmt == "tiff":
        options = [None, "tiff_deflate", "tiff_lzw", "packbits"]
        if mode in ("RGB", "L"):
            options.append("jpeg")
        return "TIFF", {"compression": rng.choice(options)}
    if fmt == "webp":
        return "WEBP", {"lossless": rng.random() < 0.3, "quality": rng.randrange(1, 100)}
    if fmt in ("avif", "heif"):
        return fmt.upper(), {"quality": rng.randrange(1, 100)}
    return fmt.upper(), {}


def encode(image: Image.Image, fmt: str, rng: random.Random) -> bytes:
    """`image` in `fmt` with a random mode and random encoder settings."""
    mode = rng.choice(_MODES[fmt])
    converted = image.convert(mode) if mode != "I;16" else image.convert("L").convert("I;16")
    pillow_format, params = _params(rng, fmt, mode)
    buffer = io.BytesIO()
    try:
        converted.save(buffer, pillow_format, **params)
    except (OSError, ValueError, KeyError):  # a mode this encoder lacks here: plain RGB then
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, pillow_format)
    return buffer.getvalue()


def small_image(rng: random.Random, fmt: str) -> bytes:
    size = (rng.randrange(8, 160), rng.randrange(8, 160))
    return encode(_content(rng, size), fmt, rng)


# Claimed sizes: ordinary, at the 24 MP full-decode cap, at the 50 MP cap, past every cap,
# past the side limit, degenerate.
CLAIMS = ((4096, 4096), (4898, 4898), (5000, 5000), (7071, 7071), (2000, 12000),
          (16383, 16383), (20000, 20000), (65535, 65535), (30001, 10), (10, 30001), (0, 0),
          (1, 1), (0, 4096), (7, 7))
# Valid bombs are built for real, so only up to the 24 MP cap (larger is refused by the header).
_VALID_BOMB_SIDES = (2048, 4096, 4898)


# ---- families ---------------------------------------------------------------------------------


def mutate(rng: random.Random, data: bytes, fmt: str) -> tuple[bytes, str]:
    how = rng.choice(("truncate", "flip", "xor", "zero", "insert", "repeat", "size", "size"))
    n = len(data)
    if how == "truncate":
        cut = rng.randrange(n)
        return data[:cut], f"truncate@{cut}"
    if how == "flip":
        out = bytearray(data)
        for _ in range(rng.randrange(1, 17)):
            out[rng.randrange(n)] ^= rng.randrange(1, 256)
        return bytes(out), "flip"
    if how == "xor":
        at = rng.randrange(n)
        return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:], f"xor@{at}"
    if how == "zero":
        at, length = rng.randrange(n), rng.randrange(1, 64)
        return data[:at] + bytes(min(length, n - at)) + data[at + length:], f"zero@{at}"
    if how == "insert":
        at = rng.randrange(n)
        return data[:at] + rng.randbytes(rng.randrange(1, 64)) + data[at:], f"insert@{at}"
    if how == "repeat":
        at = rng.randrange(n)
        segment = data[at:at + rng.randrange(1, 4096)]
        return data[:at] + segment * rng.randrange(2, 64) + data[at:], f"repeat@{at}"
    width, height = rng.choice(CLAIMS)
    return SET_SIZE[fmt](data, width, height), f"size{width}x{height}"


@lru_cache(maxsize=8)
def _png_zero_bomb(side: int) -> bytes:
    raw = zlib.compress(bytes((1 + 3 * side) * side), 9)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2,
                                                                   0, 0, 0))
            + png_chunk(b"IDAT", raw) + png_chunk(b"IEND", b""))


@lru_cache(maxsize=8)
def _tiff_zero_bomb(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (side, side)).save(buffer, "TIFF", compression="tiff_deflate")
    return buffer.getvalue()


def _bmp_rle_bomb(width: int, height: int) -> bytes:
    """An 8-bit RLE BMP whose pixel data is one 'end of bitmap' code: any size, 1 KB."""
    palette = bytes(1024)
    pixels = b"\x00\x01"
    offset = 14 + 40 + len(palette)
    header = struct.pack("<2sIHHI", b"BM", offset + len(pixels), 0, 0, offset)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(pixels), 2835, 2835,
                       256, 0)
    return header + info + palette + pixels


def bomb(rng: random.Random, fmt: str) -> tuple[bytes, str]:
    if fmt == "png" and rng.random() < 0.5:
        side = rng.choice(_VALID_BOMB_SIDES)
        return _png_zero_bomb(side), f"deflate{side}"
    if fmt == "tiff" and rng.random() < 0.5:
        side = rng.choice(_VALID_BOMB_SIDES)
        return _tiff_zero_bomb(side), f"deflate{side}"
    width, height = rng.choice(CLAIMS)
    if fmt == "bmp" and rng.random() < 0.5:
        return _bmp_rle_bomb(width, height), f"rle{width}x{height}"
    small = encode(_content(rng, (16, 16)), fmt, rng)
    return SET_SIZE[fmt](small, width, height), f"claim{width}x{height}"


def animation(rng: random.Random) -> tuple[bytes, str]:
    fmt = rng.choice(("GIF", "WEBP", "PNG") if features.check("webp") else ("GIF", "PNG"))
    count = rng.randrange(2, 1001)
    frames = [Image.new("RGB", (16, 16), (i % 256, (i * 7) % 256, 0)) for i in range(count)]
    buffer = io.BytesIO()
    frames[0].save(buffer, fmt, save_all=True, append_images=frames[1:], duration=10)
    return buffer.getvalue(), f"{fmt.lower()}-{count}-frames"


def pages(rng: random.Random) -> tuple[bytes, str]:
    count = rng.randrange(2, 1001)
    images = [Image.new("L", (16, 16), i % 256) for i in range(count)]
    buffer = io.BytesIO()
    images[0].save(buffer, "TIFF", save_all=True, append_images=images[1:])
    return buffer.getvalue(), f"tiff-{count}-pages"


@lru_cache(maxsize=4)
def _progressive(side: int, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (9, 9, 9)).save(buffer, "JPEG", progressive=True,
                                                    quality=quality)
    return buffer.getvalue()


def repeated_scans(data: bytes, times: int) -> bytes:
    """Defect 5's recipe: the bytes from the first SOS marker (FFDA) up to EOI (FFD9) repeated."""
    start, end = data.find(b"\xff\xda"), data.rfind(b"\xff\xd9")
    body = data[start:end]
    times = min(times, max(1, (MAX_BYTES - len(data)) // max(1, len(body))))
    return data[:start] + body * times + data[end:]


def scans(rng: random.Random) -> tuple[bytes, str]:
    """Small cousins of the recipe (which is 3000 px × 200, ~6 s a decode unfixed)."""
    side = rng.choice((64, 256, 1024))
    times = rng.randrange(2, 401)
    return repeated_scans(_progressive(side, 5), times), f"{side}px-x{times}"


def exif(rng: random.Random) -> tuple[bytes, str]:
    image = _content(rng, (rng.randrange(8, 96), rng.randrange(8, 96)))
    tags = Image.Exif()
    orientation = rng.choice((0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 255, 65535))
    tags[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=tags.tobytes())
    data = bytearray(buffer.getvalue())
    start = data.find(b"Exif")
    if start > 0 and rng.random() < 0.5:
        for _ in range(rng.randrange(1, 8)):
            data[start + rng.randrange(6, 40)] ^= rng.randrange(1, 256)
        return bytes(data), f"orientation{orientation}-broken"
    return bytes(data), f"orientation{orientation}"


# ---- the generator ----------------------------------------------------------------------------


def recipes() -> list[FuzzImage]:
    """The issue's own inputs, exactly as it describes them."""
    small = io.BytesIO()
    Image.new("RGB", (16, 16), (128, 128, 128)).save(small, "JPEG", quality=50)
    progressive = io.BytesIO()
    Image.new("RGB", (16, 16), (128, 128, 128)).save(progressive, "JPEG", quality=50,
                                                     progressive=True)
    # 50 MP is past the 24 MP cap on full decodes: the hash path must refuse both. Defect 5's
    # JPEG must be refused on every path (by a scan limit or a time limit, both refuse it).
    found = [
        FuzzImage("recipe:d3-jpeg-claims-7071x7071",
                  jpeg_set_size(small.getvalue(), 7071, 7071), "3", ("hash",)),
        FuzzImage("recipe:d4-progressive-jpeg-claims-7071x7071",
                  jpeg_set_size(progressive.getvalue(), 7071, 7071), "4", ("hash",)),
        FuzzImage("recipe:d5-repeated-scans-3000px-x200",
                  repeated_scans(_progressive(3000, 5), 200), "5", ("scan", "hash")),
    ]
    tiff = io.BytesIO()
    _content(random.Random(6), (64, 64)).save(tiff, "TIFF")
    for name, kind in (("rational", 5), ("float", 11)):
        found.append(FuzzImage(f"recipe:d6-tiff-stripoffsets-as-{name}",
                               tiff_retype(tiff.getvalue(), 273, kind), "6"))
    if features.check("avif"):
        avif = io.BytesIO()
        _content(random.Random(6), (64, 64)).save(avif, "AVIF")
        data = avif.getvalue()
        for at in (81, 120, 209, 241):
            if at < len(data):
                found.append(FuzzImage(f"recipe:d6-avif-xor-ff@{at}",
                                       data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:], "6"))
    return found


_FAMILIES = (("mutate", 60), ("bomb", 14), ("frames", 5), ("pages", 5), ("scans", 4),
             ("exif", 6), ("valid", 6))


def generate_one(seed: int, index: int) -> FuzzImage:
    rng = random.Random(seed * 1_000_003 + index)
    family = rng.choices([f for f, _ in _FAMILIES], [w for _, w in _FAMILIES])[0]
    fmt = rng.choice(formats())
    if family == "mutate":
        data, how = mutate(rng, small_image(rng, fmt), fmt)
        label = f"{fmt}:{how}"
    elif family == "bomb":
        data, how = bomb(rng, fmt)
        label = f"{fmt}:{how}"
    elif family == "frames":
        data, label = animation(rng)
    elif family == "pages":
        data, label = pages(rng)
    elif family == "scans":
        data, label = scans(rng)
    elif family == "exif":
        data, label = exif(rng)
    else:
        data, label = small_image(rng, fmt), fmt
    if family in ("frames", "pages", "scans", "exif") and rng.random() < 0.3:
        data, how = mutate(rng, data, "jpeg" if family in ("scans", "exif") else "png")
        label += f":{how}"
    return FuzzImage(f"img-{seed}-{index}:{family}:{label}", data[:MAX_BYTES + 1])


def generate(seed: int, count: int, *, with_recipes: bool = True) -> Iterator[FuzzImage]:
    """The recipes (if asked), then `count` generated inputs."""
    if with_recipes:
        yield from recipes()
    for index in range(count):
        yield generate_one(seed, index)
