"""The seeded mutator: mutant ``index`` of run ``run_seed`` is a pure function of the two.

A mutant is one seed (round robin over :func:`seeds`) with a short stack of edits:

- **field**: an integer the layout walkers found (a chunk or segment length, a width, an EXIF IFD
  entry's count, type or offset, an ICC tag offset...) set to a boundary value (0, 1, 0x7f, 0x80,
  0xff.., 0x7fff.., the largest, one more or less than it was...);
- **region**: bit flips and boundary bytes inside one metadata block (EXIF, ICC, XMP) or table;
- **flip** and **byte**: anywhere, most often in the first kilobyte where the headers are;
- **truncate**, **splice** (the head of this file on the tail of another seed), **duplicate**,
  **delete** and **insert**: lengths change, so in-place edits are applied first;
- **number**: a PNM header's ASCII width, height or maximum value replaced.

A fifth of the mutants of seeds that carry metadata instead mutate one block alone (EXIF, ICC or
XMP) and re-encode the picture around it with Pillow: a valid image with hostile metadata, the
kind that reached ``ImageOps.exif_transpose``. PNG chunk CRCs are usually recomputed afterwards,
or Pillow would refuse nearly every PNG mutant at the first checksum.
"""

from __future__ import annotations

import functools
import random
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace

from .layout import PNG_SIGNATURE, Field, Layout, fix_png_crcs, layout
from .seeds import Blocks, Seed, blocks, seeds

_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0x10, 0x20, 0x40, 0xFE)
_TIFF_TAGS = (0x0100, 0x0101, 0x0102, 0x0103, 0x0111, 0x0112, 0x0115, 0x0116, 0x0117, 0x011A,
              0x0128, 0x0140, 0x014A, 0x0152, 0x0201, 0x0202, 0x8769, 0x8825, 0xA005, 0x927C)
_NUMBERS = (b"0", b"1", b"-1", b"2", b"255", b"256", b"65535", b"65536", b"4294967296",
            b"99999999999999999999", b"00000000001", b"", b"1.5")
_BLOCK_SHARE = 0.2
_PNG_CRC_FIX = 0.85


@dataclass(frozen=True)
class Mutant:
    """A mutated file and how it was made (enough to explain it; ``mutant()`` replays it)."""

    seed: Seed
    index: int
    data: bytes
    edits: tuple[str, ...]


def mutant(run_seed: int, index: int) -> Mutant:
    """Mutant ``index`` of the run seeded ``run_seed``: the same bytes on every run."""
    rng = random.Random(f"lookalike-fuzz:{run_seed}:{index}")
    pool = seeds()
    seed = pool[index % len(pool)]
    if seed.rebuild is not None and rng.random() < _BLOCK_SHARE:
        built = _block_mutant(seed.rebuild, rng)
        if built is not None:
            return Mutant(seed, index, built[0], built[1])
    data, edits = havoc(seed.data, _layout(seed.data, seed.suffix), rng, rng.randint(1, 4))
    if PNG_SIGNATURE in data and rng.random() < _PNG_CRC_FIX:
        data = fix_png_crcs(data)
        edits += ("png-crc",)
    return Mutant(seed, index, data, edits)


def havoc(data: bytes, where: Layout, rng: random.Random, n: int) -> tuple[bytes, tuple[str, ...]]:
    """``n`` stacked edits of ``data``: the in-place ones first, while the layout still fits."""
    ops = [rng.choices(_OPS, weights=[w for _, w, _ in _OPS])[0] for _ in range(n)]
    ops.sort(key=lambda op: op[2])  # in-place (False) before length-changing (True)
    out, edits = bytearray(data), []
    for name, _, _ in ops:
        if not out:
            break
        edits.append(_EDITS[name](out, where, rng))
    return bytes(out), tuple(edits)


@functools.cache
def _layout(data: bytes, suffix: str) -> Layout:
    return layout(data, suffix)


def _block_mutant(
    rebuild: Callable[[Blocks], bytes], rng: random.Random
) -> tuple[bytes, tuple[str, ...]] | None:
    name = rng.choices(("exif", "icc", "xmp"), weights=(4, 3, 1))[0]
    original = getattr(blocks(), name)
    block, edits = havoc(original, _layout(original, ""), rng, rng.randint(1, 3))
    try:
        with warnings.catch_warnings():  # Pillow re-reads the EXIF it writes, and warns
            warnings.simplefilter("ignore")
            data = rebuild(replace(blocks(), **{name: block}))
    except Exception:  # noqa: BLE001 - Pillow refused to write it: no mutant, not a finding
        return None
    return data, tuple(f"{name}-block:{edit}" for edit in edits)


# -- the edits: each changes ``out`` in place and says what it did ---------------------------


