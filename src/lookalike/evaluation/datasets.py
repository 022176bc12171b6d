"""Evaluation sets: a labelled folder (one sub-folder per class), and a copy-detection set built
from any folder of photos (edited copies as queries, originals plus distractors as the database).

A copy-detection set is written to a folder with a ``manifest.json`` that records the recipe
(source folder, counts, seed, version) and every query's original and edit, so it is rebuilt only
when the recipe changes and two machines with the same photos get the same queries.

A set may also say which database files show the same picture (``groups``: a picture id per
database row, saved in the manifest), for databases that hold a photo more than once (resized,
cropped, mirrored, recoloured): any file of the original's picture is then a right answer. Sets
without groups (all those :func:`build_copydetect` makes) treat every file as its own picture.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..edits import EDITS, HEAVY, STANDARD, apply_edit
from ..errors import DecodeError, UnknownNameError, UsageError
from ..imaging import IMAGE_EXTENSIONS, open_image

CD_VERSION = 1  # bump when the recipe changes, so cached copy-detection sets are rebuilt
MANIFEST = "manifest.json"
#: Originals are edited as a "web copy" with this long side at most, as photos are when shared.
QUERY_MAX_SIDE = 1024
QUERY_QUALITY = 95  # the queries are stored as JPEG at this quality (the jpeg edit goes lower)
_MAX_PIXELS = 1 << 28


def image_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Every file under ``folder`` (recursively) with an image extension, in sorted order."""
    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"{root} is not a folder.")
    return sorted(p for p in root.rglob("*")
                  if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                  and not p.name.startswith("."))


@dataclass(frozen=True)
class LabelledSet:
    """Images with class labels: ``labels[i]`` indexes ``classes`` for ``paths[i]``."""

    root: Path
    paths: list[Path]
    labels: np.ndarray
    classes: list[str]
    #: Sub-folders left out because they hold fewer than two images (nothing to retrieve).
    small_classes: list[str]


