"""The fuzzer's seeds: one small, valid image per format and flavour lookalike reads.

Every seed is made here with Pillow (PSD by hand: Pillow cannot write it) from one fixed picture,
so the corpus needs no files and is the same wherever the Pillow build is. The JPEG, PNG, WebP,
AVIF and PSD seeds carry EXIF (orientation 6, so decoding turns the picture), an ICC profile and
XMP, and can be re-encoded around mutated copies of those blocks (:attr:`Seed.rebuild`).
"""

from __future__ import annotations

import functools
import importlib.util
import io
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageCms, PngImagePlugin, TiffImagePlugin

SIZE = (48, 40)  # not square, so an orientation that swaps the sides is seen
HEIF_AVAILABLE = importlib.util.find_spec("pillow_heif") is not None
XMP = (b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?>'
       b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-'
       b'rdf-syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" '
       b'tiff:Orientation="6"/></rdf:RDF></x:xmpmeta><?xpacket end="w"?>')


@dataclass(frozen=True)
class Blocks:
    """The metadata blocks a seed carries: raw EXIF (``Exif\\0\\0`` + TIFF), ICC profile, XMP."""

    exif: bytes
    icc: bytes
    xmp: bytes


@dataclass(frozen=True)
class Seed:
    """A valid image file: its name, the extension it is saved with, and its bytes."""

    name: str
    suffix: str
    data: bytes
    #: Encodes the same picture around other metadata blocks (None: the format carries none).
    rebuild: Callable[[Blocks], bytes] | None = None
    #: A format lookalike does not list but Pillow recognises by its bytes: an upload of it, or
    #: such a file under a listed extension (as here), is decoded all the same.
    sniffed: bool = False


