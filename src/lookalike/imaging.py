"""Decoding: any file Pillow (or pillow-heif) reads becomes an RGB model input, fast and safely.

JPEGs are decoded with DCT-domain downscaling (``Image.draft``), so a 24 MP photo is never decoded
at full size to make a 224 px input. EXIF orientation is applied, every mode becomes RGB (alpha is
composited on white), and the pixel count is checked before any pixel is decoded.

:func:`open_image` is the decode-safety boundary: whatever Pillow or a plugin raises while reading,
decoding or orienting hostile bytes (``struct.error`` from malformed EXIF, ``KeyError``,
``IndexError``...) leaves it as :class:`DecodeError` with the reason, so one bad file becomes one
failed row in indexing and a 4xx over HTTP, never a crash.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DecodeError
from .types import Preprocess

try:  # HEIC/AVIF are read when the optional `heif` extra is installed.
    import pillow_heif

    pillow_heif.register_heif_opener()
    HEIF_AVAILABLE = True
except ImportError:  # pragma: no cover - depends on the environment
    HEIF_AVAILABLE = False

IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .gif .bmp .dib .tif .tiff .webp .ppm .pgm .pbm .pnm .tga .ico "
    ".jp2 .j2k .psd .pcx .sgi .heic .heif .avif".split()
)
_HEIF_EXTENSIONS = frozenset({".heic", ".heif", ".avif"})
_ORIENTATION_TAG = 0x0112
_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that swap width and height
ImageSource = str | os.PathLike[str] | bytes

# open_image applies lookalike's own max_pixels guard (from the header, before any pixel is
# decoded); Pillow's global limit would otherwise refuse images first and ignore max_pixels.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class Decoded:
    """A file turned into model input, or the reason it could not be."""

    uri: str
    pixels: np.ndarray | None  # (size, size, 3) uint8, None when decoding failed
    width: int = 0
    height: int = 0
    content_hash: str = ""
    error: str | None = None


def content_hash(data: bytes) -> str:
    """A 128-bit BLAKE2b digest of the file's bytes, used to recognise renamed or copied files."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def open_image(
    source: ImageSource, *, max_pixels: int, draft_to: int | None = None, name: str | None = None
) -> Image.Image:
    """Open ``source`` as an RGB image with EXIF orientation applied.

    ``draft_to`` lets JPEG decoding downscale in the DCT domain while keeping both sides at least
    that many pixels. Raises :class:`DecodeError` with the reason when the bytes are not a usable
    image.
    """
    data = source if isinstance(source, bytes) else _read(source)
    if name is None:
        name = "" if isinstance(source, bytes) else os.fspath(source)
    if not data:
        raise DecodeError("empty file (0 bytes)", "empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise DecodeError(
                    f"image is {width}x{height} = {width * height:,} pixels, over the limit "
                    f"of {max_pixels:,} (decompression-bomb guard); raise LOOKALIKE_MAX_PIXELS "
                    "to allow it", "too_many_pixels"
                )
            if image.getexif().get(_ORIENTATION_TAG) in _TRANSPOSED_ORIENTATIONS:
                width, height = height, width
            if draft_to and image.format == "JPEG":
                image.draft("RGB", (draft_to, draft_to))
            image.load()
            rgb = _to_rgb(ImageOps.exif_transpose(image) or image)
            rgb.info["lookalike_size"] = (width, height)
            rgb.info["lookalike_format"] = image.format
            return rgb
    except DecodeError:
        raise
    except UnidentifiedImageError:
        ext = Path(name).suffix.lower()
        if ext in _HEIF_EXTENSIONS and not HEIF_AVAILABLE:
            raise DecodeError(
                f"{ext} files need the pillow-heif decoder: pip install 'lookalike[heif]'",
                "needs_decoder",
            ) from None
        raise DecodeError("not an image (no decoder recognises these bytes)", "not_image") from None
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"decompression bomb refused: {exc}", "too_many_pixels") from None
    except Exception as exc:  # the decode-safety boundary (module docstring)
        detail = str(exc) or type(exc).__name__
        raise DecodeError(f"corrupt or truncated image data: {detail}") from None


def original_size(image: Image.Image) -> tuple[int, int]:
    """The size the image had before any draft downscaling, after EXIF orientation."""
    return image.info.get("lookalike_size", image.size)


def original_format(image: Image.Image) -> str | None:
    """The file format Pillow recognised from the bytes (``"JPEG"``, ``"PNG"``...)."""
    return image.info.get("lookalike_format")


def decode_bytes(data: bytes, preprocess: Preprocess, max_pixels: int) -> Decoded:
    """Decode the bytes of an uploaded file to model input; raises :class:`DecodeError`.

    The format is sniffed from the bytes alone: a name or a declared content type is never
    trusted. ``Decoded.uri`` holds the format's usual file extension (e.g. ``.jpg``).
    """
    image = open_image(data, max_pixels=max_pixels, draft_to=preprocess.size)
    pixels = to_model_input(image, preprocess)
    width, height = original_size(image)
    return Decoded(extension_for(original_format(image)), pixels, width, height,
                   content_hash(data))


def extension_for(image_format: str | None) -> str:
    """The usual extension of a Pillow format name, ``.img`` when it has none."""
    extensions = Image.registered_extensions()
    candidates = sorted(ext for ext, fmt in extensions.items() if fmt == image_format)
    preferred = {"JPEG": ".jpg", "TIFF": ".tif", "MPO": ".jpg", "HEIF": ".heic"}
    return preferred.get(image_format or "", candidates[0] if candidates else ".img")


def media_type(path: str | os.PathLike[str]) -> str:
    """The MIME type of an image file, sniffed from its first bytes."""
    try:
        with Image.open(path) as image:
            return Image.MIME.get(image.format or "", "application/octet-stream")
    except (OSError, SyntaxError, ValueError):
        return "application/octet-stream"


def _read(path: str | os.PathLike[str]) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except IsADirectoryError:
        raise DecodeError("is a directory, not an image file", "unreadable") from None
    except OSError as exc:
        raise DecodeError(f"cannot read file: {exc.strerror or exc}", "unreadable") from None


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
    values = values.astype(np.float64)
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


def load_pixels(source: ImageSource, preprocess: Preprocess, *, max_pixels: int) -> np.ndarray:
    """Decode ``source`` (a path or the bytes of a file) straight to model input."""
    image = open_image(source, max_pixels=max_pixels, draft_to=preprocess.size)
    return to_model_input(image, preprocess)


def decode_file(uri: str, preprocess: Preprocess, max_pixels: int) -> Decoded:
    """Read, hash and decode one file; never raises for a bad file (worker-process entry point)."""
    try:
        data = _read(uri)
    except DecodeError as exc:
        return Decoded(uri, None, error=str(exc))
    digest = content_hash(data)
    try:
        image = open_image(data, max_pixels=max_pixels, draft_to=preprocess.size, name=uri)
        pixels = to_model_input(image, preprocess)
    except DecodeError as exc:
        return Decoded(uri, None, content_hash=digest, error=str(exc))
    width, height = original_size(image)
    return Decoded(uri, pixels, width, height, digest)
