"""Header surgery: an encoded image made to claim other dimensions, or a TIFF tag retyped.

Each function takes valid bytes and changes only the named fields (fixing a PNG chunk's CRC so
that the change is not refused as corruption), so the decoders see a well-formed file that lies.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable


def jpeg_set_size(data: bytes, width: int, height: int) -> bytes:
    """The JPEG with its frame header (SOF0-2) claiming width×height."""
    at = 2
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        if marker in (0xC0, 0xC1, 0xC2):
            return (data[:at + 5] + struct.pack(">HH", height & 0xFFFF, width & 0xFFFF)
                    + data[at + 9:])
        at += 2 + struct.unpack(">H", data[at + 2:at + 4])[0]
    return data


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return (struct.pack(">I", len(body)) + kind + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))


def png_set_size(data: bytes, width: int, height: int) -> bytes:
    if data[12:16] != b"IHDR":
        return data
    body = struct.pack(">II", width, height) + data[24:29]
    return data[:8] + png_chunk(b"IHDR", body) + data[33:]


def gif_set_size(data: bytes, width: int, height: int) -> bytes:
    out = bytearray(data)
    out[6:10] = struct.pack("<HH", width & 0xFFFF, height & 0xFFFF)
    flags = data[10]
    at = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    while at < len(data) and data[at] == 0x21:  # skip extension blocks
        at += 2
        while at < len(data) and data[at]:
            at += data[at] + 1
        at += 1
    if at + 9 <= len(data) and data[at] == 0x2C:
        out[at + 5:at + 9] = struct.pack("<HH", width & 0xFFFF, height & 0xFFFF)
    return bytes(out)


def bmp_set_size(data: bytes, width: int, height: int) -> bytes:
    return data[:18] + struct.pack("<ii", width, height) + data[26:]


def webp_set_size(data: bytes, width: int, height: int) -> bytes:
    out = bytearray(data)
    kind = data[12:16]
    w, h = max(width, 1) - 1, max(height, 1) - 1
    if kind == b"VP8X":
        out[24:27] = (w & 0xFFFFFF).to_bytes(3, "little")
        out[27:30] = (h & 0xFFFFFF).to_bytes(3, "little")
    elif kind == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        bits = (bits & ~0xFFFFFFF) | (w & 0x3FFF) | ((h & 0x3FFF) << 14)
        out[21:25] = bits.to_bytes(4, "little")
    elif kind == b"VP8 ":
        out[26:30] = struct.pack("<HH", width & 0x3FFF, height & 0x3FFF)
    return bytes(out)


def _tiff_entries(data: bytes) -> tuple[str, list[int]]:
    """Byte order and the offsets of IFD0's 12-byte entries."""
    order = "<" if data[:2] == b"II" else ">"
    try:
        ifd = struct.unpack(order + "I", data[4:8])[0]
        count = struct.unpack(order + "H", data[ifd:ifd + 2])[0]
    except struct.error:
        return order, []
    return order, [ifd + 2 + 12 * i for i in range(count) if ifd + 14 + 12 * i <= len(data)]


def tiff_set_size(data: bytes, width: int, height: int) -> bytes:
    out = bytearray(data)
    order, entries = _tiff_entries(data)
    for at in entries:
        tag = struct.unpack(order + "H", data[at:at + 2])[0]
        if tag in (256, 257):
            value = width if tag == 256 else height
            out[at + 2:at + 12] = struct.pack(order + "HII", 4, 1, value & 0xFFFFFFFF)
    return bytes(out)


def tiff_retype(data: bytes, tag: int, new_type: int) -> bytes:
    """The TIFF with `tag`'s field type changed (defect 6: StripOffsets LONG -> RATIONAL/FLOAT)."""
    out = bytearray(data)
    order, entries = _tiff_entries(data)
    for at in entries:
        if struct.unpack(order + "H", data[at:at + 2])[0] == tag:
            out[at + 2:at + 4] = struct.pack(order + "H", new_type)
    return bytes(out)


def isobmff_set_size(data: bytes, width: int, height: int) -> bytes:
    """AVIF/HEIF: the image spatial extents box ('ispe') claiming width×height."""
    at = data.find(b"ispe")
    if at < 0:
        return data
    return data[:at + 8] + struct.pack(">II", width, height) + data[at + 16:]


SET_SIZE: dict[str, Callable[[bytes, int, int], bytes]] = {
    "jpeg": jpeg_set_size, "jpeg-progressive": jpeg_set_size, "png": png_set_size,
    "gif": gif_set_size, "bmp": bmp_set_size, "webp": webp_set_size, "tiff": tiff_set_size,
    "avif": isobmff_set_size, "heif": isobmff_set_size,
}
