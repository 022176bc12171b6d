"""Metadata in bulk: a JSON-lines or CSV file of rows (`lookalike index --metadata`), and values
merged into images' metadata (`lookalike tag`).

A metadata file is read and checked whole before anything is written, so a row that cannot be
read stops the run at its line with nothing changed. Each application is one store transaction
(``set_metadata_many``): every row is applied or none is. Rows that name no indexed image are
returned in the report, never dropped silently.

One rule types the values typed as text (CSV cells, ``key=value`` on the command line): a JSON
number (``3``, ``-2.5``, ``1e3``) becomes a number and ``true``/``false`` a boolean, so filters
compare them as numbers; everything else stays text (``007``, ``+1``, ``NaN``, ``null``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ImageNotFoundError, UsageError
from ..objects import is_object_uri
from ..storage import Store
from ..types import ImageDetails, shown_uri
from .images import Images

#: Metadata file formats, by extension.
METADATA_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
_PATH_KEYS = ("path", "uri")
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(\.\d+)?([eE][-+]?\d+)?")


@dataclass(frozen=True)
class MetadataRow:
    """The metadata a file gives one image: ``uri`` is an absolute path or an ``s3://`` URI."""

    uri: str
    metadata: dict[str, Any]


@dataclass(frozen=True)
class MetadataReport:
    """What applying a metadata file did: images whose metadata it replaced, and the rows that
    named no indexed image (their uris, in file order)."""

    applied: int
    unmatched: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"applied": self.applied, "unmatched": [shown_uri(u) for u in self.unmatched]}


def typed_value(text: str) -> Any:
    """``text`` as a number when it is a JSON number, a boolean for ``true``/``false``, else
    the text itself (see the module docstring)."""
    if text in ("true", "false"):
        return text == "true"
    found = _JSON_NUMBER.fullmatch(text)
    if found is None:
        return text
    try:
        number = float(text) if found.group(1) or found.group(2) else int(text)
    except ValueError:  # an integer over Python's 4,300-digit limit
        return text
    return number if abs(number) != float("inf") else text


def read_metadata_file(path: str | os.PathLike[str]) -> list[MetadataRow]:
    """The rows of a ``.jsonl`` (one JSON object a line) or ``.csv`` (a header row) file; each
    names an image by ``path`` (or ``uri``), relative paths from the file's folder, and its
    other keys are the image's metadata. Rows naming one image are merged, later keys winning.
    Raises UsageError, with the line, for a file that cannot be read as such."""
    file = Path(path).expanduser()
    kind = METADATA_FORMATS.get(file.suffix.lower())
    if kind is None:
        raise UsageError(f"Cannot read metadata from {path}: name a .jsonl file (one JSON "
                         "object a line) or a .csv file (a header row) with a path column.")
    try:
        text = file.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise UsageError(f"Cannot read the metadata file {file}: {exc.strerror or exc}.") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"The metadata file {file} is not UTF-8 text (byte {exc.start}).") \
            from None
    folder = file.absolute().parent
    merged: dict[str, MetadataRow] = {}
    try:
        for line, row in _jsonl_rows(text) if kind == "jsonl" else _csv_rows(text):
            uri = _located(line, row, folder)
            try:
                json.dumps(row, ensure_ascii=False, allow_nan=False).encode("utf-8")  # as stored
            except ValueError as exc:  # 1e999 (read as infinity), a lone surrogate
                raise ValueError(f"line {line}: {exc}.") from None
            if uri in merged:
                merged[uri].metadata.update(row)
            else:
                merged[uri] = MetadataRow(uri, row)
    except ValueError as exc:
        raise UsageError(f"Bad metadata file {file}, {exc}") from None
    return list(merged.values())


def _jsonl_rows(text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    # Lines end at \n only: JSON strings may hold U+2028 and friends, which splitlines() splits at.
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, parse_constant=_not_json)
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"line {number}: not JSON ({exc}).") from None
        if not isinstance(row, dict):
            raise ValueError(f"line {number}: not a JSON object; write one object a line, "
                             'like {"path": "cat.jpg", "album": "pets"}.')
        yield number, row


