"""Where the structure of an image file is: its length, size, offset and type fields, and its
metadata blocks, so the mutator can hit them instead of pixel data.

Walkers find containers by signature anywhere in the bytes (a PNG inside an ICO, a TIFF header
inside a JPEG's APP1 or a PNG's eXIf, an ICC profile inside a WebP's ICCP or an AVIF's colr box),
so one scan covers every format. They run on valid seeds and on mutated metadata blocks, so they
stop quietly at the first thing that does not fit.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

Order = Literal["big", "little"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MAX_ITEMS = 400  # fields per walker: enough for every seed, bounded for hostile blocks
_TIFF_POINTERS = {0x8769, 0x8825, 0xA005, 0x014A}  # Exif, GPS, Interop IFDs; SubIFDs
_TIFF_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
_BOX_CONTAINERS = {b"meta": 4, b"iprp": 0, b"ipco": 0, b"dinf": 0, b"jp2h": 0, b"res ": 0,
                   b"iinf": 6, b"moov": 0, b"trak": 0, b"mdia": 0, b"minf": 0, b"stbl": 0}
# Fixed-offset header fields: (offset, width) little-endian, or big-endian for SGI and PSD.
_BMP = ((2, 4), (10, 4), (14, 4), (18, 4), (22, 4), (26, 2), (28, 2), (30, 4), (34, 4), (46, 4))
_DIB = ((0, 4), (4, 4), (8, 4), (12, 2), (14, 2), (16, 4), (20, 4), (32, 4))
_TGA = ((0, 1), (1, 1), (2, 1), (3, 2), (5, 2), (7, 1), (12, 2), (14, 2), (16, 1), (17, 1))
_PCX = ((1, 1), (2, 1), (3, 1), (4, 2), (6, 2), (8, 2), (10, 2), (65, 1), (66, 2), (68, 2))
_SGI = ((2, 1), (3, 1), (4, 2), (6, 2), (8, 2), (10, 2), (12, 4), (16, 4), (104, 4))
_PSD = ((4, 2), (12, 2), (14, 4), (18, 4), (22, 2), (24, 2))


@dataclass(frozen=True)
class Field:
    """An integer in the file: where, how wide, which byte order, and what it means."""

    offset: int
    width: int
    order: Order
    kind: str  # length, dims, tiff-type, tiff-count, tiff-offset, tiff-tag, icc, header...


@dataclass(frozen=True)
class Region:
    """A span worth mutating on its own: a metadata block (exif, icc, xmp) or a table."""

    start: int
    end: int
    kind: str


@dataclass(frozen=True)
class Layout:
    fields: tuple[Field, ...]
    regions: tuple[Region, ...]
    numbers: tuple[tuple[int, int], ...]  # ASCII numbers of a PNM header: (start, end)


class _Found:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.fields: list[Field] = []
        self.regions: list[Region] = []

    def field(self, offset: int, width: int, order: Order, kind: str) -> None:
        if 0 <= offset and offset + width <= len(self.data) and len(self.fields) < 10 * _MAX_ITEMS:
            self.fields.append(Field(offset, width, order, kind))

    def table(self, base: int, table: tuple[tuple[int, int], ...], order: Order) -> None:
        for offset, width in table:
            self.field(base + offset, width, order, "header")

    def region(self, start: int, end: int, kind: str) -> None:
        end = min(end, len(self.data))
        if 0 <= start < end:
            self.regions.append(Region(start, end, kind))


def layout(data: bytes, suffix: str = "") -> Layout:
    """The fields and regions of ``data``; ``suffix`` names formats that have no magic (TGA)."""
    found = _Found(data)
    walkers = ((b"II*\x00", _tiff), (b"MM\x00*", _tiff), (b"acsp", _icc),
               (b"\xff\xd8\xff", _jpeg), (PNG_SIGNATURE, _png), (b"\xff\x4f\xff\x51", _j2k))
    for signature, walk in walkers:
        for position in _occurrences(data, signature):
            _quietly(walk, found, position)
    for start, end in _xmp_spans(data):
        found.region(start, end, "xmp")
    magic = data[:4]
    if magic == b"RIFF":
        _quietly(_riff, found, 12, len(data))
        found.field(4, 4, "little", "length")
    elif data[4:8] in (b"ftyp", b"jP  "):
        _quietly(_boxes, found, 0, len(data), 0)
    elif magic[:2] == b"BM":
        found.table(0, _BMP, "little")
    elif magic[:3] == b"GIF":
        _quietly(_gif, found)
    elif magic == b"8BPS":
        _quietly(_psd, found)
    elif magic == b"\x00\x00\x01\x00":
        _quietly(_ico, found)
    elif magic[:2] == b"\x01\xda":
        found.table(0, _SGI, "big")
    elif magic[:1] == b"\x0a":
        found.table(0, _PCX, "little")
    elif suffix == ".tga":
        found.table(0, _TGA, "little")
    numbers: tuple[tuple[int, int], ...] = ()
    if re.match(rb"P[1-7]\s", data[:3]):
        numbers = tuple(m.span() for m in re.finditer(rb"\d+", data[:64]))[:4]
    return Layout(tuple(found.fields), tuple(found.regions), numbers)


def fix_png_crcs(data: bytes) -> bytes:
    """Recompute the CRC of every whole PNG chunk, so a mutation gets past Pillow's check."""
    out = bytearray(data)
    for start in _occurrences(data, PNG_SIGNATURE):
        pos = start + 8
        for _ in range(_MAX_ITEMS):
            if pos + 12 > len(out):
                break
            length = struct.unpack_from(">I", out, pos)[0]
            end = pos + 8 + length
            if end + 4 > len(out):
                break
            struct.pack_into(">I", out, end, zlib.crc32(out[pos + 4:end]))
            pos = end + 4
    return bytes(out)