def picture(mode: str = "RGB", size: tuple[int, int] = SIZE, shift: int = 0) -> Image.Image:
    """A fixed picture with gradients and texture (flat colours would compress to nothing)."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    noise = np.random.default_rng(7 + shift).integers(0, 48, (h, w))
    rgb = np.stack([(x * 255 // w + shift) % 256, (y * 255 // h) % 256,
                    ((x + y) * 4 + noise) % 256], axis=-1).astype(np.uint8)
    image = Image.fromarray(rgb, "RGB")
    if mode == "I;16":
        return Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)  # mode I;16
    if mode == "P":
        return image.quantize(16)
    if mode == "F":
        return image.convert("L").convert("F")
    return image.convert(mode)


@functools.cache
def blocks() -> Blocks:
    """EXIF with IFD0, Exif and GPS sub-IFDs and signed and rational types; sRGB ICC; XMP."""
    rational = TiffImagePlugin.IFDRational
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    exif[ExifTags.Base.Make] = "lookalike"
    exif[ExifTags.Base.XResolution] = rational(72, 1)
    exif[ExifTags.Base.ResolutionUnit] = 2
    sub = exif.get_ifd(ExifTags.IFD.Exif)
    sub[ExifTags.Base.DateTimeOriginal] = "2026:01:02 03:04:05"
    sub[ExifTags.Base.ExposureBiasValue] = rational(-1, 3)  # SRATIONAL
    sub[ExifTags.Base.ISOSpeedRatings] = 200
    sub[ExifTags.Base.FocalLength] = rational(35, 10)
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (rational(52, 1), rational(3, 1), rational(0, 1))
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return Blocks(exif.tobytes(), icc, XMP)


def _save(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _jpeg(b: Blocks) -> bytes:
    return _save(picture(), "JPEG", quality=90, exif=b.exif, icc_profile=b.icc, xmp=b.xmp)


def _png(b: Blocks) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "lookalike fuzz seed")
    info.add(b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0" + b.xmp)
    return _save(picture(), "PNG", exif=b.exif, icc_profile=b.icc, pnginfo=info, dpi=(72, 72))


def _webp(b: Blocks) -> bytes:
    return _save(picture(), "WEBP", quality=80, exif=b.exif, icc_profile=b.icc, xmp=b.xmp)


def _avif(b: Blocks) -> bytes:
    return _save(picture(), "AVIF", quality=60, speed=10, exif=b.exif, icc_profile=b.icc,
                 xmp=b.xmp)


def _heic(b: Blocks) -> bytes:  # pragma: no cover - only with the heif extra
    return _save(picture(), "HEIF", quality=60, exif=b.exif, icc_profile=b.icc, xmp=b.xmp)


def psd(b: Blocks) -> bytes:
    """An RGB PSD, PackBits-compressed, with its ICC profile as image resource 0x040F."""
    image = picture()
    w, h = image.size
    icc = b.icc + b"\0" * (len(b.icc) % 2)
    resources = b"8BIM" + struct.pack(">H", 0x040F) + b"\0\0" + struct.pack(">I", len(b.icc)) + icc
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, h, w, 8, 3)
    rows = [bytes([w - 1]) + band.tobytes()[y * w:(y + 1) * w]  # one literal run per row
            for band in image.split() for y in range(h)]
    counts = b"".join(struct.pack(">H", len(row)) for row in rows)
    return (header + struct.pack(">I", 0) + struct.pack(">I", len(resources)) + resources
            + struct.pack(">I", 0) + struct.pack(">H", 1) + counts + b"".join(rows))


def _frames(mode: str, n: int = 3) -> list[Image.Image]:
    return [picture(mode, shift=40 * k) for k in range(n)]


@functools.cache
def seeds() -> tuple[Seed, ...]:
    """Every seed: each extension of ``IMAGE_EXTENSIONS`` that can be written here, then formats
    Pillow reads by their bytes alone (``sniffed``)."""
    b = blocks()
    rgb, gray = picture(), picture("L")
    gif_frames = _frames("P")
    apng = _frames("RGBA")
    webp_frames = _frames("RGBA")
    found = [
        Seed("jpeg-meta", ".jpg", _jpeg(b), _jpeg),
        Seed("jpeg-progressive-gray", ".jpeg",
             _save(gray, "JPEG", progressive=True, quality=75, exif=_orientation_exif(3),
                   comment=b"fuzz")),
        Seed("jpeg-cmyk", ".jpe", _save(picture("CMYK"), "JPEG", quality=85)),
        Seed("mpo-two-frames", ".jfif",
             _save(rgb, "MPO", save_all=True, append_images=[picture(shift=90)])),
        Seed("png-meta", ".png", _png(b), _png),
        Seed("png-16bit-gray", ".png", _save(picture("I;16"), "PNG")),
        Seed("png-palette-trns", ".png", _save(picture("P"), "PNG", transparency=3)),
        Seed("apng-rgba", ".png", _save(apng[0], "PNG", save_all=True, append_images=apng[1:],
                                        duration=40, loop=0)),
        Seed("webp-meta", ".webp", _webp(b), _webp),
        Seed("webp-animated-lossless", ".webp",
             _save(webp_frames[0], "WEBP", save_all=True, append_images=webp_frames[1:],
                   lossless=True, duration=40)),
        Seed("avif-meta", ".avif", _avif(b), _avif),
        Seed("gif-animated", ".gif",
             _save(gif_frames[0], "GIF", save_all=True, append_images=gif_frames[1:],
                   duration=40, loop=0, transparency=2, comment=b"fuzz")),
        Seed("tiff-pages", ".tif", _tiff_pages(b)),
        Seed("tiff-jpeg", ".tiff", _save(rgb, "TIFF", compression="jpeg",
                                          tiffinfo={ExifTags.Base.Orientation: 8})),
        Seed("bmp-rgb", ".bmp", _save(rgb, "BMP")),
        Seed("bmp-palette", ".dib", _save(picture("P"), "BMP")),
        Seed("ppm-rgb", ".ppm", _save(rgb, "PPM")),
        Seed("pgm-gray", ".pgm", _save(gray, "PPM")),
        Seed("pbm-bilevel", ".pbm", _save(picture("1"), "PPM")),
        Seed("pnm-16bit", ".pnm", _save(picture("I;16"), "PPM")),
        Seed("tga-rle-rgba", ".tga", _save(picture("RGBA"), "TGA", compression="tga_rle")),
        Seed("ico-png", ".ico", _save(rgb, "ICO", sizes=[(16, 16), (32, 32)])),
        Seed("ico-bmp", ".ico", _save(picture("RGBA"), "ICO", sizes=[(16, 16)],
                                      bitmap_format="bmp")),
        Seed("jp2-rgb", ".jp2", _save(rgb, "JPEG2000", irreversible=True)),
        Seed("j2k-tiled-gray", ".j2k", _save(gray, "JPEG2000", tile_size=(16, 16),
                                             num_resolutions=2)),
        Seed("pcx-rgb", ".pcx", _save(rgb, "PCX")),
        Seed("sgi-rgb", ".sgi", _save(rgb, "SGI")),
        Seed("psd-rle-icc", ".psd", psd(b), psd),
    ]
    sniffed: list[tuple[str, str, Image.Image, dict[str, Any]]] = [
        ("blp-palette", "BLP", picture("P"), {}),
        ("dds-dxt1", "DDS", rgb, {"pixel_format": "DXT1"}),
        ("im-rgb", "IM", rgb, {}), ("msp-bilevel", "MSP", picture("1"), {}),
        ("qoi-rgba", "QOI", picture("RGBA"), {}), ("spider-float", "SPIDER", picture("F"), {}),
        ("xbm-bilevel", "XBM", picture("1"), {})]
    with warnings.catch_warnings():  # IM is deprecated, still read until Pillow 15
        warnings.simplefilter("ignore", DeprecationWarning)
        found += [Seed(name, ".jpg", _save(image, fmt, **options), sniffed=True)
                  for name, fmt, image, options in sniffed if fmt in Image.SAVE]
    if HEIF_AVAILABLE:  # pragma: no cover - only with the heif extra
        import pillow_heif

        pillow_heif.register_heif_opener()  # its encoder too
        found += [Seed("heic-meta", ".heic", _heic(b), _heic),
                  Seed("heif-gray", ".heif", _save(gray, "HEIF", quality=60))]
    return tuple(found)


def _orientation_exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    return exif.tobytes()


def _tiff_pages(b: Blocks) -> bytes:
    """Three pages (RGB, grey, bilevel), LZW, with orientation, description, ICC and XMP tags."""
    first = picture()
    tags = {ExifTags.Base.Orientation: 6, ExifTags.Base.ImageDescription: "fuzz seed",
            ExifTags.Base.Software: "lookalike", 700: b.xmp, 34675: b.icc}
    pages = [picture("L", shift=60), picture("1", shift=120)]
    return _save(first, "TIFF", save_all=True, append_images=pages, compression="tiff_lzw",
                 tiffinfo=tags)