def _csv_rows(text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    # strict: a quote left open is an error, not a cell that swallows the rest of the file.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    started = 1  # the line the record being read starts on
    try:
        header = next(reader, None)
        if not header or not any(key in header for key in _PATH_KEYS) or "" in header:
            raise ValueError("line 1: a CSV file needs a header row naming every column, one "
                             "of them path (or uri), like path,album,rating.")
        if len(set(header)) != len(header):
            raise ValueError(f"line 1: the header names a column twice: {','.join(header)}.")
        started = reader.line_num + 1
        for cells in reader:
            if not any(cells):
                started = reader.line_num + 1
                continue
            if len(cells) > len(header):
                raise ValueError(f"line {reader.line_num}: {len(cells)} cells, more than the "
                                 f"{len(header)} columns of the header.")
            # An empty or missing cell sets nothing: a sparse column is a key some images have.
            yield reader.line_num, {key: typed_value(cell) for key, cell
                                    in zip(header, cells, strict=False) if cell != ""}
            started = reader.line_num + 1
    except csv.Error as exc:
        if "end of data" in str(exc):
            raise ValueError(f"line {started}: a quote opened in this row is never closed "
                             "(a cell with a comma or a line break is quoted, and a quote "
                             'inside it doubled: "say ""hi""").') from None
        raise ValueError(f"line {reader.line_num}: not CSV ({exc}).") from None


def _located(line: int, row: dict[str, Any], folder: Path) -> str:
    """Take the row's path (or uri) out of it, as an absolute path or an ``s3://`` URI."""
    named = [key for key in _PATH_KEYS if key in row]
    if len(named) != 1:
        raise ValueError(f"line {line}: name the image by path or by uri (exactly one).")
    where = row.pop(named[0])
    if not isinstance(where, str) or not where:
        raise ValueError(f"line {line}: {named[0]} must be a file path or an s3:// URI, got "
                         f"{where!r}.")
    if is_object_uri(where):
        return where
    return os.path.abspath(os.path.join(folder, os.path.expanduser(where)))


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON number")


class Tagger:
    """Writes images' metadata; ``writer(wait)`` holds the collection's writer lock."""

    def __init__(self, store: Store, images: Images,
                 writer: Callable[[float], AbstractContextManager[None]]) -> None:
        self.store, self.images, self._writer = store, images, writer

    def apply(self, rows: Sequence[MetadataRow], *, wait: float) -> MetadataReport:
        """Replace the metadata of every active image a row names with the row's."""
        with self._writer(wait):
            found = self.store.live_rows([row.uri for row in rows])
            active = {uri: record.id for uri, record in found.items()
                      if record.status == "active"}
            self.store.set_metadata_many({
                active[row.uri]: json.dumps(row.metadata, ensure_ascii=False)
                for row in rows if row.uri in active})
        unmatched = tuple(row.uri for row in rows if row.uri not in active)
        return MetadataReport(len(rows) - len(unmatched), unmatched)

    def tag(self, images: Iterable[int | str | os.PathLike[str]], values: Mapping[str, Any],
            remove: Iterable[str], *, wait: float) -> list[ImageDetails]:
        """Merge ``values`` into each image's metadata and take the ``remove`` keys out."""
        values, remove = dict(values), set(remove)
        for key in [*values, *remove]:
            if not isinstance(key, str) or not key:
                raise UsageError(f"A metadata key must be non-empty text, got {key!r}.")
        if both := sorted(remove & values.keys()):
            raise UsageError(f"Cannot both set and remove {', '.join(both)}.")
        try:
            json.dumps(values, ensure_ascii=False, allow_nan=False).encode("utf-8")
        except (TypeError, ValueError, UnicodeError) as exc:
            raise UsageError(f"Metadata values must be JSON (finite numbers, text, true, false, "
                             f"lists and objects of them): {exc}.") from None
        with self._writer(wait):
            ids = list(dict.fromkeys(self._image_id(image) for image in images))
            changed = {}
            for image_id in ids:
                stored = self.store.metadata(image_id)
                old = json.loads(stored) if stored else {}
                new = {k: v for k, v in (old if isinstance(old, dict) else {}).items()
                       if k not in remove}
                changed[image_id] = json.dumps({**new, **values}, ensure_ascii=False)
            self.store.set_metadata_many(changed)
            return [self.images.details(image_id) for image_id in ids]

    def _image_id(self, image: int | str | os.PathLike[str]) -> int:
        if isinstance(image, int):
            return self.images.record(image).id
        image_id = self.images.find(image)
        if image_id is None:
            raise ImageNotFoundError(f"No indexed image '{shown_uri(os.fspath(image))}'.")
        return image_id