def _occurrences(data: bytes, needle: bytes, limit: int = 8) -> Iterator[int]:
    position = data.find(needle)
    for _ in range(limit):
        if position < 0:
            return
        yield position
        position = data.find(needle, position + 1)


def _quietly(walk: Callable[..., None], found: _Found, *args: int) -> None:
    try:
        walk(found, *args)
    except (struct.error, IndexError, ValueError):
        pass  # a block the mutator already broke: what was found so far is enough


def _xmp_spans(data: bytes) -> Iterator[tuple[int, int]]:
    for opening, closing in ((b"<?xpacket begin", b"<?xpacket end"),
                             (b"<x:xmpmeta", b"</x:xmpmeta>")):
        for start in _occurrences(data, opening, 2):
            end = data.find(closing, start)
            yield start, (end + len(closing) + 8 if end > 0 else start + 256)


def _tiff(found: _Found, base: int) -> None:
    data = found.data
    order: Order = "little" if data[base:base + 2] == b"II" else "big"
    fmt = "<" if order == "little" else ">"
    found.field(base + 4, 4, order, "tiff-offset")
    pending, seen, extent = [struct.unpack_from(fmt + "I", data, base + 4)[0]], set(), 8
    while pending and len(seen) < 16:
        ifd = pending.pop()
        if ifd in seen or not 8 <= ifd < len(data) - base:
            continue
        seen.add(ifd)
        at = base + ifd
        count = struct.unpack_from(fmt + "H", data, at)[0]
        found.field(at, 2, order, "tiff-count")
        for n in range(min(count, 64)):
            entry = at + 2 + 12 * n
            tag, kind, items = struct.unpack_from(fmt + "HHI", data, entry)
            value = struct.unpack_from(fmt + "I", data, entry + 8)[0]
            found.field(entry, 2, order, "tiff-tag")
            found.field(entry + 2, 2, order, "tiff-type")
            found.field(entry + 4, 4, order, "tiff-count")
            found.field(entry + 8, 4, order, "tiff-offset")
            size = _TIFF_SIZES.get(kind, 1) * items
            if size > 4:
                extent = max(extent, value + size)
            if tag in _TIFF_POINTERS:
                pending.append(value)
        after = at + 2 + 12 * min(count, 64)
        found.field(after, 4, order, "tiff-offset")
        extent = max(extent, after + 4 - base)
        pending.append(struct.unpack_from(fmt + "I", data, after)[0])
    found.region(base, base + extent, "exif")


