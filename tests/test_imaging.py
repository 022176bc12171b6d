"""Decoding, with real files made here: every bad input refused cleanly, every mode made RGB."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from conftest import malformed_exif_image
from lookalike.errors import BusyError, DecodeError
from lookalike.imaging import (
    Decoded,
    content_hash,
    decode_cost,
    decode_file,
    load_pixels,
    open_image,
    original_size,
    to_model_input,
)
from lookalike.settings import SETTINGS
from lookalike.types import Preprocess

LIMIT = 10**8  # max_pixels for tests that are not about the guard
DEFAULT_MAX_PIXELS = next(s for s in SETTINGS if s.name == "max_pixels").default()
SQUASH = Preprocess(size=64, resize="squash", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
CROP = Preprocess(size=64, resize="center-crop", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
SQUASH_112, CROP_112 = (Preprocess(112, p.resize, p.mean, p.std) for p in (SQUASH, CROP))
RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)
EXIF_ORIENTATION = 0x0112


# ---------------------------------------------------------------------------------------------
# Helpers: files made on the spot
# ---------------------------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def write(path: Path, payload: bytes) -> Path:
    path.write_bytes(payload)
    return path


def photo_jpeg(size: tuple[int, int] | None = None, **params: object) -> bytes:
    """skimage's astronaut as a JPEG, optionally resized to ``size`` (width, height)."""
    image = Image.fromarray(data.astronaut())
    if size is not None:
        image = image.resize(size, Image.Resampling.BILINEAR)
    return encode(image, "JPEG", quality=90, **params)


