"""The fields a decoder reads from an image file: its format, and from EXIF where present when
it was taken, the camera, and where.

EXIF is written by every camera, phone and editor on earth, often wrongly: tags of the wrong
type, rationals over zero, dates of zeros, text padded with NULs or garbage. Reading it never
fails an image and never raises (:func:`file_fields`): a tag that cannot be read as the kind
of value it should hold is simply not there.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping
from datetime import datetime
from numbers import Real
from typing import Any

from PIL import Image

_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_MAKE, _MODEL, _DATETIME = 0x010F, 0x0110, 0x0132
_ORIGINAL, _DIGITIZED = 0x9003, 0x9004
_LAT_REF, _LAT, _LON_REF, _LON = 1, 2, 3, 4
_FORMATS = {"MPO": "jpeg"}  # a JPEG with more frames (phones' depth maps) is still a JPEG
_MAX_TEXT = 200
# "YYYY:MM:DD HH:MM:SS" as EXIF writes it; some writers use "-" in the date or a "T".
_DATE = re.compile(r"(\d{4})[:\-](\d{2})[:\-](\d{2})[ T](\d{2}):(\d{2}):(\d{2})")

FileFields = dict[str, str | float]


def file_fields(image: Image.Image, exif: Image.Exif | None = None) -> FileFields:
    """``format`` (Pillow's, lowercased), and ``taken``, ``make``, ``model``, ``lat`` and
    ``lon`` from ``image``'s EXIF (``exif``: its ``getexif()``, if already read) when present
    and readable. ``taken`` is the camera's local time as ``YYYY-MM-DDTHH:MM:SS``; ``lat`` and
    ``lon`` are decimal degrees, south and west negative, and come as a pair or not at all."""
    fields: FileFields = {}
    if image.format:
        fields["format"] = _FORMATS.get(image.format, image.format.lower())
    with warnings.catch_warnings():  # "Corrupt EXIF data": what is unreadable is left out
        warnings.simplefilter("ignore")
        try:
            tags = image.getexif() if exif is None else exif
        except Exception:  # hostile bytes: whatever Pillow raises, the image has no EXIF fields
            return fields
        main, photo, gps = (_ifd(tags, ifd) for ifd in (None, _EXIF_IFD, _GPS_IFD))
    for key, tag in (("make", _MAKE), ("model", _MODEL)):
        if (text := _text(main.get(tag))) is not None:
            fields[key] = text
    for value in (photo.get(_ORIGINAL), photo.get(_DIGITIZED), main.get(_DATETIME)):
        if (taken := _time(value)) is not None:
            fields["taken"] = taken
            break
    lat = _degrees(gps.get(_LAT), gps.get(_LAT_REF), "N", "S", 90.0)
    lon = _degrees(gps.get(_LON), gps.get(_LON_REF), "E", "W", 180.0)
    if lat is not None and lon is not None:
        fields["lat"], fields["lon"] = lat, lon
    return fields


def _ifd(tags: Image.Exif, ifd: int | None) -> Mapping[int, Any]:
    """The tags of the main IFD (``None``) or of a sub-IFD; empty when it cannot be read."""
    try:
        found = dict(tags) if ifd is None else tags.get_ifd(ifd)
    except Exception:  # a pointer past the end, a loop, a wrong type: no such IFD
        return {}
    return found if isinstance(found, dict) else {}


def _text(value: object) -> str | None:
    """An ASCII tag's text: up to its first NUL, printable characters only, stripped."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str):
        return None
    text = "".join(c for c in value.split("\x00", 1)[0] if c.isprintable()).strip()
    return text[:_MAX_TEXT] or None


def _time(value: object) -> str | None:
    """An EXIF date and time as ``YYYY-MM-DDTHH:MM:SS``, if it is a real one."""
    text = _text(value)
    found = _DATE.match(text) if text else None
    if found is None:
        return None
    try:
        year, month, day, hour, minute, second = map(int, found.groups())
        return datetime(year, month, day, hour, minute, second).isoformat()
    except ValueError:  # "0000:00:00 00:00:00", month 13...
        return None


def _degrees(value: object, ref: object, positive: str, negative: str,
             limit: float) -> float | None:
    """Degrees, minutes and seconds (rationals) and their N/S or E/W reference as signed
    decimal degrees. A missing reference counts as N or E; any other is unreadable."""
    parts = value if isinstance(value, tuple) else (value,)
    if not 1 <= len(parts) <= 3 or not all(isinstance(p, Real) for p in parts):
        return None
    try:
        degrees = sum(float(p) / 60**i for i, p in enumerate(parts))
    except (ValueError, OverflowError, ZeroDivisionError):
        return None
    side = (_text(ref) or "").upper() or None
    if side not in (None, positive, negative) or not math.isfinite(degrees) or not (
            0.0 <= degrees <= limit):
        return None
    return round(-degrees if side == negative else degrees, 7)
