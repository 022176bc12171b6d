"""Decoding: any file Pillow (or pillow-heif) reads becomes an RGB model input, fast and safely.

JPEGs are decoded with DCT-domain downscaling (``Image.draft``), so a 24 MP photo is never decoded
at full size to make a 224 px input; other large images are reduced right after decoding, before
any conversion, so a 37 KB PNG of 13,300 x 13,300 one-bit pixels costs one byte a pixel, not
four. EXIF orientation is applied, every mode becomes RGB (alpha is composited on white), and the
pixel count is checked before any pixel is decoded. Only regular files are read, up to a size cap.

:func:`open_image` is the decode-safety boundary: whatever Pillow or a plugin raises while reading,
decoding or orienting hostile bytes (``struct.error`` from malformed EXIF, ``KeyError``,
``IndexError``...) leaves it as :class:`DecodeError` with the reason, so one bad file becomes one
failed row in indexing and a 4xx over HTTP, never a crash. Its memory (:func:`decode_cost`) can
be reserved from a budget shared with other decodes first (``reserve``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import stat
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from . import objects
from .errors import DecodeError, LookalikeError, ObjectStoreError
from .exif import FileFields, file_fields
from .types import IMAGE_EXTENSIONS, Preprocess

try:  # HEIC/AVIF are read when the optional `heif` extra is installed.
    import pillow_heif

    pillow_heif.register_heif_opener()
    HEIF_AVAILABLE = True
except ImportError:  # pragma: no cover - depends on the environment
    HEIF_AVAILABLE = False

_HEIF_EXTENSIONS = frozenset({".heic", ".heif", ".avif"})
_ORIENTATION_TAG = 0x0112
_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that swap width and height
_ORIENTATIONS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                 4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                 8: Image.Transpose.ROTATE_90}
# Modes Image.reduce cannot take, and the mode each is reduced in instead (P: see _reduced_mode).
_REDUCED_AS = {"1": "L", "I;16": "I", "I;16B": "I", "I;16L": "I", "I;16N": "I"}
# The bytes a pixel takes in Pillow's memory: one 8-bit band is one byte, 16-bit two, and every
# other mode, from RGB up, a 32-bit word per pixel.
_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
_ALPHA = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
#: Largest file read, by default: far above any photo, far below what exhausts a machine.
MAX_FILE_BYTES = 256 * 1024 * 1024
ImageSource = str | os.PathLike[str] | bytes
Reserve = Callable[[int], AbstractContextManager[object]]


@functools.cache
def _formats() -> tuple[str, ...]:
    """The Pillow formats of IMAGE_EXTENSIONS: bytes are only ever tried as one of these, so no
    other plugin (EPS, which would run Ghostscript; BLP, DDS...) sees an upload."""
    known = Image.registered_extensions()
    return tuple(sorted({known[ext] for ext in IMAGE_EXTENSIONS if ext in known}))


def _pillow_guard(max_pixels: int) -> None:
    """Keep Pillow's own decompression-bomb check at least as high as ``max_pixels``: some
    plugins (ICO entries, GIF frames) allocate inside ``Image.open``, before lookalike's check
    can run, and only Pillow's stops them there. It refuses above twice its setting and only
    warns above it (ignored: lookalike's check decides)."""
    at_least = (max_pixels + 1) // 2
    if Image.MAX_IMAGE_PIXELS is None or Image.MAX_IMAGE_PIXELS < at_least:
        Image.MAX_IMAGE_PIXELS = at_least


@dataclass(frozen=True)
class Decoded:
    """A file turned into model input, or the reason it could not be."""

    uri: str
    pixels: np.ndarray | None  # (size, size, 3) uint8, None when decoding failed
    width: int = 0
    height: int = 0
    content_hash: str = ""
    error: str | None = None
    fields: FileFields = field(default_factory=dict)  # read from the file (lookalike.exif)


def content_hash(data: bytes) -> str:
    """A 128-bit BLAKE2b digest of the file's bytes, used to recognise renamed or copied files."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def file_hash(fh: BinaryIO) -> str:
    """:func:`content_hash` of what is left to read in ``fh``, read in pieces."""
    digest = hashlib.blake2b(digest_size=16)
    while chunk := fh.read(1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def open_image(
    source: ImageSource, *, max_pixels: int, draft_to: int | None = None, name: str | None = None,
    squash: bool = False, max_bytes: int = MAX_FILE_BYTES, reserve: Reserve | None = None,
) -> Image.Image:
    """Open ``source`` as an RGB image with EXIF orientation applied.

    ``draft_to`` lets decoding downscale (in the DCT domain for JPEG, by whole factors after
    decoding for the rest) while keeping both sides well above that many pixels; ``squash``
    says the image will be squashed to that square, so each side may shrink on its own.
    ``max_bytes`` caps the size of a file read from a path. ``reserve(cost)``, when given, is
    entered around decoding with :func:`decode_cost`; it may raise to refuse or to say "busy".
    Raises :class:`DecodeError` with the reason when the bytes are not a usable image.
    """
    data = source if isinstance(source, bytes) else read_bytes(source, max_bytes)
    if name is None:
        name = "" if isinstance(source, bytes) else os.fspath(source)
    if not data:
        raise DecodeError("empty file (0 bytes)", "empty")
    _pillow_guard(max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=_formats())
            width, height = image.size
            if width * height > max_pixels:
                raise _too_many_pixels(max_pixels, f"{width}x{height} = {width * height:,} pixels")
            if draft_to and image.format == "JPEG":
                image.draft("RGB", (draft_to, draft_to))
            with reserve(decode_cost(image, draft_to)) if reserve else contextlib.nullcontext():
                image.load()
                # Only now: a PNG's EXIF may follow its pixels, so reading it loads them.
                exif = image.getexif()
                orientation = exif.get(_ORIENTATION_TAG)
                image_format, fields = image.format, file_fields(image, exif)
                rgb = _to_rgb(_oriented(_reduced(image, draft_to, squash), orientation))
            if orientation in _TRANSPOSED_ORIENTATIONS:
                width, height = height, width
            rgb.info["lookalike_size"] = (width, height)
            rgb.info["lookalike_format"], rgb.info["lookalike_fields"] = image_format, fields
            return rgb
    except LookalikeError:  # ours: a DecodeError, or reserve() saying "busy"
        raise
    except UnidentifiedImageError:
        ext = Path(name).suffix.lower()
        if ext in _HEIF_EXTENSIONS and not HEIF_AVAILABLE:
            raise DecodeError(
                f"{ext} files need the pillow-heif decoder: pip install 'lookalike[heif]'",
                "needs_decoder",
            ) from None
        raise DecodeError("not an image (no decoder recognises these bytes)", "not_image") from None
    except Image.DecompressionBombError:  # Pillow's check, inside Image.open (_pillow_guard)
        raise _too_many_pixels(max_pixels) from None
    except Exception as exc:  # the decode-safety boundary (module docstring)
        detail = str(exc) or type(exc).__name__
        raise DecodeError(f"corrupt or truncated image data: {detail}") from None


def decode_cost(image: Image.Image, draft_to: int | None = None) -> int:
    """Bytes of memory :func:`open_image` takes at most to decode ``image`` (opened, not yet
    loaded): the decoded pixels and the full-size copies made before it is small. Measured
    within 3 % for 1-bit, grey, 16-bit, RGB and RGBA PNGs of 64 and 177 MP."""
    pixels = image.width * image.height
    mode = image.mode
    decoded = _PIXEL_BYTES.get(mode, 4)
    alpha = mode in _ALPHA or (mode == "P" and "transparency" in image.info)
    if _reduction(image, draft_to) != (1, 1):
        reduced_as = _reduced_mode(image)
        copies = 0 if reduced_as == mode else _PIXEL_BYTES.get(reduced_as, 4)
        if reduced_as in ("RGBA", "LA"):  # Image.reduce premultiplies alpha in a copy
            copies += 4
    elif mode.startswith("I;16") or mode in ("I", "F"):
        copies = 4 + 1 + 4  # float32 samples, 8-bit grey, then RGB
    elif alpha:
        copies = 4 + 4 + 4  # as RGBA, a white background, the composite
    else:
        copies = 0 if mode == "RGB" else 4
    return pixels * (decoded + copies)


def _reduction(image: Image.Image, draft_to: int | None, squash: bool = False) -> tuple[int, int]:
    """The whole factors an image is reduced by after decoding, across and down: those
    ``resize`` with a reducing gap of 3 takes off anyway, so an image squashed to ``draft_to``
    pixels a side comes out the same, only cheaper. Otherwise both sides by the smaller one."""
    if not draft_to:
        return 1, 1
    across, down = (max(1, side // (draft_to * 3)) for side in image.size)
    return (across, down) if squash else (min(across, down),) * 2


def _reduced(image: Image.Image, draft_to: int | None, squash: bool) -> Image.Image:
    factor = _reduction(image, draft_to, squash)
    if factor == (1, 1):
        return image
    mode, reduced_as = image.mode, _reduced_mode(image)
    reduced = (image if reduced_as == mode else image.convert(reduced_as)).reduce(factor)
    return reduced.convert("I;16") if mode.startswith("I;16") else reduced  # still 16-bit


def _reduced_mode(image: Image.Image) -> str:
    """The mode ``image`` is reduced in: its own, unless Image.reduce lacks it."""
    if image.mode == "P":
        return "RGBA" if "transparency" in image.info else "RGB"
    return _REDUCED_AS.get(image.mode, image.mode)


def _oriented(image: Image.Image, orientation: object) -> Image.Image:
    """``image`` turned as its EXIF orientation says (``ImageOps.exif_transpose``'s turns)."""
    method = _ORIENTATIONS.get(orientation) if isinstance(orientation, int) else None
    return image if method is None else image.transpose(method)


def _too_many_pixels(max_pixels: int, size: str | None = None) -> DecodeError:
    return DecodeError(f"image is {size + ', ' if size else ''}over the limit of "
                       f"{max_pixels:,} pixels (decompression-bomb guard); raise "
                       "LOOKALIKE_MAX_PIXELS to allow it", "too_many_pixels")


def original_size(image: Image.Image) -> tuple[int, int]:
    """The size the image had before any draft downscaling, after EXIF orientation."""
    return image.info.get("lookalike_size", image.size)


def original_format(image: Image.Image) -> str | None:
    """The file format Pillow recognised from the bytes (``"JPEG"``, ``"PNG"``...)."""
    return image.info.get("lookalike_format")


def original_fields(image: Image.Image) -> FileFields:
    """What :func:`lookalike.exif.file_fields` read from the file :func:`open_image` opened."""
    return image.info.get("lookalike_fields", {})


def decode_bytes(data: bytes, preprocess: Preprocess, max_pixels: int,
                 reserve: Reserve | None = None) -> Decoded:
    """Decode the bytes of an uploaded file to model input; raises :class:`DecodeError`.

    The format is sniffed from the bytes alone: a name or a declared content type is never
    trusted. ``Decoded.uri`` holds the format's usual file extension (e.g. ``.jpg``).
    """
    image = open_image(data, max_pixels=max_pixels, draft_to=preprocess.size,
                       squash=preprocess.resize == "squash", reserve=reserve)
    pixels = to_model_input(image, preprocess)
    width, height = original_size(image)
    return Decoded(extension_for(original_format(image)), pixels, width, height,
                   content_hash(data), fields=original_fields(image))


def extension_for(image_format: str | None) -> str:
    """The usual extension of a Pillow format name, ``.img`` when it has none."""
    extensions = Image.registered_extensions()
    candidates = sorted(ext for ext, fmt in extensions.items() if fmt == image_format)
    preferred = {"JPEG": ".jpg", "TIFF": ".tif", "MPO": ".jpg", "HEIF": ".heic"}
    return preferred.get(image_format or "", candidates[0] if candidates else ".img")


def read_bytes(path: str | os.PathLike[str], max_bytes: int) -> bytes:
    """The bytes of a regular file (or an ``s3://`` object) of at most ``max_bytes``: never
    waits on a FIFO, never reads a device or a file that grows without end."""
    if objects.is_object_uri(path):
        return _read_object(str(path), max_bytes)
    try:
        # O_NONBLOCK: opening a FIFO does not wait for a writer (regular files ignore it).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise DecodeError(f"cannot read file: {exc.strerror or exc}", "unreadable") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise DecodeError("is a directory, not an image file", "unreadable")
        if not stat.S_ISREG(info.st_mode):
            raise DecodeError(f"is a {_file_kind(info.st_mode)}, not a regular file: only "
                              "regular files are read", "unreadable")
        data = _read_fd(fd, max_bytes + 1) if info.st_size <= max_bytes else b""
    except OSError as exc:
        raise DecodeError(f"cannot read file: {exc.strerror or exc}", "unreadable") from None
    finally:
        os.close(fd)
    if info.st_size > max_bytes or len(data) > max_bytes:
        raise DecodeError(f"file is over the size limit of {max_bytes:,} bytes; raise "
                          "LOOKALIKE_MAX_FILE_BYTES to allow it", "too_large")
    return data


def _read_object(uri: str, max_bytes: int) -> bytes:
    """The bytes of an object; what is wrong with this object (gone, denied, too large) is a
    DecodeError like a bad file's, while an ObjectStoreError that may pass on a retry (the store
    unreachable) is raised as it is: it says nothing about the image."""
    try:
        data, _ = objects.read(uri, max_bytes)
    except ObjectStoreError as exc:
        if exc.transient:
            raise
        raise DecodeError(f"cannot read object: {exc}",
                          "too_large" if exc.reason == "too_large" else "unreadable") from None
    if len(data) > max_bytes:  # it grew between the size check and the read
        raise DecodeError(f"object is over the size limit of {max_bytes:,} bytes; raise "
                          "LOOKALIKE_MAX_FILE_BYTES to allow it", "too_large")
    return data


def _read_fd(fd: int, limit: int) -> bytes:
    """Up to ``limit`` bytes from ``fd``, to its end."""
    chunks, left = [], limit
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
             (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"))
    return next((kind for test, kind in kinds if test(mode)), "special file")


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        sixteen_bit = mode.startswith("I;16")
        grey = _high_depth_to_uint8(np.asarray(image), sixteen_bit)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode == "P" and "transparency" in image.info
    ):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # 1, L, P, CMYK, YCbCr, LAB, HSV


def _high_depth_to_uint8(values: np.ndarray, sixteen_bit: bool) -> np.ndarray:
    values = values.astype(np.float32)
    top = float(values.max()) if values.size else 0.0
    if sixteen_bit or top > 255.0:  # 16-bit samples (32-bit "I" images guessed by their range)
        scaled = values / 257.0
    elif top <= 1.0:  # float images in [0, 1]
        scaled = values * 255.0
    else:
        scaled = values
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def to_model_input(image: Image.Image, preprocess: Preprocess) -> np.ndarray:
    """Resize an RGB image as ``preprocess`` says; returns a (size, size, 3) uint8 array."""
    side = preprocess.size
    if preprocess.resize == "center-crop":
        resized = ImageOps.fit(image, (side, side), method=Image.Resampling.BILINEAR)
    else:
        resized = image.resize((side, side), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(resized, dtype=np.uint8)


def load_pixels(source: ImageSource, preprocess: Preprocess, *, max_pixels: int,
                max_bytes: int = MAX_FILE_BYTES, reserve: Reserve | None = None) -> np.ndarray:
    """Decode ``source`` (a path or the bytes of a file) straight to model input."""
    image = open_image(source, max_pixels=max_pixels, draft_to=preprocess.size,
                       squash=preprocess.resize == "squash", max_bytes=max_bytes, reserve=reserve)
    return to_model_input(image, preprocess)


#: Changes a decoded image, given its content hash (see :func:`decode_file`).
Edit = Callable[[Image.Image, str], Image.Image]


def decode_file(uri: str, preprocess: Preprocess, max_pixels: int,
                max_bytes: int = MAX_FILE_BYTES, edit: Edit | None = None) -> Decoded:
    """Read, hash and decode one file or object; never raises for a bad one (worker-process
    entry point), only ObjectStoreError for an object store that cannot be reached. ``edit``,
    when given, changes the decoded image (given its content hash) before it is resized for the
    model: how `lookalike learn` makes copies."""
    try:
        data = read_bytes(uri, max_bytes)
    except DecodeError as exc:
        return Decoded(uri, None, error=str(exc))
    digest = content_hash(data)
    try:
        image = open_image(data, max_pixels=max_pixels, draft_to=preprocess.size, name=uri,
                           squash=preprocess.resize == "squash")
        pixels = to_model_input(edit(image, digest) if edit else image, preprocess)
    except DecodeError as exc:
        return Decoded(uri, None, content_hash=digest, error=str(exc))
    width, height = original_size(image)
    return Decoded(uri, pixels, width, height, digest, fields=original_fields(image))
