"""A small PNG decoder for the tests (8-bit RGB/RGBA, not interlaced): reads browser screenshots and our own PNGs
without an imaging library."""

import struct
import zlib

import numpy as np


def _paeth_or_average_row(kind: int, row: bytearray, prior: bytes, bpp: int) -> None:
    for i in range(len(row)):
        left = row[i - bpp] if i >= bpp else 0
        up = prior[i]
        if kind == 3:
            row[i] = (row[i] + (left + up) // 2) & 0xFF
            continue
        up_left = prior[i - bpp] if i >= bpp else 0
        p = left + up - up_left
        pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
        row[i] = (row[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else up_left)) & 0xFF


def decode_png(data: bytes) -> np.ndarray:
    """`[H, W, C]` uint8 pixels (C = 3 or 4); checks the signature and every chunk's CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    pos, compressed, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind!r} chunk"
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            compressed += body
        pos += 12 + length
    width, height, depth, colour_type, _, _, interlace = header
    assert depth == 8 and colour_type in (2, 6) and interlace == 0, f"unsupported PNG {header}"
    bpp = 3 if colour_type == 2 else 4
    stride = width * bpp
    raw = zlib.decompress(compressed)
    pixels = np.zeros((height, stride), dtype=np.uint8)
    prior = np.zeros(stride, dtype=np.uint8)
    for r in range(height):
        kind = raw[r * (stride + 1)]
        row = np.frombuffer(raw, dtype=np.uint8, count=stride, offset=r * (stride + 1) + 1)
        if kind == 0:
            out = row
        elif kind == 1:
            out = (np.cumsum(row.reshape(-1, bpp), axis=0, dtype=np.int64) % 256).astype(np.uint8).ravel()
        elif kind == 2:
            out = row + prior
        else:
            mutable = bytearray(row.tobytes())
            _paeth_or_average_row(kind, mutable, prior.tobytes(), bpp)
            out = np.frombuffer(bytes(mutable), dtype=np.uint8)
        pixels[r] = out
        prior = pixels[r]
    return pixels.reshape(height, width, bpp)