def read_labelled(folder: str | os.PathLike[str]) -> LabelledSet:
    """Read a labelled folder: each direct sub-folder is a class holding its images (searched
    recursively). Classes with fewer than 2 images are left out and listed in ``small_classes``;
    files that fail to decode are found, and reported, when they are embedded."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise UsageError(f"{root} is not a folder; give a folder with one sub-folder per class.")
    paths: list[Path] = []
    labels: list[int] = []
    classes: list[str] = []
    small: list[str] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = image_files(sub)
        if len(files) < 2:
            small.append(sub.name)
            continue
        labels += [len(classes)] * len(files)
        classes.append(sub.name)
        paths += files
    if len(classes) < 2:
        raise UsageError(
            f"{root} has {len(classes)} class folder(s) with at least 2 images; a labelled set "
            "needs one sub-folder per class (e.g. cats/, dogs/), at least two with 2+ images."
        )
    return LabelledSet(root, paths, np.asarray(labels, dtype=np.int64), classes, small)


@dataclass(frozen=True)
class Query:
    """One edited copy: its file, the database row of its original, and the edit applied."""

    path: Path
    original: int
    edit: str
    detail: str


@dataclass(frozen=True)
class CopyDetectionSet:
    """Queries (edited copies) and a database whose first ``originals`` rows are their originals
    and whose remaining rows are distractors. ``groups[row]`` is the picture database row ``row``
    shows (None: each row its own picture)."""

    root: Path
    database: list[Path]
    originals: int
    queries: list[Query]
    seed: int
    groups: tuple[int, ...] | None = None

    @property
    def edits(self) -> list[str]:
        """The edits present, in :data:`EDITS` order."""
        present = {q.edit for q in self.queries}
        return [e for e in EDITS if e in present]


def build_copydetect(
    photos: str | os.PathLike[str], out: str | os.PathLike[str], *, originals: int,
    distractors: int, seed: int = 0, edits: tuple[str, ...] = tuple(EDITS),
    distractors_from: str | os.PathLike[str] | None = None, heavy: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> CopyDetectionSet:
    """The copy-detection set for this recipe in ``out``, building it first if needed.

    From the sorted image files of ``photos``, a seeded permutation picks ``originals`` originals
    and then ``distractors`` distractors (disjoint), or the distractors come from another folder,
    ``distractors_from``, by a second seeded permutation. Each original gets one query per edit,
    with parameters drawn (from :data:`lookalike.edits.HEAVY`'s ranges when ``heavy``) from a
    generator seeded by ``(seed, original, edit)``; an original's queries do not depend on how many
    originals or distractors are asked for. ``progress`` is called with (originals done,
    originals) while queries are written.
    """
    source = Path(photos).expanduser().resolve()
    other = Path(distractors_from).expanduser().resolve() if distractors_from else source
    folder = Path(out).expanduser()
    _check_edits(edits)
    if originals < 1 or distractors < 0:
        raise UsageError("A copy-detection set needs at least 1 original and 0+ distractors.")
    recipe = {"version": CD_VERSION, "source": str(source), "distractor_source": str(other),
              "originals": originals, "distractors": distractors, "seed": seed,
              "edits": list(edits), **_ranges_entry(heavy)}
    cached = _cached(folder, recipe)
    if cached is not None:
        return cached
    files = image_files(source)
    order = np.random.default_rng(seed).permutation(len(files))
    if other == source:
        wanted, pool, extra = originals + distractors, files, order[originals:]
    else:
        wanted, pool = originals, image_files(other)
        extra = np.random.default_rng([seed, 1]).permutation(len(pool))
    if len(files) < wanted or len(extra) < distractors:
        raise UsageError(
            f"{originals} originals and {distractors} distractors need more images than "
            f"{source} ({len(files)}){'' if other == source else f' and {other} ({len(pool)})'}"
            " hold. Lower --originals or --distractors."
        )
    database = [files[i] for i in order[:originals]] + [pool[i] for i in extra[:distractors]]
    plan = [(row, name, [seed, int(order[row]), list(EDITS).index(name)])
            for row in range(originals) for name in edits]
    return _write(folder, recipe, database, originals, (source, other), plan, heavy, None,
                  progress)


def write_copydetect(
    out: str | os.PathLike[str], originals: Sequence[str | os.PathLike[str]],
    distractors: Sequence[str | os.PathLike[str]], *, cycles: Sequence[Sequence[str]],
    seed: int = 0, heavy: bool = False, groups: Sequence[Hashable] | None = None,
    about: Mapping[str, Any] | None = None, progress: Callable[[int, int], None] | None = None,
) -> CopyDetectionSet:
    """The copy-detection set over a database the caller chose, in ``out`` (built if needed).

    The database is ``originals`` then ``distractors``. Each cycle (a sequence of edit names)
    gives original ``i`` one query, edited by ``cycle[i % len(cycle)]``: ``[["chain"]]`` gives
    every original a chain, ``[SINGLES, ["chain"]]`` every original a single edit (taking turns)
    and a chain. Parameters come from a generator seeded by ``(seed, i, edit)`` (and how many
    times that edit already came up for ``i``). ``groups`` holds a picture label per database
    row (originals then distractors): rows with equal labels show the same picture, and any of
    them is a right answer to a copy of another. ``about`` is stored with the recipe (e.g. where
    the files came from): the set is rebuilt when it, the files or the groups change.
    """
    folder = Path(out).expanduser()
    database = [Path(p).expanduser().resolve() for p in [*originals, *distractors]]
    if not originals or not cycles or not all(cycles):
        raise UsageError("A copy-detection set needs at least 1 original and 1 edit per cycle.")
    for cycle in cycles:
        _check_edits(tuple(cycle))
    if groups is not None and len(groups) != len(database):
        raise UsageError(f"groups has {len(groups)} labels for {len(database)} database files.")
    ids = None if groups is None else _group_ids(groups)
    root = Path(os.path.commonpath([p.parent for p in database]))
    listing = json.dumps([[str(p.relative_to(root)) for p in database], ids]).encode()
    recipe = {"version": CD_VERSION, "source": str(root), "distractor_source": str(root),
              "originals": len(originals), "distractors": len(distractors), "seed": seed,
              "edits": [list(c) for c in cycles], **_ranges_entry(heavy),
              "database": hashlib.blake2b(listing, digest_size=12).hexdigest(),
              "about": dict(about or {})}
    cached = _cached(folder, recipe)
    if cached is not None:
        return cached
    plan = []
    for row in range(len(originals)):
        seen: list[str] = []
        for cycle in cycles:
            name = cycle[row % len(cycle)]
            again = [seen.count(name)] if name in seen else []
            plan.append((row, name, [seed, row, list(EDITS).index(name), *again]))
            seen.append(name)
    return _write(folder, recipe, database, len(originals), (root, root), plan, heavy, ids,
                  progress)


def _check_edits(edits: tuple[str, ...]) -> None:
    unknown = [name for name in edits if name not in EDITS]
    if unknown or not edits:
        raise UnknownNameError("edit", ",".join(unknown), list(EDITS), [])


def _ranges_entry(heavy: bool) -> dict[str, Any]:
    # Absent for the standard ranges, so recipes (and cached sets) from before ranges stay valid.
    return {"ranges": {"heavy": asdict(HEAVY)}} if heavy else {}


def _group_ids(labels: Sequence[Hashable]) -> list[int]:
    """Each label as the row of its first appearance: ``["a", "b", "a"]`` -> ``[0, 1, 0]``."""
    first: dict[Hashable, int] = {}
    return [first.setdefault(label, row) for row, label in enumerate(labels)]


def _cached(folder: Path, recipe: dict[str, Any]) -> CopyDetectionSet | None:
    cached = _read_manifest(folder)
    as_stored = json.loads(json.dumps(recipe))  # tuples read back as lists
    if cached is None or cached.get("recipe") != as_stored or not cached.get("complete"):
        return None
    dataset = _from_manifest(folder, cached)
    if all(q.path.is_file() for q in dataset.queries) and all(
        p.is_file() for p in dataset.database
    ):
        return dataset
    return None


def _write(folder: Path, recipe: dict[str, Any], database: list[Path], originals: int,
           roots: tuple[Path, Path], plan: list[tuple[int, str, list[int]]], heavy: bool,
           groups: list[int] | None, progress: Callable[[int, int], None] | None,
           ) -> CopyDetectionSet:
    """Write the queries of ``plan`` ((original row, edit, generator seed) in order) and the
    manifest; originals are stored relative to ``roots[0]``, distractors to ``roots[1]``."""
    query_dir = folder / "queries"
    query_dir.mkdir(parents=True, exist_ok=True)
    for stale in query_dir.glob("*.jpg"):
        stale.unlink()
    entries = []
    names: set[str] = set()
    for row, steps in itertools.groupby(plan, key=lambda step: step[0]):
        web_copy = _web_copy(database[row], roots[0])
        for _, name, key in steps:
            edited, detail = apply_edit(name, web_copy, np.random.default_rng(key),
                                        HEAVY if heavy else STANDARD)
            file = f"queries/{row:05d}-{name}.jpg"
            if file in names:  # the same edit twice for one original (two cycles)
                file = f"queries/{row:05d}-{name}-{key[-1]}.jpg"
            names.add(file)
            edited.save(folder / file, "JPEG", quality=QUERY_QUALITY)
            entries.append({"file": file, "original": row, "edit": name, "detail": detail})
        if progress:
            progress(row + 1, originals)
    manifest = {
        "recipe": recipe,
        "originals": [str(p.relative_to(roots[0])) for p in database[:originals]],
        "distractors": [str(p.relative_to(roots[1])) for p in database[originals:]],
        **({"groups": groups} if groups is not None else {}),
        "queries": entries,
        "complete": True,
    }
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, folder / MANIFEST)
    return _from_manifest(folder, manifest)


def _web_copy(path: Path, source: Path) -> Image.Image:
    """The original as it is shared: decoded, long side at most :data:`QUERY_MAX_SIDE`."""
    try:
        web_copy = open_image(path, max_pixels=_MAX_PIXELS, draft_to=QUERY_MAX_SIDE)
    except DecodeError as exc:
        raise UsageError(f"Original {path} cannot be decoded ({exc}); remove it from "
                         f"{source} or pick another --seed.") from None
    web_copy.thumbnail((QUERY_MAX_SIDE, QUERY_MAX_SIDE), Image.Resampling.LANCZOS)
    return web_copy


def load_copydetect(folder: str | os.PathLike[str]) -> CopyDetectionSet:
    """A copy-detection set written earlier by :func:`build_copydetect`."""
    root = Path(folder).expanduser()
    manifest = _read_manifest(root)
    if manifest is None or not manifest.get("complete"):
        raise UsageError(f"{root} holds no complete copy-detection set (no {MANIFEST}); build "
                         "one with `lookalike eval copydetect PHOTOS_DIR --cache {root}`.")
    return _from_manifest(root, manifest)


def _read_manifest(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _from_manifest(folder: Path, manifest: dict) -> CopyDetectionSet:
    recipe = manifest["recipe"]
    source, other = Path(recipe["source"]), Path(recipe["distractor_source"])
    return CopyDetectionSet(
        root=folder,
        database=[source / p for p in manifest["originals"]]
        + [other / p for p in manifest["distractors"]],
        originals=int(recipe["originals"]),
        queries=[Query(folder / q["file"], int(q["original"]), q["edit"], q["detail"])
                 for q in manifest["queries"]],
        seed=int(recipe["seed"]),
        groups=tuple(int(g) for g in manifest["groups"]) if "groups" in manifest else None,
    )