def _icc(found: _Found, signature_at: int) -> None:
    start = signature_at - 36
    if start < 0:
        return
    size = struct.unpack_from(">I", found.data, start)[0]
    for offset in (0, 8, 12, 16, 20, 128):
        found.field(start + offset, 4, "big", "icc")
    count = struct.unpack_from(">I", found.data, start + 128)[0]
    for n in range(min(count, 64)):
        for offset in (0, 4, 8):
            found.field(start + 132 + 12 * n + offset, 4, "big", "icc")
    found.region(start, start + size, "icc")


def _jpeg(found: _Found, start: int) -> None:
    data, pos = found.data, start + 2
    for _ in range(_MAX_ITEMS):
        if pos + 4 > len(data) or data[pos] != 0xFF:
            return
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker == 0xD9:
            return
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        found.field(pos + 2, 2, "big", "length")
        length = struct.unpack_from(">H", data, pos + 2)[0]
        body = pos + 4
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn
            found.table(body, ((0, 1), (1, 2), (3, 2), (5, 1)), "big")
            for n in range(min(data[body + 5], 4)):
                found.table(body + 6 + 3 * n, ((0, 1), (1, 1), (2, 1)), "big")
        elif marker in (0xC4, 0xDB, 0xDD):  # DHT, DQT, DRI
            found.region(body, pos + 2 + length, "table")
        pos += 2 + length
        if marker == 0xDA:  # entropy-coded data: on to the next marker that is not a restart
            match = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]").search(data, pos)
            if match is None:
                return
            pos = match.start()


def _png(found: _Found, start: int) -> None:
    data, pos = found.data, start + 8
    layouts = {b"IHDR": ((0, 4), (4, 4), (8, 1), (9, 1), (12, 1)),
               b"acTL": ((0, 4), (4, 4)),
               b"fcTL": ((4, 4), (8, 4), (12, 4), (16, 4), (20, 2), (22, 2), (24, 1), (25, 1))}
    for _ in range(_MAX_ITEMS):
        if pos + 12 > len(data):
            return
        length, kind = struct.unpack_from(">I4s", data, pos)
        found.field(pos, 4, "big", "length")
        found.table(pos + 8, layouts.get(kind, ()), "big")
        if kind in (b"iCCP", b"PLTE", b"tRNS", b"eXIf", b"iTXt", b"tEXt", b"zTXt"):
            found.region(pos + 8, pos + 8 + length, "exif" if kind == b"eXIf" else "chunk")
        if kind == b"IEND":
            return
        pos += 12 + length


def _riff(found: _Found, pos: int, end: int) -> None:
    data = found.data
    for _ in range(_MAX_ITEMS):
        if pos + 8 > end:
            return
        kind, size = struct.unpack_from("<4sI", data, pos)
        found.field(pos + 4, 4, "little", "length")
        body = pos + 8
        if kind == b"VP8X":
            found.table(body, ((0, 1), (4, 3), (7, 3)), "little")
        elif kind == b"ANMF":
            found.table(body, ((0, 3), (3, 3), (6, 3), (9, 3), (12, 3), (15, 1)), "little")
            _riff(found, body + 16, min(body + size, end))
        elif kind == b"VP8L":
            found.field(body + 1, 4, "little", "dims")
        elif kind == b"VP8 ":
            found.table(body + 6, ((0, 2), (2, 2)), "little")
        elif kind in (b"EXIF", b"ICCP", b"XMP "):
            found.region(body, body + size, kind.decode().strip().lower())
        pos = body + size + (size & 1)