def _boundary(field: Field, current: int, rng: random.Random) -> int:
    top = (1 << (8 * field.width)) - 1
    if field.kind == "tiff-type" and rng.random() < 0.6:
        return rng.choice((*range(14), 0xFFFF))
    if field.kind == "tiff-tag" and rng.random() < 0.6:
        return rng.choice(_TIFF_TAGS)
    choices = (0, 1, 2, top, top - 1, top >> 1, (top >> 1) + 1, 0x7F, 0x80, 0xFF, 0x100,
               0x7FFF, 0x8000, 0xFFFF, 0x10000, current + 1, current - 1, current * 2,
               current // 2, current + rng.randint(-16, 16), rng.randint(0, top))
    return rng.choice(choices) & top


def _field(out: bytearray, where: Layout, rng: random.Random) -> str:
    fields = [f for f in where.fields if f.offset + f.width <= len(out)]
    if not fields:
        return _byte(out, where, rng)
    f = rng.choice(fields)
    current = int.from_bytes(out[f.offset:f.offset + f.width], f.order)
    value = _boundary(f, current, rng)
    out[f.offset:f.offset + f.width] = value.to_bytes(f.width, f.order)
    return f"field {f.kind}@{f.offset:#x}:{current:#x}->{value:#x}"


def _region(out: bytearray, where: Layout, rng: random.Random) -> str:
    regions = [r for r in where.regions if r.start < len(out)]
    if not regions:
        return _flip(out, where, rng)
    r = rng.choices(regions, weights=[1 if r.kind in ("table", "chunk", "pixels") else 4
                                      for r in regions])[0]
    end = min(r.end, len(out))
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(r.start, end)
        out[at] = rng.choice(_BYTES) if rng.random() < 0.5 else out[at] ^ (1 << rng.randrange(8))
    return f"region {r.kind}@{r.start:#x}"


def _position(out: bytearray, rng: random.Random) -> int:
    return rng.randrange(min(len(out), 1024) if rng.random() < 0.5 else len(out))


def _flip(out: bytearray, where: Layout, rng: random.Random) -> str:
    spots = [_position(out, rng) for _ in range(rng.choice((1, 1, 2, 4, 8)))]
    for at in spots:
        out[at] ^= 1 << rng.randrange(8)
    return "flip " + ",".join(f"{at:#x}" for at in spots)


def _byte(out: bytearray, where: Layout, rng: random.Random) -> str:
    at = _position(out, rng)
    out[at] = rng.choice(_BYTES)
    return f"byte {at:#x}={out[at]:#x}"


def _truncate(out: bytearray, where: Layout, rng: random.Random) -> str:
    keep = rng.randrange(len(out)) if rng.random() < 0.5 else max(0, len(out) - rng.randint(1, 64))
    del out[keep:]
    return f"truncate {keep}"


def _splice(out: bytearray, where: Layout, rng: random.Random) -> str:
    other = rng.choice(seeds())
    cut, tail = rng.randrange(len(out) + 1), rng.randrange(len(other.data) + 1)
    out[cut:] = other.data[tail:]
    return f"splice {cut}+{other.name}[{tail}:]"


def _duplicate(out: bytearray, where: Layout, rng: random.Random) -> str:
    start = rng.randrange(len(out))
    piece = out[start:start + rng.randint(1, 256)]
    at = rng.randrange(len(out) + 1)
    out[at:at] = piece * rng.choice((1, 1, 2, 8))
    return f"duplicate {start:#x}+{len(piece)}->{at:#x}"


def _delete(out: bytearray, where: Layout, rng: random.Random) -> str:
    start = _position(out, rng)
    size = rng.randint(1, 64)
    del out[start:start + size]
    return f"delete {start:#x}+{size}"


def _insert(out: bytearray, where: Layout, rng: random.Random) -> str:
    at = _position(out, rng)
    if rng.random() < 0.5:
        piece = bytes(rng.randrange(256) for _ in range(rng.randint(1, 32)))
    else:
        piece = bytes([rng.choice(_BYTES)]) * rng.randint(1, 300)
    out[at:at] = piece
    return f"insert {at:#x}+{len(piece)}"


def _number(out: bytearray, where: Layout, rng: random.Random) -> str:
    if not where.numbers:
        return _field(out, where, rng)
    start, end = rng.choice(where.numbers)
    value = rng.choice(_NUMBERS)
    out[start:end] = value
    return f"number {start}:{value.decode()}"


_EDITS: dict[str, Callable[[bytearray, Layout, random.Random], str]] = {
    "field": _field, "region": _region, "flip": _flip, "byte": _byte, "number": _number,
    "truncate": _truncate, "splice": _splice, "duplicate": _duplicate, "delete": _delete,
    "insert": _insert,
}
# (edit, weight, changes the length)
_OPS = (("field", 26, False), ("region", 14, False), ("flip", 14, False), ("byte", 10, False),
        ("number", 4, True), ("truncate", 8, True), ("splice", 4, True),
        ("duplicate", 6, True), ("delete", 6, True), ("insert", 4, True))
