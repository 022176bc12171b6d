"""Fields read from files (format, EXIF), metadata files (`index --metadata`) and `tag`: what
reaches the store's fields, with files made here and the test model."""

from __future__ import annotations

import io
import json
import random
import shutil
import struct
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

from conftest import TINY, malformed_exif_image
from lookalike.cli import main
from lookalike.collection import Collection
from lookalike.collection.metadata import read_metadata_file, typed_value
from lookalike.errors import ImageNotFoundError, UsageError
from lookalike.exif import file_fields
from lookalike.imaging import decode_bytes, decode_file
from lookalike.stream.fetching import fetch
from lookalike.types import Preprocess

LIMIT = 10**8
PREPROCESS = Preprocess(size=32, resize="squash", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
# What camera_jpeg's EXIF says, as fields.
CAMERA = {"format": "jpeg", "make": "Canon", "model": "EOS R5", "taken": "2021-06-07T08:09:10",
          "lat": -33.8596, "lon": -151.2083333}
ASCII, SHORT, LONG, RATIONAL = 2, 3, 4, 5


def camera_jpeg(colour: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    """A JPEG with a camera's EXIF, written by Pillow: make and model (padded as cameras pad
    them), three times, and a position in Sydney (south and west)."""
    exif = Image.Exif()
    exif[0x010F] = "Canon\x00\x00"  # Make
    exif[0x0110] = "  EOS R5 "  # Model
    exif[0x0132] = "2022:01:01 00:00:00"  # DateTime: when edited, not taken
    photo = exif.get_ifd(0x8769)
    photo[0x9003] = "2021:06:07 08:09:10"  # DateTimeOriginal
    photo[0x9004] = "2021:06:07 08:09:11"  # DateTimeDigitized
    gps = exif.get_ifd(0x8825)
    gps[1], gps[3] = "S", "W"
    gps[2] = (IFDRational(33, 1), IFDRational(51, 1), IFDRational(3456, 100))
    gps[4] = (IFDRational(151, 1), IFDRational(12, 1), IFDRational(30, 1))
    return _encode(Image.new("RGB", (64, 48), colour), "JPEG", exif=exif)


def raw_exif(ifd0: Sequence[tuple], photo: Sequence[tuple] = (), gps: Sequence[tuple] = (),
             pointers: Sequence[tuple] | None = None) -> bytes:
    """An EXIF block written byte by byte, wrong types and all (``Image.Exif`` refuses them):
    each IFD a list of (tag, type, count, value bytes). ``pointers`` replaces the entries
    pointing at the Exif and GPS IFDs."""
    def size(entries: Sequence[tuple]) -> int:
        return 2 + 12 * len(entries) + 4 if entries else 0

    count = len(ifd0) + (len(pointers) if pointers is not None else bool(photo) + bool(gps))
    at_photo = 8 + 2 + 12 * count + 4
    at_gps = at_photo + size(photo)
    at_data = at_gps + size(gps)
    if pointers is None:
        pointers = [(0x8769, LONG, 1, struct.pack("<I", at_photo))] if photo else []
        pointers += [(0x8825, LONG, 1, struct.pack("<I", at_gps))] if gps else []
    data = bytearray()

    def ifd(entries: Sequence[tuple]) -> bytes:
        out = struct.pack("<H", len(entries))
        for tag, kind, n, value in sorted(entries):
            if len(value) > 4:
                out += struct.pack("<HHII", tag, kind, n, at_data + len(data))
                data.extend(value)
            else:
                out += struct.pack("<HHI", tag, kind, n) + value.ljust(4, b"\0")
        return out + struct.pack("<I", 0)

    body = ifd([*ifd0, *pointers]) + (ifd(photo) if photo else b"") + (ifd(gps) if gps else b"")
    return b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + body + bytes(data)


def ascii_tag(tag: int, text: bytes) -> tuple:
    return (tag, ASCII, len(text) + 1, text + b"\0")


def rationals(tag: int, *pairs: tuple[int, int]) -> tuple:
    return (tag, RATIONAL, len(pairs), b"".join(struct.pack("<II", *p) for p in pairs))


def _encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _fields(exif: bytes) -> dict[str, str | float]:
    return decode_bytes(_encode(Image.new("RGB", (16, 16)), "JPEG", exif=exif), PREPROCESS,
                        LIMIT).fields


def _cli(*args: str | Path) -> int:
    """`lookalike ARGS` in this process (the test model is registered only here)."""
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Three small photos: one with a camera's EXIF, a JPEG without, a PNG."""
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "camera.jpg").write_bytes(camera_jpeg())
    Image.new("RGB", (40, 30), (20, 90, 200)).save(folder / "plain.jpg")
    Image.new("RGB", (30, 40), (40, 200, 90)).save(folder / "plain.png")
    return folder


@pytest.fixture
def col(photos: Path, tmp_path: Path) -> Any:
    with Collection.create(tmp_path / "col", model=TINY) as opened:
        opened.index([photos], workers=0, show_progress=False)
        yield opened


def fields_of(col: Collection, path: Path) -> dict[str, list[str | float]]:
    image_id = col.find(path)
    assert image_id is not None, path
    return col.store.fields([image_id])[image_id]


# -- fields read from the file ----------------------------------------------------------------


def test_exif_fields_are_read_from_a_camera_jpeg_by_both_decoders(tmp_path: Path) -> None:
    data = camera_jpeg()
    assert decode_bytes(data, PREPROCESS, LIMIT).fields == CAMERA
    (tmp_path / "camera.jpg").write_bytes(data)
    assert decode_file(str(tmp_path / "camera.jpg"), PREPROCESS, LIMIT).fields == CAMERA


def test_taken_falls_back_to_digitized_then_to_datetime() -> None:
    original, digitized, edited = (ascii_tag(tag, b"20%d:01:02 03:04:05" % year)
                                   for tag, year in ((0x9003, 21), (0x9004, 22), (0x0132, 23)))
    assert _fields(raw_exif([edited], [original, digitized]))["taken"] == "2021-01-02T03:04:05"
    assert _fields(raw_exif([edited], [digitized]))["taken"] == "2022-01-02T03:04:05"
    assert _fields(raw_exif([edited]))["taken"] == "2023-01-02T03:04:05"


def test_an_image_without_exif_has_only_its_format() -> None:
    for fmt, name in (("PNG", "png"), ("JPEG", "jpeg"), ("WEBP", "webp"), ("GIF", "gif")):
        data = _encode(Image.new("RGB", (16, 16), (1, 2, 3)), fmt)
        assert decode_bytes(data, PREPROCESS, LIMIT).fields == {"format": name}


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_malformed_exif_leaves_the_fields_out_and_the_image_decoded(fmt: str) -> None:
    decoded = decode_bytes(malformed_exif_image(fmt), PREPROCESS, LIMIT)
    assert decoded.pixels is not None and decoded.fields == {"format": fmt.lower()}


def test_exif_tags_of_the_wrong_kind_are_left_out_one_by_one() -> None:
    garbage = raw_exif(
        [(0x010F, SHORT, 1, struct.pack("<H", 5)),  # Make as a number
         ascii_tag(0x0110, b"\x00EOS R5"),  # Model behind a NUL
         ascii_tag(0x0132, b"0000:00:00 00:00:00")],  # DateTime of zeros
        [(0x9003, LONG, 1, struct.pack("<I", 20210607)),  # DateTimeOriginal as a number
         ascii_tag(0x9004, b"2021:13:07 08:09:10")],  # month 13
        [ascii_tag(1, b"X"), rationals(2, (1, 0), (1, 0), (1, 0)),  # unknown ref, x/0
         (3, SHORT, 1, struct.pack("<H", 7)), ascii_tag(4, b"garbage")])
    assert _fields(garbage) == {"format": "jpeg"}
    partly = raw_exif(
        [ascii_tag(0x010F, b"Canon\x00\xff\xfe junk"), ascii_tag(0x0110, b"  \x01 "),
         ascii_tag(0x0132, b"2019:01:01 00:00:00")],
        [ascii_tag(0x9003, b"    :  :     :  :  ")],
        [ascii_tag(1, b"N"), rationals(2, (48, 1), (30, 1), (0, 1))])  # latitude alone
    assert _fields(partly) == {"format": "jpeg", "make": "Canon",
                               "taken": "2019-01-01T00:00:00"}
    lost = raw_exif([ascii_tag(0x010F, b"Nikon")],
                    pointers=[(0x8769, LONG, 1, struct.pack("<I", 0xFFFFFF)),  # past the end
                              (0x8825, ASCII, 4, b"GPS\0")])  # not a pointer at all
    assert _fields(lost) == {"format": "jpeg", "make": "Nikon"}


@pytest.mark.filterwarnings("ignore:.*:UserWarning")  # Pillow's "Corrupt EXIF data", on open
def test_no_damage_to_exif_bytes_makes_reading_it_raise() -> None:
    good = camera_jpeg()
    start = good.index(b"Exif\x00\x00")
    rng = random.Random(18)
    allowed = {"format": str, "make": str, "model": str, "taken": str, "lat": float,
               "lon": float}
    for _ in range(300):
        damaged = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            damaged[rng.randrange(start + 6, start + 400)] = rng.randrange(256)
        try:
            image = Image.open(io.BytesIO(bytes(damaged)))
        except Exception:  # noqa: BLE001 - this test is about EXIF Pillow has opened
            continue
        for key, value in file_fields(image).items():
            assert isinstance(value, allowed[key]), (key, value)


# -- into the store: index, upload, stream ----------------------------------------------------


def test_indexing_uploads_and_streams_store_what_the_file_says(
    col: Collection, photos: Path
) -> None:
    camera = fields_of(col, photos / "camera.jpg")
    assert {k: camera[k] for k in CAMERA} == {k: [v] for k, v in CAMERA.items()}
    png = fields_of(col, photos / "plain.png")
    assert png["format"] == ["png"] and not {"make", "taken", "lat"} & png.keys()
    details, created = col.add_bytes(camera_jpeg((10, 200, 10)), metadata={"album": "upload"})
    uploaded = col.store.fields([details.image_id])[details.image_id]
    assert created and uploaded["make"] == ["Canon"] and uploaded["album"] == ["upload"]
    fetched = fetch(str(photos / "camera.jpg"), PREPROCESS, LIMIT, 1 << 20).image
    assert fetched is not None and fetched.file_fields == CAMERA


# -- index --metadata -------------------------------------------------------------------------


def test_index_metadata_jsonl_sets_fields_and_reports_unmatched_rows(
    photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = tmp_path / "rows" / "meta.jsonl"
    rows.parent.mkdir()
    rows.write_text("\n".join(json.dumps(r) for r in [
        {"path": "../photos/camera.jpg", "album": "trips", "people": ["ann", "bo"],
         "exif": {"iso": 100}},
        {"uri": str(photos / "plain.png"), "rating": 4, "name": "renamed"},
        {"path": "../photos/nowhere.jpg", "album": "lost"},
    ]) + "\n\n")
    collection = tmp_path / "col"
    assert _cli("index", photos, "-c", collection, "-m", TINY, "--workers", "0",
                "--metadata", rows, "--json") == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["metadata"] == {"applied": 2,
                                           "unmatched": [str(photos / "nowhere.jpg")]}
    assert "1 metadata row names no indexed image" in err and "nowhere.jpg" in err
    with Collection.open(collection) as opened:
        camera = fields_of(opened, photos / "camera.jpg")
        assert camera["album"] == ["trips"] and camera["people"] == ["ann", "bo"]
        assert camera["exif.iso"] == [100.0] and camera["make"] == ["Canon"]
        png = fields_of(opened, photos / "plain.png")
        assert png["rating"] == [4.0] and png["name"] == ["renamed"]  # metadata wins


def test_metadata_csv_types_numbers_and_replaces_what_an_image_had(
    col: Collection, photos: Path, tmp_path: Path
) -> None:
    camera = col.find(photos / "camera.jpg")
    assert camera is not None
    col.tag([camera], {"old": "gone after the file"})
    (photos / "meta.csv").write_text(
        "\ufeffpath,rating,code,flag,note,big,caption\n"
        "camera.jpg,5,007,true,,1e3,\"a, quoted\nline\"\n"
        "plain.jpg,-2.5,+1,null,NaN,\n"
        "camera.jpg,,,,,,later row wins\n", encoding="utf-8")
    report = col.apply_metadata(photos / "meta.csv")
    assert report.applied == 2 and report.unmatched == ()
    assert col.details(camera).metadata == {"rating": 5, "code": "007", "flag": True,
                                            "big": 1000.0, "caption": "later row wins"}
    fields = fields_of(col, photos / "plain.jpg")
    assert fields["rating"] == [-2.5] and fields["code"] == ["+1"]
    assert fields["flag"] == ["null"] and fields["note"] == ["NaN"] and "big" not in fields
    assert fields_of(col, photos / "camera.jpg")["flag"] == [1.0]
    assert [typed_value(t) for t in ("3", "0.5", "-0", "01", "1e999", "true", "True")] == [
        3, 0.5, 0, "01", "1e999", True, "True"]


@pytest.mark.parametrize(("name", "content", "problem"), [
    ("m.jsonl", '{"path": "a.jpg"}\n{"path": ', "line 2: not JSON"),
    ("m.jsonl", '["a.jpg"]\n', "line 1: not a JSON object"),
    ("m.jsonl", '{"album": "x"}\n', "line 1: name the image by path or by uri"),
    ("m.jsonl", '{"path": "a.jpg", "uri": "b.jpg"}\n', "exactly one"),
    ("m.jsonl", '{"path": 7}\n', "path must be a file path"),
    ("m.jsonl", '{"path": "a.jpg", "x": NaN}\n', "NaN is not a JSON number"),
    ("m.jsonl", '{"path": "a.jpg", "x": 1e999}\n', "line 1: Out of range float"),
    ("m.csv", "album,rating\nx,1\n", "header row naming every column"),
    ("m.csv", "path,a,a\nx.jpg,1,2\n", "names a column twice"),
    ("m.csv", "path,a\nx.jpg,1,2\n", "line 2: 3 cells"),
    ("m.csv", 'path,a\nx.jpg,1\ny.jpg,"open\nz.jpg,2\n', "line 3: a quote opened in this row"),
    ("m.txt", "path\nx.jpg\n", "name a .jsonl file"),
])
def test_a_malformed_metadata_file_is_refused_with_its_line(
    tmp_path: Path, name: str, content: str, problem: str
) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(UsageError, match=problem):
        read_metadata_file(tmp_path / name)


def test_a_malformed_metadata_file_stops_index_before_it_starts(
    photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bad.csv").write_text("album\npets\n")
    assert _cli("index", photos, "-c", tmp_path / "col", "-m", TINY,
                "--metadata", tmp_path / "bad.csv") == 2
    assert "bad.csv, line 1" in capsys.readouterr().err
    assert not (tmp_path / "col").exists()


def test_index_metadata_through_the_real_cli(photos: Path, tmp_path: Path) -> None:
    (photos / "meta.csv").write_text("path,album\ncamera.jpg,trips\nmissing.jpg,x\n")

    def lookalike(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "lookalike", *map(str, args)],
                              capture_output=True, text=True, timeout=120)

    done = lookalike("index", photos, "-c", tmp_path / "col", "--metadata", photos / "meta.csv")
    assert done.returncode == 0, done.stderr
    assert "Metadata set for 1 image." in done.stdout
    assert f"1 metadata row names no indexed image:\n  {photos / 'missing.jpg'}" in done.stderr
    with Collection.open(tmp_path / "col") as opened:
        assert fields_of(opened, photos / "camera.jpg")["album"] == ["trips"]
    (photos / "bad.jsonl").write_text("{not json}\n")
    refused = lookalike("index", photos, "-c", tmp_path / "new", "--metadata",
                        photos / "bad.jsonl")
    assert refused.returncode == 2 and "bad.jsonl, line 1: not JSON" in refused.stderr
    assert not (tmp_path / "new").exists()


# -- tag ----------------------------------------------------------------------------------------


def test_tag_sets_overwrites_and_removes_by_id_and_by_path(
    tiny_collection: Path, sample_dir: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "col"
    shutil.copytree(tiny_collection, folder)
    photo = sorted(sample_dir.glob("*.jpg"))[0]
    with Collection.open(folder) as opened:
        image_id = opened.find(photo)
    assert image_id is not None
    tag = ("tag", "-c", folder)

    assert _cli(*tag, image_id, "album=pets", "rating=5", "note=007", "--json") == 0
    assert json.loads(capsys.readouterr().out) == [{
        "image_id": image_id, "uri": str(photo),
        "metadata": {"album": "pets", "rating": 5, "note": "007"}}]
    assert _cli(*tag, photo, "album=trips", "--remove", "note") == 0
    assert '{"album": "trips", "rating": 5}' in capsys.readouterr().out
    with Collection.open(folder) as opened:
        fields = opened.store.fields([image_id])[image_id]
        assert fields["album"] == ["trips"] and fields["rating"] == [5.0] and "note" not in fields

        assert _cli(*tag, image_id, "999999", "album=x") == 2
        assert "No indexed image has id 999999" in capsys.readouterr().err
        assert _cli(*tag, tmp_path / "nowhere.jpg", "album=x") == 2
        assert "No indexed image" in capsys.readouterr().err
        assert opened.details(image_id).metadata == {"album": "trips", "rating": 5}  # untouched
        with pytest.raises(ImageNotFoundError):
            opened.tag([image_id, 10**6], {"album": "x"})
        with pytest.raises(UsageError, match="both set and remove album"):
            opened.tag([image_id], {"album": "x"}, remove=["album"])
        with pytest.raises(UsageError, match="must be JSON"):
            opened.tag([image_id], {"score": float("nan")})
        assert _cli(*tag, image_id) == 2
        assert "Give KEY=VALUE pairs to set, or --remove KEY" in capsys.readouterr().err
        assert _cli(*tag, image_id, "`x`=1") == 2
        assert "without backticks" in capsys.readouterr().err

        # The tags are fields at once: a filtered search finds them, and one that finds
        # nothing says which of its fields no image has.
        search = ("search", "--id", image_id, "-c", folder)
        assert _cli(*search, "--where", "albun = trips") == 0
        assert "No image has the field albun; `lookalike info --fields`" in \
            capsys.readouterr().err
        assert _cli("info", "--fields", "-c", folder) == 0
        assert "album (1)" in capsys.readouterr().out
        assert _cli(*search, "--max-per", "album=1", "--max-per", "rating=1") == 2
        assert "give it once" in capsys.readouterr().err

