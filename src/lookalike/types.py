"""Typed values that cross module boundaries. Frozen dataclasses, never bare dicts."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

ResizeMode = Literal["squash", "center-crop"]
#: The file name extensions of images: what a folder (or a prefix of objects) is listed for.
IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .gif .bmp .dib .tif .tiff .webp .ppm .pgm .pbm .pnm .tga .ico "
    ".jp2 .j2k .psd .pcx .sgi .heic .heif .avif".split()
)
#: Image ids are positive signed 64-bit integers: SQLite and PostgreSQL keys, Faiss labels.
MAX_IMAGE_ID = 2**63 - 1
_CONTROL = re.compile("[\x00-\x1f\x7f]")
_DECIMAL = re.compile("-?[0-9]+")


def is_decimal(text: str) -> bool:
    """Whether ``text`` is an integer in plain decimal digits: ``int()`` also takes ``1_0``,
    `` 10`` and ``+10``, which neither the CLI nor the HTTP API accepts."""
    return _DECIMAL.fullmatch(text) is not None


def shown_uri(uri: str) -> str:
    """A file name as text for JSON and people: its bytes that are not UTF-8 (lone surrogates
    from ``os.fsdecode``) written ``\\xNN``. Everything else is kept as it is."""
    try:
        raw = uri.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no file name decodes to
        return uri.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def line_uri(uri: str) -> str:
    """:func:`shown_uri`, with control characters escaped too (``\\n``, ``\\t``, ``\\x1b``),
    so a file name never breaks one-result-per-line output."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], shown_uri(uri))


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes model input: geometry here, pixel scaling inside the model graph.

    ``size`` is the square side in pixels. ``resize`` is ``"squash"`` (the whole image, aspect not
    kept) or ``"center-crop"`` (shorter side to ``size``, then the centre). ``mean`` and ``std`` are
    per RGB channel on the 0-255 scale: the model computes ``(x - mean) / std``.
    """

    size: int
    resize: ResizeMode
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        return cls(
            size=int(data["size"]),
            resize=data["resize"],
            mean=tuple(data["mean"]),
            std=tuple(data["std"]),
        )


@dataclass(frozen=True)
class SearchHit:
    """One result of a search: the image's id and location, and how similar it is.

    ``score`` is ``(1 + cosine) / 2`` of the two embeddings: 1 for the same image, 0.5 for
    unrelated directions, never outside [0, 1], and higher always means more similar.
    ``distance`` is the Euclidean distance between the unit-length embeddings,
    ``sqrt(2 - 2 * cosine)``, in [0, 2]: the same order, reversed. With query expansion (on by
    default) results are ranked by the query blended with its best matches, so a score may be a
    little higher than the one ranked above it; it is always the query's own similarity.

    ``match`` says what the image is to the query, by the model's calibrated thresholds:
    ``"exact"`` (the same bytes), ``"copy"`` (an edited copy), ``"similar"`` (the same scene or
    a look-alike) or None. ``copies`` holds the hits folded into this one when a search
    collapses copies.
    """

    image_id: int
    uri: str
    score: float
    width: int | None = None
    height: int | None = None
    distance: float = 0.0
    match: str | None = None
    copies: tuple[SearchHit, ...] = ()

    @classmethod
    def from_cosine(cls, image_id: int, uri: str, cosine: float, width: int | None = None,
                    height: int | None = None) -> SearchHit:
        cosine = min(1.0, max(-1.0, cosine))
        return cls(image_id, uri, (1.0 + cosine) / 2.0, width, height,
                   math.sqrt(max(0.0, 2.0 - 2.0 * cosine)))

    @property
    def cosine(self) -> float:
        return 2.0 * self.score - 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"image_id": self.image_id, "uri": shown_uri(self.uri), "score": self.score,
                "width": self.width, "height": self.height, "distance": self.distance,
                "match": self.match, "copies": [c.to_dict() for c in self.copies]}


@dataclass(frozen=True)
class ImageDetails:
    """One indexed image as the API shows it: where it is, its size, and its metadata."""

    image_id: int
    uri: str
    status: str
    width: int | None
    height: int | None
    size: int | None
    content_hash: str | None
    added_at: float
    uploaded: bool
    metadata: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "uri": shown_uri(self.uri)}


@dataclass(frozen=True)
class FailedFile:
    """A file that could not be indexed, and why."""

    uri: str
    reason: str


@dataclass(frozen=True)
class IngestReport:
    """What one indexing run did."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    reused: int = 0
    removed: int = 0
    failed: tuple[FailedFile, ...] = field(default_factory=tuple)
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    #: What learning after the run did (`Collection.learn_if_due`), when it was due.
    learned: LearnReport | None = None

    @property
    def embedded(self) -> int:
        """Images that went through the model in this run (added or updated, not reused)."""
        return self.added + self.updated - self.reused

    @property
    def images_per_second(self) -> float:
        done = self.added + self.updated
        return done / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["failed"] = [{"uri": shown_uri(f.uri), "reason": f.reason} for f in self.failed]
        data["embedded"] = self.embedded
        data["images_per_second"] = round(self.images_per_second, 2)
        data["learned"] = self.learned.to_dict() if self.learned else None
        return data


@dataclass(frozen=True)
class CollectionInfo:
    """A summary of a collection: counts, model, index and sizes on disk."""

    path: str
    model: str
    dim: int
    index_spec: str
    index_kind: str
    images: int
    failed: int
    removed: int
    main_vectors: int
    delta_vectors: int
    tombstones: int
    bytes_on_disk: dict[str, int]
    created: str
    updated: str
    index_dim: int = 0  # the model's dim, or the PCA's when the collection is reduced
    pca: dict[str, Any] | None = None  # the manifest's projection (`lookalike reduce`, `learn`)
    learn: bool = True  # False after `lookalike learn --off`: index and compact do not learn
    store: str = "sqlite"  # or the PostgreSQL URI, without its password

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ReduceReport:
    """What `Collection.reduce` did: the index's dimension and size before and after.

    ``explained_variance`` is the share of the sample's variance the kept dimensions carry
    (None when the PCA was removed). Bytes count ``main.index`` plus ``delta.index``.
    """

    dim_before: int
    dim_after: int
    whiten: bool
    explained_variance: float | None
    trained_on: int
    index_bytes_before: int
    index_bytes_after: int
    vectors: int
    fit_seconds: float
    build_seconds: float

    @property
    def seconds(self) -> float:
        return self.fit_seconds + self.build_seconds

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seconds": round(self.seconds, 3)}


@dataclass(frozen=True)
class LearnReport:
    """What `Collection.learn` did: the copies it made, what it learnt from, and the rebuild.

    ``pairs`` images and their copies were learnt from (``unreadable`` more were drawn whose
    file could not be read again, or had changed since it was indexed); ``trained_on`` stored
    vectors gave the mean (and, below full dimension, the rotation). ``off``: learning was
    turned off (``--off``), and the learned projection removed if there was one (then
    ``vectors`` were indexed again; 0 when there was none).
    """

    pairs: int
    unreadable: int
    trained_on: int
    dim_before: int
    dim_after: int
    vectors: int
    copy_seconds: float
    fit_seconds: float
    build_seconds: float
    off: bool = False

    @property
    def seconds(self) -> float:
        return self.copy_seconds + self.fit_seconds + self.build_seconds

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seconds": round(self.seconds, 3)}