def _boxes(found: _Found, pos: int, end: int, depth: int) -> None:
    data = found.data
    for _ in range(_MAX_ITEMS):
        if pos + 8 > end or depth > 6:
            return
        size, kind = struct.unpack_from(">I4s", data, pos)
        found.field(pos, 4, "big", "length")
        if size == 0:
            size = end - pos
        elif size < 8:
            return
        if kind in _BOX_CONTAINERS:
            _boxes(found, pos + 8 + _BOX_CONTAINERS[kind], pos + size, depth + 1)
        elif kind == b"mdat" or kind == b"jp2c":
            found.region(pos + 8, pos + size, "pixels")
        elif size <= 128:  # small boxes (ispe, ihdr, iloc, pitm, colr...) are all fields
            for offset in range(8, size - 1, 2):
                found.field(pos + offset, 4 if offset + 4 <= size else 2, "big", "box")
        pos += size


def _j2k(found: _Found, start: int) -> None:
    data, pos = found.data, start + 2
    for _ in range(_MAX_ITEMS):
        if pos + 4 > len(data) or data[pos] != 0xFF or data[pos + 1] in (0xD9, 0x93):
            return
        marker = data[pos + 1]
        found.field(pos + 2, 2, "big", "length")
        length = struct.unpack_from(">H", data, pos + 2)[0]
        if marker == 0x51:  # SIZ
            found.table(pos + 4, ((0, 2), (2, 4), (6, 4), (10, 4), (14, 4), (18, 4), (22, 4),
                                  (26, 4), (30, 4), (34, 2), (36, 1), (37, 1), (38, 1)), "big")
        elif marker == 0x90:  # SOT: its Psot says where the next tile starts
            found.table(pos + 4, ((0, 2), (2, 4), (6, 1), (7, 1)), "big")
            psot = struct.unpack_from(">I", data, pos + 6)[0]
            if psot == 0:
                return
            pos += psot
            continue
        else:
            found.region(pos + 4, pos + 2 + length, "table")
        pos += 2 + length


def _gif(found: _Found) -> None:
    data = found.data
    found.table(0, ((6, 2), (8, 2), (10, 1), (11, 1)), "little")
    pos = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    for _ in range(_MAX_ITEMS):
        block = data[pos]
        if block == 0x2C:  # image descriptor, local palette, LZW code size
            found.table(pos, ((1, 2), (3, 2), (5, 2), (7, 2), (9, 1)), "little")
            flags = data[pos + 9]
            pos += 10 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
            found.field(pos, 1, "little", "header")
            pos += 1
        elif block == 0x21:  # extension: label, then sub-blocks
            pos += 2
        else:
            return
        while data[pos]:  # sub-blocks, each led by its length
            found.field(pos, 1, "little", "length")
            pos += data[pos] + 1
        pos += 1


def _psd(found: _Found) -> None:
    data = found.data
    found.table(0, _PSD, "big")
    pos = 26
    for section in range(3):  # colour mode data, image resources, layer and mask information
        found.field(pos, 4, "big", "length")
        size = struct.unpack_from(">I", data, pos)[0]
        if section == 1:
            found.region(pos + 4, pos + 4 + size, "chunk")
            entry = pos + 4
            while entry + 12 <= pos + 4 + size and data[entry:entry + 4] == b"8BIM":
                name = data[entry + 6] + 1
                name += name & 1
                found.field(entry + 4, 2, "big", "header")
                found.field(entry + 6 + name, 4, "big", "length")
                length = struct.unpack_from(">I", data, entry + 6 + name)[0]
                entry += 10 + name + length + (length & 1)
        pos += 4 + size
    found.field(pos, 2, "big", "header")  # compression
    for n in range(64):  # the first PackBits row lengths
        found.field(pos + 2 + 2 * n, 2, "big", "length")


def _ico(found: _Found) -> None:
    data = found.data
    found.table(0, ((2, 2), (4, 2)), "little")
    for n in range(min(struct.unpack_from("<H", data, 4)[0], 8)):
        entry = 6 + 16 * n
        found.table(entry, ((0, 1), (1, 1), (2, 1), (4, 2), (6, 2), (8, 4), (12, 4)), "little")
        offset = struct.unpack_from("<I", data, entry + 12)[0]
        if data[offset:offset + 8] != PNG_SIGNATURE:
            found.table(offset, _DIB, "little")
