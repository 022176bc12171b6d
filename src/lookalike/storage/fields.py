"""The fields of an image: what filter expressions (:mod:`lookalike.where`) see, computed here
once for every store.

An image's fields are its *automatic* fields, from its row (``path``, ``folder``, ``name``,
``width``, ``height``, ``size``, ``modified``, ``added``) and from what the decoder read from the
file (``format``, and from EXIF ``taken``, ``make``, ``model``, ``lat``, ``lon``), merged with its
flattened JSON metadata, a metadata key replacing the automatic field of the same name. Times
are UTC text, ``YYYY-MM-DDTHH:MM:SS``, so comparing strings compares dates.

Stores keep them in a derived table ``fields (image_id, key, text, num)``, one row per distinct
value (a string in ``text``, a number in ``num``). Only active images have rows: they are
written in the transaction that inserts an active image or replaces its metadata, and deleted in
the one that retires it, so the table can always be rebuilt from the images table and its
metadata, and a filter never needs to look at an image's status to leave out the retired.
Beside it, ``field_counts (key, images)`` says how many active images have each key.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from ..errors import UsageError
from ..where import Value, Where, field_value, flatten

Fields = dict[str, list[Value]]
FieldRow = tuple[int, str, str | None, float | None]  # (image_id, key, text, num)

#: The images columns the automatic fields come from, in :func:`image_fields`' order.
SOURCE_COLUMNS = ("uri", "size", "mtime_ns", "width", "height", "added_at", "file_fields")

_FORMATS = {"jpg": "jpeg", "jpe": "jpeg", "jfif": "jpeg", "tif": "tiff"}
# Text no database column takes: NUL (PostgreSQL; EXIF pads strings with it), dropped, and
# lone surrogates (neither), replaced.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def checked(where: Where | str) -> Where:
    """``where`` parsed: text never reaches a query unparsed (WhereError if it cannot be)."""
    parsed = Where.of(where)
    if parsed is None:
        raise UsageError("An empty filter: give an expression, such as `format = jpeg`.")
    return parsed


def utc_time(seconds: float) -> str | None:
    """``seconds`` since the epoch as UTC ``YYYY-MM-DDTHH:MM:SS``; None when out of range."""
    try:
        moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None
    return moment.strftime("%Y-%m-%dT%H:%M:%S") if 1 <= moment.year <= 9999 else None


def folder_and_name(uri: str) -> tuple[str, str]:
    """A file's folder and name: ``os.path`` for paths, the last ``/`` for object uris."""
    if "://" in uri:
        folder, _, name = uri.rpartition("/")
        return folder, name
    return os.path.dirname(uri), os.path.basename(uri)


def extension_format(name: str) -> str | None:
    """The format a file name's extension says: jpg/jpeg/jpe/jfif are jpeg, tif is tiff, any
    other extension itself, lowercased; None without one."""
    extension = os.path.splitext(name)[1][1:].lower()
    return _FORMATS.get(extension, extension) or None


def file_fields_json(file_fields: Mapping[str, Any] | None) -> str | None:
    """What a store keeps of the fields the decoder read (its ``images.file_fields``)."""
    if not file_fields:
        return None
    kept = {_text(str(k)): _value(v) for k, v in file_fields.items() if _value(v) is not None}
    return json.dumps(kept, ensure_ascii=False, sort_keys=True) if kept else None


def automatic(uri: str, size: int | None, mtime_ns: int | None, width: int | None,
              height: int | None, added_at: float | None,
              file_fields: str | Mapping[str, Any] | None) -> Fields:
    """The automatic fields of a row; ``uri`` as the store keeps it, ``file_fields`` as
    :func:`file_fields_json` wrote it (or the mapping it was made from)."""
    folder, name = folder_and_name(uri)
    found: dict[str, Any] = {_text(str(k)): v for k, v in _loaded(file_fields).items()}
    found.update(path=uri, folder=folder, name=name, width=width, height=height, size=size,
                 modified=None if mtime_ns is None else utc_time(mtime_ns / 1e9),
                 added=None if added_at is None else utc_time(added_at))
    if _value(found.get("format")) is None:
        found["format"] = extension_format(name)
    fields: Fields = {}
    for key, raw in found.items():
        value = _value(raw)
        if value is not None:
            fields[key] = [value]
    return fields


def metadata_fields(metadata: str | Mapping[str, Any] | None) -> Fields:
    """The fields of an image's JSON metadata (an object; anything else has none), each key's
    values once each, in order."""
    loaded = _loaded(metadata)
    fields: Fields = {}
    for key, raw in flatten(loaded):
        value, key = _value(raw), _text(key)
        if value is not None and value not in fields.setdefault(key, []):
            fields[key].append(value)
    return fields


def image_fields(source: Sequence[Any], metadata: str | Mapping[str, Any] | None) -> Fields:
    """The fields of an image: the automatic fields of its :data:`SOURCE_COLUMNS` values,
    replaced key by key by those of its metadata."""
    return {**automatic(*source), **metadata_fields(metadata)}


def rows(image_id: int, fields: Fields) -> list[FieldRow]:
    """The ``fields`` table rows of one image."""
    return [(image_id, key, value, None) if isinstance(value, str) else
            (image_id, key, None, value) for key, values in fields.items() for value in values]


def grouped(found: Iterable[Sequence[Any]]) -> dict[int, Fields]:
    """(image_id, key, text, num) rows as fields by image, keys sorted, each key's values
    sorted (numbers first): the order of values is not kept."""
    by_image: dict[int, Fields] = {}
    for image_id, key, text, num in found:
        values = by_image.setdefault(int(image_id), {}).setdefault(key, [])
        values.append(text if text is not None else float(num))
    return {image_id: {key: sorted(values, key=value_order) for key, values in sorted(f.items())}
            for image_id, f in by_image.items()}


def top_values(counted: Iterable[tuple[Value, int]], top: int) -> list[tuple[Value, int]]:
    """The ``top`` (value, images) pairs of a facet: count descending, then value."""
    ranked = sorted(counted, key=lambda pair: (-pair[1], value_order(pair[0])))
    return [(value, int(n)) for value, n in ranked[:max(top, 0)]]


def value_order(value: Value) -> tuple[bool, Value]:
    """How values sort where they mix: numbers first, then strings in code-point order."""
    return isinstance(value, str), value


def _value(raw: Any) -> Value | None:
    value = field_value(raw)
    return _text(value) if isinstance(value, str) else value


def _text(text: str) -> str:
    if not _UNSTORABLE.search(text):
        return text
    return _UNSTORABLE.sub(lambda found: "" if found.group() == "\x00" else "\ufffd", text)


def _loaded(text: str | Mapping[str, Any] | None) -> Mapping[str, Any]:
    """A JSON object from its text (or already loaded); anything else is an empty one."""
    if text is None or isinstance(text, Mapping):
        return text or {}
    try:
        # Integers as floats: a field holds floats anyway, and a 400-digit integer would make
        # float() overflow (or int() refuse past 4300 digits) instead of becoming infinity,
        # which field_value leaves out.
        loaded = json.loads(text, parse_int=float)
    except ValueError:
        return {}
    return loaded if isinstance(loaded, dict) else {}
