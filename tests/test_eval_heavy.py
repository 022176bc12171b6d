"""Heavy copy-detection sets: the edits' two sets of ranges (the standard ones exactly as before),
caption bars, sets written over a chosen database with same-picture groups, and scoring that
counts any file of the original's picture as the right answer."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike.cli.evaluate import _default_cache
from lookalike.errors import UnknownNameError, UsageError
from lookalike.evaluation import (
    EDITS,
    HEAVY,
    CopyDetectionSet,
    Embedded,
    Pipeline,
    Query,
    Ranges,
    apply_edit,
    build_copydetect,
    copydetect_report,
    load_copydetect,
    score_queries,
    write_copydetect,
)


@pytest.fixture(scope="module")
def synthetic() -> Image.Image:
    """Gradients plus seeded noise, 160 x 120: the same pixels on every machine."""
    rng = np.random.default_rng(123)
    y, x = np.mgrid[0:120, 0:160]
    pixels = np.stack([x * 255 // 159, y * 255 // 119, (x + y) % 256], -1).astype(np.int16)
    pixels = np.clip(pixels + rng.integers(-20, 21, pixels.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


# Taken with edits.py as it was before it had ranges (seed 2026): what each edit drew, the next
# number of the generator after it (so the same count of draws), and a hash of its pixels
# (left out for JPEG and text, whose pixels depend on libjpeg's and FreeType's versions).
BEFORE_RANGES = {
    "crop": ("area=0.57", 0.37050052710804804, "4b55a007855c6e19"),
    "rotate": ("angle=-9.5", 0.4672684011434851, "31388341e8cf42a0"),
    "jpeg": ("quality=36", 0.6399131657151546, None),
    "colour": ("brightness=0.74 contrast=1.11 saturation=0.95 hue=-0.03", 0.3549173343096512,
               "7128c592c86a39e8"),
    "grey": ("", 0.17893481367543618, "065cabe5319ed04b"),
    "blur": ("radius=0.8px", 0.6399131657151546, "37cb676f13ac5b29"),
    "scale": ("factor=0.25", 0.6399131657151546, "3cac9438da55a615"),
    "flip": ("", 0.17893481367543618, "5aa220d833a30fbb"),
    "text": ("size=13px lines=© lookalike|#nofilter|© lookalike", 0.5151536963223518, None),
    "border": ("pad=12,14,23,13 fill=(164, 90, 212)", 0.9051438366771739, "01263888fa68f254"),
    "chain": ("colour(brightness=0.88 contrast=1.23 saturation=1.57 hue=-0.06) > "
              "blur(radius=1.4px) > rotate(angle=-12.5) > crop(area=0.87)", 0.5151536963223518,
              "543e4c28944dffb2"),
}


@pytest.mark.parametrize("name", list(EDITS))
def test_standard_edits_draw_and_paint_what_they_did_before_ranges(
    name: str, synthetic: Image.Image
) -> None:
    detail, next_draw, pixels = BEFORE_RANGES[name]
    rng = np.random.default_rng(2026)
    image, drawn = apply_edit(name, synthetic, rng)
    assert (drawn, float(rng.random())) == (detail, next_draw)
    if pixels is not None:
        assert hashlib.sha256(np.asarray(image).tobytes()).hexdigest()[:16] == pixels


def _numbers(detail: str, key: str) -> list[float]:
    return [float(v) for v in re.findall(rf"{key}=([-+\d.]+)", detail)]


def test_heavy_edits_draw_from_the_heavy_ranges(synthetic: Image.Image) -> None:
    big = synthetic.resize((448, 336))
    seen: dict[str, list[float]] = {"area": [], "quality": [], "radius": []}
    for seed in range(40):
        for name, key in (("crop", "area"), ("jpeg", "quality"), ("blur", "radius")):
            _, detail = apply_edit(name, big, np.random.default_rng(seed), HEAVY)
            seen[key] += _numbers(detail, key)
    assert 0.23 <= min(seen["area"]) < 0.4 and 0.7 < max(seen["area"]) <= 0.82
    assert min(seen["quality"]) == 5 and max(seen["quality"]) <= 40
    sigma_at_224 = np.asarray(seen["radius"]) * 224 / 336  # σ on the shorter side at 224 px
    assert 0.95 <= sigma_at_224.min() < 1.5 and 3.5 < sigma_at_224.max() <= 4.05
    # Chains draw from the same ranges: some crop keeps less than the standard minimum of 50 %.
    chains = [apply_edit("chain", big, np.random.default_rng(s), HEAVY)[1] for s in range(60)]
    assert min(a for c in chains for a in _numbers(c, "area")) < 0.5
    assert all(2 <= c.count(">") + 1 <= 4 for c in chains)


@pytest.mark.parametrize("name", list(EDITS))
def test_heavy_edits_are_deterministic_for_a_seed(name: str, synthetic: Image.Image) -> None:
    first, detail = apply_edit(name, synthetic, np.random.default_rng(9), HEAVY)
    again, same = apply_edit(name, synthetic, np.random.default_rng(9), HEAVY)
    assert detail == same and np.array_equal(np.asarray(first), np.asarray(again))


def test_heavy_text_adds_a_caption_bar(synthetic: Image.Image) -> None:
    width, height = synthetic.size
    kinds = set()
    for seed in range(24):
        image, detail = apply_edit("text", synthetic, np.random.default_rng(seed), HEAVY)
        band, where, how, colour = re.search(r"bar=(\d+)px (\w+) (\w+) (\w+)", detail).groups()
        band = int(band)
        assert 0.12 * height - 1 <= band <= 0.3 * height + 1
        assert image.size == (width, height + band if how == "added" else height)
        rows = np.asarray(image)[:band] if where == "top" else np.asarray(image)[-band:]
        paper = 255 if colour == "white" else 0
        assert (rows == paper).mean() > 0.6  # a solid band, the words in the other colour
        assert (np.abs(rows.astype(int) - paper) > 128).any()  # the words
        kinds.add((where, how, colour))
    assert len(kinds) >= 6  # top and bottom, added and laid over, white and black
    assert "bar=" not in apply_edit("text", synthetic, np.random.default_rng(0))[1]


def test_ranges_are_a_frozen_record_the_heavy_ones_within_the_issue() -> None:
    assert Ranges() != HEAVY and HEAVY.crop_area == (0.25, 0.8)
    assert HEAVY.jpeg_quality == (5, 40) and HEAVY.rotate_degrees == (5.0, 30.0)
    assert HEAVY.scale_factor == (0.2, 0.5) and HEAVY.chain_length == (2, 4)
    with pytest.raises(AttributeError):
        HEAVY.crop_area = (0.1, 0.2)  # type: ignore[misc]


# -- scoring with same-picture groups --------------------------------------------------------


def test_one_answer_counts_the_first_relevant_item_only() -> None:
    scores = np.array([[0.9, 0.8, 0.7, 0.6], [0.1, 0.9, 0.8, 0.2]])
    relevant = np.array([[False, True, False, True], [False, False, True, True]])
    plain = score_queries(scores, relevant, (1, 2))
    one = score_queries(scores, relevant, (1, 2), one_answer=True)
    assert plain.ap[0] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert one.first_rank.tolist() == [2, 2] and one.relevant.tolist() == [1, 1]
    assert one.ap.tolist() == [0.5, 0.5] and one.recall[:, 1].tolist() == [1.0, 1.0]


def _dataset(groups: tuple[int, ...] | None) -> CopyDetectionSet:
    queries = [Query(Path(f"q{j}.jpg"), j, "chain" if j else "crop", "") for j in range(2)]
    return CopyDetectionSet(Path("."), [Path(f"d{i}.jpg") for i in range(5)], 2, queries, 0,
                            groups)


def test_a_file_of_the_originals_picture_is_a_right_answer() -> None:
    # Database: 0, 1 originals; 2 shows picture 0 again (resized), 3 is dropped (failed), 4 other.
    eye = np.eye(4, dtype=np.float32)
    db = Embedded(np.stack([eye[0], eye[1], eye[2], eye[3], eye[3]]),
                  np.array([True, True, True, False, True]), [("d3.jpg", "broken")], 0, 0)
    qs = Embedded(np.stack([0.6 * eye[0] + 0.8 * eye[2], 0.6 * eye[1] + 0.8 * eye[3]]),
                  np.ones(2, bool), [], 0, 0)
    pipeline = Pipeline("tiny", qe=0)
    grouped = copydetect_report(_dataset((0, 1, 0, 1, 3)), pipeline, db, qs, (1, 2))
    plain = copydetect_report(_dataset(None), pipeline, db, qs, (1, 2))
    # Query 0 finds row 2 first: right with groups, rank 2 without. Query 1 finds row 4 first,
    # another picture, then its original; row 3 (its picture too) failed and is out.
    assert grouped.per_edit["crop"].precision_at_1 == 1.0
    assert plain.per_edit["crop"].precision_at_1 == 0.0
    assert grouped.per_edit["chain"].recall_at[2] == 1.0
    assert grouped.per_edit["chain"].precision_at_1 == 0.0
    assert list(grouped.per_edit) == ["crop", "chain"] and grouped.database == 4


# -- sets over a chosen database ---------------------------------------------------------------


@pytest.fixture(scope="module")
def small_photos(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("small")
    paths = []
    for photo in sorted(sample_dir.glob("*.jpg"))[:6]:
        with Image.open(photo) as image:
            image.convert("RGB").resize((96, 72)).save(folder / photo.name, quality=90)
        paths.append(folder / photo.name)
    return paths


def test_written_sets_cycle_edits_keep_groups_and_are_cached(
    small_photos: list[Path], tmp_path: Path
) -> None:
    originals, distractors = small_photos[:3], small_photos[3:]
    kwargs = {"cycles": [["crop", "blur"], ["chain"]], "seed": 3, "heavy": True,
              "groups": ["a", "b", "c", "a", "d", "d"]}
    dataset = write_copydetect(tmp_path / "set", originals, distractors, **kwargs)
    assert [(q.original, q.edit) for q in dataset.queries] == [
        (0, "crop"), (0, "chain"), (1, "blur"), (1, "chain"), (2, "crop"), (2, "chain")]
    assert dataset.groups == (0, 1, 2, 0, 4, 4) and dataset.edits == ["crop", "blur", "chain"]
    assert dataset.database == [p.resolve() for p in small_photos]
    manifest = json.loads((tmp_path / "set" / "manifest.json").read_text())
    assert manifest["groups"] == [0, 1, 2, 0, 4, 4] and "heavy" in manifest["recipe"]["ranges"]
    assert load_copydetect(tmp_path / "set") == dataset
    stamp = dataset.queries[0].path.stat().st_mtime_ns
    assert write_copydetect(tmp_path / "set", originals, distractors, **kwargs) == dataset
    assert dataset.queries[0].path.stat().st_mtime_ns == stamp  # same recipe: reused
    regrouped = write_copydetect(tmp_path / "set", originals, distractors,
                                 **{**kwargs, "groups": list("abcdef")})
    assert regrouped.groups == (0, 1, 2, 3, 4, 5)
    other = write_copydetect(tmp_path / "other", originals, distractors, **kwargs)
    for a, b in zip(dataset.queries, other.queries, strict=True):
        assert a.path.read_bytes() == b.path.read_bytes()


def test_an_edit_twice_for_one_original_gets_two_draws(small_photos: list[Path],
                                                       tmp_path: Path) -> None:
    dataset = write_copydetect(tmp_path / "twice", small_photos[:1], [],
                               cycles=[["crop"], ["crop"]])
    first, second = dataset.queries
    assert first.path != second.path and first.detail != second.detail


def test_written_sets_reject_bad_input(small_photos: list[Path], tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="sepia"):
        write_copydetect(tmp_path / "x", small_photos[:1], [], cycles=[["sepia"]])
    with pytest.raises(UsageError, match="2 labels for 3"):
        write_copydetect(tmp_path / "x", small_photos[:1], small_photos[1:3],
                         cycles=[["crop"]], groups=[0, 1])


def test_standard_sets_keep_their_recipe_and_cache_folder(small_photos: list[Path],
                                                          tmp_path: Path) -> None:
    folder = small_photos[0].parent
    dataset = build_copydetect(folder, tmp_path / "cd", originals=2, distractors=2,
                               edits=("crop",))
    recipe = json.loads((tmp_path / "cd" / "manifest.json").read_text())["recipe"]
    assert "ranges" not in recipe and dataset.groups is None
    heavy = build_copydetect(folder, tmp_path / "heavy", originals=2, distractors=2,
                             edits=("crop",), heavy=True)
    assert heavy.queries[0].detail != dataset.queries[0].detail
    # The CLI's default folder for a standard set is named as before --heavy existed.
    old = _default_cache(str(folder), None, 2, 2, 0, ("crop",), False, str(tmp_path))
    digest = hashlib.blake2b(json.dumps([str(folder.resolve()), None, 2, 2, 0, ["crop"]])
                             .encode(), digest_size=6).hexdigest()
    assert old.name == f"copydetect-{folder.name}-{digest}"
    assert _default_cache(str(folder), None, 2, 2, 0, ("crop",), True, str(tmp_path)) != old