def exif_with_orientation(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return exif


def png_chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def huge_declared_png(width: int, height: int, pixel_data: bytes | None = None) -> bytes:
    """A 1-bit PNG of a few hundred bytes whose header declares width x height.

    Its pixel data (``pixel_data``, the IDAT chunk) is by default the first four rows only.
    """
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    if pixel_data is None:
        pixel_data = zlib.compress(b"\x00" * (1 + (width + 7) // 8) * 4)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
            + png_chunk(b"IDAT", pixel_data) + png_chunk(b"IEND", b""))


def decoded_rgb(payload: bytes, **kwargs: object) -> np.ndarray:
    """Decode ``payload`` and return its pixels, checking they are an RGB uint8 image."""
    image = open_image(payload, max_pixels=LIMIT, **kwargs)  # type: ignore[arg-type]
    assert image.mode == "RGB"
    pixels = np.asarray(image)
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
    return pixels


def assert_refused(path: Path, *fragments: str) -> Decoded:
    """Every entry point refuses ``path`` alike: a DecodeError, or a Decoded with the reason."""
    for call in (lambda: open_image(path, max_pixels=LIMIT),
                 lambda: load_pixels(path, SQUASH, max_pixels=LIMIT)):
        with pytest.raises(DecodeError) as info:
            call()
        for fragment in fragments:
            assert fragment in str(info.value)
    result = decode_file(str(path), SQUASH, LIMIT)
    assert isinstance(result, Decoded)
    assert result.pixels is None and result.uri == str(path)
    assert result.error, "a refused file needs a reason"
    for fragment in fragments:
        assert fragment in result.error
    return result


def thirds(width: int, height: int, colours: tuple[tuple[int, int, int], ...],
           axis: int) -> Image.Image:
    """An image in three bands of ``colours`` along ``axis`` (1: left to right, 0: top down)."""
    pixels = np.zeros((height, width, 3), np.uint8)
    length = pixels.shape[axis]
    for band, colour in enumerate(colours):
        part = slice(band * length // 3, (band + 1) * length // 3)
        if axis == 1:
            pixels[:, part] = colour
        else:
            pixels[part, :] = colour
    return Image.fromarray(pixels)


# ---------------------------------------------------------------------------------------------
# Bad input: a DecodeError from open_image/load_pixels, a reason (never an exception) from
# decode_file
# ---------------------------------------------------------------------------------------------


def test_corrupt_bytes_are_refused(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    result = assert_refused(write(tmp_path / "noise.jpg", noise), "not an image")
    assert result.content_hash == content_hash(noise)


def test_truncated_jpeg_is_refused(tmp_path: Path) -> None:
    good = photo_jpeg()
    assert decode_file(str(write(tmp_path / "good.jpg", good)), SQUASH, LIMIT).error is None
    assert_refused(write(tmp_path / "half.jpg", good[: len(good) // 2]), "truncated")


def test_zero_byte_file_is_refused(tmp_path: Path) -> None:
    result = assert_refused(write(tmp_path / "empty.png", b""), "empty file")
    assert result.content_hash == content_hash(b"")


def test_text_file_named_jpg_is_refused(tmp_path: Path) -> None:
    text = b"Just a shopping list: eggs, milk, bread.\n" * 20
    result = assert_refused(write(tmp_path / "list.jpg", text), "not an image")
    assert result.content_hash == content_hash(text)  # readable, so hashed


def test_directory_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "album.jpg"
    folder.mkdir()
    result = assert_refused(folder, "directory")
    assert result.content_hash == ""


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root reads a chmod 000 file anyway")
def test_unreadable_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "secret.jpg", photo_jpeg((64, 64)))
    path.chmod(0)
    try:
        result = assert_refused(path, "cannot read file", "Permission denied")
        assert result.content_hash == ""
    finally:
        path.chmod(0o644)


def test_missing_file_is_refused_without_a_hash(tmp_path: Path) -> None:
    result = assert_refused(tmp_path / "gone.jpg", "cannot read file")
    assert result.content_hash == ""


def test_max_pixels_guard_refuses_before_decoding(tmp_path: Path) -> None:
    limit = 1_000_000
    path = write(tmp_path / "big.png", huge_declared_png(3000, 3000))
    with pytest.raises(DecodeError, match="3000x3000 = 9,000,000 pixels.*limit of 1,000,000"):
        open_image(path, max_pixels=limit)
    result = decode_file(str(path), SQUASH, limit)
    assert result.pixels is None and "1,000,000" in (result.error or "")
    assert "LOOKALIKE_MAX_PIXELS" in (result.error or "")


def test_huge_declared_image_is_refused_by_the_configured_guard(tmp_path: Path) -> None:
    """A 30000x30000 header is refused by lookalike's own guard, naming the configured limit."""
    path = write(tmp_path / "bomb.png", huge_declared_png(30_000, 30_000))
    assert len(path.read_bytes()) < 10_000
    result = decode_file(str(path), SQUASH, DEFAULT_MAX_PIXELS)
    assert result.pixels is None
    assert f"{DEFAULT_MAX_PIXELS:,}" in (result.error or "")
    assert "LOOKALIKE_MAX_PIXELS" in (result.error or "")


def test_raising_max_pixels_lets_a_big_image_past_the_guard(tmp_path: Path) -> None:
    """With max_pixels raised above the image's 200 MP, no size limit refuses it. (Its pixel data
    is not zlib data, so it then fails cheaply as corrupt instead of decoding 200 MP.)"""
    broken = huge_declared_png(20_000, 10_000, pixel_data=b"this is not zlib data")
    path = write(tmp_path / "big.png", broken)
    result = decode_file(str(path), SQUASH, 10**9)
    assert result.pixels is None
    assert (result.error or "").startswith("corrupt or truncated image data")


@pytest.mark.skipif(importlib.util.find_spec("pillow_heif") is not None,
                    reason="pillow-heif is installed, so HEIC files decode")
def test_heic_without_pillow_heif_says_how_to_install_it(tmp_path: Path) -> None:
    # The start of an ISO-BMFF HEIC file: an 'ftyp' box with the 'heic' brand.
    heic = struct.pack(">I", 24) + b"ftypheic" + bytes(4) + b"mif1heic" + bytes(200)
    assert_refused(write(tmp_path / "IMG_0001.HEIC", heic), "pip install 'lookalike[heif]'")


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_exif_that_pillow_cannot_write_back_still_turns_the_image(fmt: str) -> None:
    """``ImageOps.exif_transpose`` raised on this EXIF (issue 13): the pixels are fine, so the
    image decodes, turned as its orientation (6) says."""
    image = open_image(malformed_exif_image(fmt, size=(40, 30)), max_pixels=LIMIT)
    assert image.size == original_size(image) == (30, 40)


def test_any_exception_from_a_decoder_is_a_decode_error(crashing_plugin: bytes,
                                                        tmp_path: Path) -> None:
    with pytest.raises(DecodeError, match="corrupt or truncated image data: 'a plugin bug'"):
        open_image(crashing_plugin, max_pixels=LIMIT)
    assert_refused(write(tmp_path / "x.img", crashing_plugin), "a plugin bug")


def test_mutated_files_never_raise_from_decode_file(tmp_path: Path) -> None:
    """Seeded byte flips in the headers of small JPEG, PNG, GIF and BMP files."""
    photo = Image.fromarray(data.astronaut()).resize((40, 40))
    rng = np.random.default_rng(1234)
    path = tmp_path / "mutant"
    outcomes = set()
    for fmt in ("JPEG", "PNG", "GIF", "BMP"):
        original = encode(photo, fmt)
        for _ in range(40):
            mutant = bytearray(original)
            for position in rng.integers(0, min(len(mutant), 160), size=4):
                mutant[position] = int(rng.integers(0, 256))
            result = decode_file(str(write(path, bytes(mutant))), SQUASH, 10**6)
            assert (result.pixels is None) == (result.error is not None)
            if result.pixels is not None:
                assert result.pixels.shape == (64, 64, 3)
            outcomes.add(result.error is None)
    assert outcomes == {True, False}  # the mutations hit both decodable and broken files


# ---------------------------------------------------------------------------------------------
# Every mode becomes correct RGB
# ---------------------------------------------------------------------------------------------


def test_cmyk_jpeg_becomes_rgb() -> None:
    strip = Image.new("CMYK", (48, 16))
    for x0, ink in ((0, (255, 0, 0, 0)), (16, (0, 0, 0, 0)), (32, (0, 0, 0, 255))):
        strip.paste(ink, (x0, 0, x0 + 16, 16))
    payload = encode(strip, "JPEG", quality=95)
    assert Image.open(io.BytesIO(payload)).mode == "CMYK"
    for kwargs in ({}, {"draft_to": 8}):
        pixels = decoded_rgb(payload, **kwargs).astype(int)
        step = pixels.shape[1] // 3
        centres = [pixels[pixels.shape[0] // 2, step * i + step // 2] for i in range(3)]
        for got, want in zip(centres, [(0, 255, 255), WHITE, BLACK], strict=True):
            np.testing.assert_allclose(got, want, atol=12)


def test_greyscale_l_becomes_rgb() -> None:
    grey = Image.fromarray(np.array([[0, 100, 255]], np.uint8), "L")
    pixels = decoded_rgb(encode(grey, "PNG"))
    np.testing.assert_array_equal(pixels[0], [(0, 0, 0), (100, 100, 100), (255, 255, 255)])


def test_one_bit_becomes_black_and_white() -> None:
    bits = Image.fromarray(np.array([[False, True, True, False]]))
    assert bits.mode == "1"
    pixels = decoded_rgb(encode(bits, "PNG"))
    np.testing.assert_array_equal(pixels[0], [BLACK, WHITE, WHITE, BLACK])


def palette_image(indices: list[int]) -> Image.Image:
    image = Image.fromarray(np.array([indices], np.uint8), "P")
    image.putpalette([*RED, *BLUE, *GREEN] + [0] * (256 - 3) * 3)
    return image


def test_palette_becomes_rgb() -> None:
    pixels = decoded_rgb(encode(palette_image([0, 1, 2]), "PNG"))
    np.testing.assert_array_equal(pixels[0], [RED, BLUE, GREEN])


def test_palette_transparency_is_composited_on_white() -> None:
    payload = encode(palette_image([0, 1, 2, 0]), "PNG", transparency=0)
    reopened = Image.open(io.BytesIO(payload))
    assert reopened.mode == "P" and reopened.info.get("transparency") == 0
    pixels = decoded_rgb(payload)
    np.testing.assert_array_equal(pixels[0], [WHITE, BLUE, GREEN, WHITE])


def test_la_is_composited_on_white() -> None:
    values = np.array([[[0, 0], [0, 255], [0, 128], [200, 255]]], np.uint8)
    pixels = decoded_rgb(encode(Image.fromarray(values, "LA"), "PNG")).astype(int)
    np.testing.assert_allclose(pixels[0], [WHITE, BLACK, (127, 127, 127), (200, 200, 200)],
                               atol=1)


def test_rgba_is_composited_on_white() -> None:
    values = np.array([[[255, 0, 0, 0], [255, 0, 0, 255], [0, 0, 255, 128], [9, 9, 9, 0]]],
                      np.uint8)
    pixels = decoded_rgb(encode(Image.fromarray(values, "RGBA"), "PNG")).astype(int)
    np.testing.assert_array_equal(pixels[0, 0], WHITE)  # fully transparent red: paper white
    np.testing.assert_array_equal(pixels[0, 3], WHITE)  # fully transparent near-black: too
    np.testing.assert_array_equal(pixels[0, 1], RED)
    np.testing.assert_allclose(pixels[0, 2], (127, 127, 255), atol=1)


def test_sixteen_bit_greyscale_is_scaled_to_eight_bits() -> None:
    deep = Image.fromarray(np.array([[0, 32768, 65535]], np.uint16))
    payload = encode(deep, "PNG")
    assert Image.open(io.BytesIO(payload)).mode.startswith("I")
    pixels = decoded_rgb(payload).astype(int)
    assert tuple(pixels[0, 0]) == BLACK
    assert tuple(pixels[0, 2]) == WHITE
    np.testing.assert_allclose(pixels[0, 1], (128, 128, 128), atol=1)


def test_float_tiff_becomes_rgb() -> None:
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32))
    assert floats.mode == "F"
    payload = encode(floats, "TIFF")
    assert Image.open(io.BytesIO(payload)).mode == "F"
    pixels = decoded_rgb(payload).astype(int)
    np.testing.assert_allclose(pixels[0], [BLACK, (128, 128, 128), WHITE], atol=1)


def test_animated_gif_uses_the_first_frame() -> None:
    frames = [Image.new("RGB", (24, 24), colour) for colour in (RED, GREEN, BLUE)]
    payload = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50,
                     loop=0)
    assert Image.open(io.BytesIO(payload)).n_frames == 3
    pixels = decoded_rgb(payload)
    assert (pixels == RED).all()


# ---------------------------------------------------------------------------------------------
# Orientation, DCT downscaling and the reported size
# ---------------------------------------------------------------------------------------------


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    stored = data.chelsea()  # 451 wide, 300 high
    height, width = stored.shape[:2]
    payload = encode(Image.fromarray(stored), "JPEG", quality=95,
                     exif=exif_with_orientation(6))
    pixels = decoded_rgb(payload).astype(int)
    assert pixels.shape[:2] == (width, height)  # portrait now
    clockwise = np.rot90(stored, k=-1).astype(int)  # orientation 6: turn 90 degrees clockwise
    counter = np.rot90(stored, k=1).astype(int)
    assert np.abs(pixels - clockwise).mean() < 4
    assert np.abs(pixels - counter).mean() > 20

    result = decode_file(str(write(tmp_path / "cat.jpg", payload)), SQUASH, LIMIT)
    assert result.error is None
    assert (result.width, result.height) == (height, width)  # 300 x 451: swapped


@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4000x3000 photo JPEG (12 MP)."""
    path = tmp_path_factory.mktemp("big") / "big.jpg"
    return write(path, photo_jpeg((4000, 3000)))


def test_jpeg_is_downscaled_in_the_dct_domain(big_jpeg: Path) -> None:
    image = open_image(big_jpeg, max_pixels=LIMIT, draft_to=224)
    assert image.mode == "RGB"
    assert min(image.size) >= 224
    assert image.size[0] <= 1000 and image.size[1] <= 750  # at most a quarter of each side
    assert original_size(image) == (4000, 3000)
    full = open_image(big_jpeg, max_pixels=LIMIT)
    assert full.size == (4000, 3000) and original_size(full) == (4000, 3000)


def test_decode_file_reports_the_full_size_not_the_drafted_one(big_jpeg: Path) -> None:
    result = decode_file(str(big_jpeg), Preprocess(224, "squash", (0, 0, 0), (1, 1, 1)), LIMIT)
    assert result.error is None and result.pixels is not None
    assert result.pixels.shape == (224, 224, 3)
    assert (result.width, result.height) == (4000, 3000)
    assert result.content_hash == content_hash(big_jpeg.read_bytes())


def test_rotated_big_jpeg_reports_the_oriented_full_size(tmp_path: Path) -> None:
    path = write(tmp_path / "rotated.jpg", photo_jpeg((4000, 3000), exif=exif_with_orientation(6)))
    image = open_image(path, max_pixels=LIMIT, draft_to=224)
    assert image.size[1] > image.size[0] >= 224 and image.size[1] <= 1000  # drafted, portrait
    result = decode_file(str(path), Preprocess(224, "squash", (0, 0, 0), (1, 1, 1)), LIMIT)
    assert (result.width, result.height) == (3000, 4000)


def test_bytes_and_paths_decode_alike(tmp_path: Path) -> None:
    payload = photo_jpeg((320, 200))
    from_bytes = load_pixels(payload, SQUASH, max_pixels=LIMIT)
    from_path = load_pixels(write(tmp_path / "a.jpg", payload), SQUASH, max_pixels=LIMIT)
    np.testing.assert_array_equal(from_bytes, from_path)
    np.testing.assert_array_equal(decode_file(str(tmp_path / "a.jpg"), SQUASH, LIMIT).pixels,
                                  from_path)


# ---------------------------------------------------------------------------------------------
# Model input geometry
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preprocess", [SQUASH, CROP], ids=["squash", "center-crop"])
@pytest.mark.parametrize("size", [(120, 300), (300, 120), (64, 64), (17, 9)],
                         ids=["portrait", "landscape", "exact", "tiny"])
def test_model_input_shape(preprocess: Preprocess, size: tuple[int, int]) -> None:
    image = Image.fromarray(data.astronaut()).resize(size)
    pixels = to_model_input(image, preprocess)
    assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8
    assert pixels.std() > 5  # a picture, not a blank


@pytest.mark.parametrize(("width", "height", "axis"), [(300, 100, 1), (100, 300, 0)],
                         ids=["landscape", "portrait"])
def test_center_crop_keeps_the_centre(width: int, height: int, axis: int) -> None:
    image = thirds(width, height, (RED, GREEN, BLUE), axis)
    pixels = to_model_input(image, CROP).astype(int)
    # Only the green centre survives; the bilinear filter may bleed a little across the crop edge.
    assert (np.abs(pixels[1:-1, 1:-1] - GREEN) <= 2).all()
    assert (pixels[..., 1] >= 200).all() and (pixels[..., [0, 2]] <= 40).all()


@pytest.mark.parametrize(("width", "height", "axis"), [(300, 100, 1), (100, 300, 0)],
                         ids=["landscape", "portrait"])
def test_squash_keeps_the_whole_image(width: int, height: int, axis: int) -> None:
    pixels = to_model_input(thirds(width, height, (RED, GREEN, BLUE), axis), SQUASH)
    first, middle, last = (np.take(pixels, i, axis=axis) for i in (0, 32, 63))
    assert (first == RED).all() and (middle == GREEN).all() and (last == BLUE).all()


# ---------------------------------------------------------------------------------------------
# Content hash
# ---------------------------------------------------------------------------------------------


def test_content_hash_is_stable_and_discriminating() -> None:
    payload = photo_jpeg((64, 64))
    digest = content_hash(payload)
    assert digest == content_hash(bytes(payload)) and len(digest) == 32
    assert set(digest) <= set("0123456789abcdef")
    flipped = bytearray(payload)
    flipped[-3] ^= 1
    assert content_hash(bytes(flipped)) != digest
    assert content_hash(b"a") != content_hash(b"b")


def test_decode_file_hashes_what_it_reads(tmp_path: Path) -> None:
    payload = photo_jpeg((64, 64))
    first = decode_file(str(write(tmp_path / "a.jpg", payload)), SQUASH, LIMIT)
    copy = decode_file(str(write(tmp_path / "renamed copy.jpg", payload)), SQUASH, LIMIT)
    assert first.content_hash == copy.content_hash == content_hash(payload)
    assert first.error is None and first.pixels is not None


# ---------------------------------------------------------------------------------------------
# Only regular files, up to a size; large images reduced before they cost memory
# ---------------------------------------------------------------------------------------------


def decode_soon(path: Path, seconds: float = 10.0) -> Decoded:
    """decode_file, run where a hang fails the test instead of stopping the suite."""
    done: list[Decoded] = []
    worker = threading.Thread(target=lambda: done.append(decode_file(str(path), SQUASH, LIMIT)),
                              daemon=True)
    worker.start()
    worker.join(seconds)
    assert done, f"decode_file({path}) did not return within {seconds} s"
    return done[0]


def test_a_fifo_is_refused_at_once_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    assert "is a FIFO, not a regular file" in (decode_soon(fifo).error or "")
    assert_refused(fifo, "FIFO")


def test_a_device_is_refused_without_reading_it() -> None:
    assert "is a character device, not a regular file" in (
        decode_soon(Path("/dev/zero")).error or "")


def test_files_over_the_size_cap_are_refused_unread(tmp_path: Path) -> None:
    payload = photo_jpeg((64, 48))
    path = write(tmp_path / "photo.jpg", payload)
    assert decode_file(str(path), SQUASH, LIMIT, max_bytes=len(payload)).error is None
    refused = decode_file(str(path), SQUASH, LIMIT, max_bytes=len(payload) - 1)
    assert refused.pixels is None and "LOOKALIKE_MAX_FILE_BYTES" in (refused.error or "")
    with pytest.raises(DecodeError) as info:
        open_image(path, max_pixels=LIMIT, max_bytes=100)
    assert info.value.reason == "too_large"


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBA", "I;16"])
def test_large_images_are_reduced_before_conversion_to_the_same_input(mode: str) -> None:
    """The reduction is the one ``resize`` makes itself (reducing gap 3), only made before the
    RGB copy: the same input when squashed (1344 x 672 reduces by 4 x 2 for 112 px, evenly),
    nearly the same when centre-cropped (reduced by 2 on both sides then)."""
    photo = Image.fromarray(data.astronaut()).resize((1344, 672), Image.Resampling.BICUBIC)
    image = {"1": photo.convert("1"), "L": photo.convert("L"), "P": photo.quantize(64),
             "RGB": photo, "RGBA": photo.convert("RGBA"),
             "I;16": Image.fromarray(np.asarray(photo.convert("L")).astype(np.uint16) * 257)}[mode]
    payload = encode(image, "PNG")
    for preprocess, tolerance in ((SQUASH_112, 0.0), (CROP_112, 2.0)):  # of 255
        reduced = load_pixels(payload, preprocess, max_pixels=LIMIT)
        whole = to_model_input(open_image(payload, max_pixels=LIMIT), preprocess)  # no draft_to
        assert reduced.shape == whole.shape == (112, 112, 3)
        assert np.abs(reduced.astype(int) - whole.astype(int)).mean() <= tolerance


def test_decode_cost_counts_the_pixels_and_the_conversion_copy() -> None:
    bomb = Image.open(io.BytesIO(huge_declared_png(13_300, 13_300)))
    assert decode_cost(bomb, 224) == 13_300 * 13_300 * 2  # 1-bit as bytes, then as "L"
    assert decode_cost(bomb) == 13_300 * 13_300 * 5  # not reduced: 1 byte, then RGB
    small = Image.open(io.BytesIO(photo_jpeg((64, 48))))
    assert decode_cost(small, 224) == 64 * 48 * 4  # RGB, nothing to convert


def test_reserve_is_entered_around_decoding_with_the_cost(tmp_path: Path) -> None:
    asked: list[int] = []

    @contextlib.contextmanager
    def reserve(cost: int) -> Iterator[None]:
        asked.append(cost)
        yield

    pixels = load_pixels(photo_jpeg((640, 480)), SQUASH, max_pixels=LIMIT, reserve=reserve)
    assert pixels.shape == (64, 64, 3) and len(asked) == 1 and 0 < asked[0] <= 640 * 480 * 4

    def refuse(cost: int) -> contextlib.AbstractContextManager[None]:
        raise DecodeError(f"needs {cost} bytes", "too_many_pixels")

    with pytest.raises(DecodeError, match="needs"):
        load_pixels(photo_jpeg((64, 48)), SQUASH, max_pixels=LIMIT, reserve=refuse)

    def busy(cost: int) -> contextlib.AbstractContextManager[None]:
        raise BusyError("full")

    with pytest.raises(BusyError):  # not a DecodeError: the image may be fine
        load_pixels(photo_jpeg((64, 48)), SQUASH, max_pixels=LIMIT, reserve=busy)


@pytest.mark.parametrize("fmt", ["EPS", "QOI", "DDS"])
def test_formats_lookalike_does_not_list_are_never_handed_to_their_plugin(fmt: str) -> None:
    """Pillow recognises these by their bytes, whatever the name; EPS would run Ghostscript."""
    payload = encode(Image.new("RGB", (16, 16), RED), fmt)
    with pytest.raises(DecodeError, match="not an image") as info:
        open_image(payload, max_pixels=LIMIT, name="photo.jpg")
    assert info.value.reason == "not_image"


def test_nothing_is_decoded_before_the_reservation_is_granted() -> None:
    """A PNG's EXIF may follow its pixels, so Pillow's getexif() decodes them: 177 MB taken
    before the budget was asked, once. A refused reservation must cost next to nothing."""
    script = f"""
import resource, struct, zlib
from lookalike.errors import BusyError, LookalikeError
from lookalike.imaging import open_image
def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
side = 13_300
pixels = zlib.compress((b"\\0" + b"\\x55" * (side // 8 + 1)) * side)
header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
png = (b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels)
       + chunk(b"IEND", b""))
del pixels
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
def refuse(cost):
    raise BusyError("no room")
try:
    open_image(png, max_pixels={LIMIT * 2}, draft_to=224, reserve=refuse)
except LookalikeError:  # BusyError (DecodeError before the boundary let it through)
    pass
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""
    grown_mb = int(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                  check=True, timeout=120).stdout)
    assert grown_mb < 50, f"{grown_mb} MB decoded before the reservation"


@pytest.mark.parametrize("colour_type, depth", [(6, 8), (6, 16), (4, 8), (2, 16), (0, 16)])
def test_decode_cost_covers_what_decoding_takes(colour_type: int, depth: int) -> None:
    """Measured in a fresh process: the peak memory that decoding a 64 MP PNG (RGBA, grey with
    alpha, RGB, 16-bit grey) adds stays within decode_cost, what the server's budget reserves.
    (Image.reduce premultiplies alpha in a full copy: RGBA once took twice its estimate.)"""
    script = f"""
import io, resource, struct, zlib
from PIL import Image
from lookalike.imaging import decode_cost, load_pixels
from lookalike.types import Preprocess
def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
side, depth, colour = 8000, {depth}, {colour_type}
width = side * {{6: 4, 4: 2, 2: 3, 0: 1}}[colour] * depth // 8
row = b"\\0" + (bytes(range(256)) * (width // 256 + 1))[:width]
packer = zlib.compressobj(6)
pixels = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
header = struct.pack(">IIBBBBB", side, side, depth, colour, 0, 0, 0)
data = (b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels)
        + chunk(b"IEND", b""))
del pixels
cost = decode_cost(Image.open(io.BytesIO(data)), 224)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
load_pixels(data, Preprocess(224, "squash", (0.0,) * 3, (1.0,) * 3), max_pixels=10**8)
print(cost, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""
    cost, grew = map(int, subprocess.run([sys.executable, "-c", script], capture_output=True,
                                         text=True, check=True, timeout=120).stdout.split())
    assert grew <= cost * 1.05 + 8 * 2**20, f"decoding took {grew:,} bytes, cost {cost:,}"
