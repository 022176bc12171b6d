"""The collection manifest: which model, weights, index spec, projection and store built a
collection. Read and checked in one place (:func:`load_manifest`); a typed, frozen value after."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..embedders import embedding_fingerprint, get_model_spec
from ..errors import CollectionNotFoundError, CorruptCollectionError, ModelMismatchError
from ..index import IndexSpec, parse_spec

# 2: PCA, PostgreSQL stores and search defaults. A lookalike that reads only format 1 would
# ignore them and search garbage, so every manifest this version writes says 2; it reads 1 too.
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
MANIFEST = "manifest.json"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    dim: int
    weights: str | None
    fingerprint: str | None
    preprocess: dict[str, Any]


@dataclass(frozen=True)
class PcaEntry:
    """The projection the index holds, saved in ``file`` beside the manifest: a PCA `lookalike
    reduce` learnt (``kind`` "pca"), or a whitening `lookalike learn` learnt from ``pairs``
    images and copies of them (``kind`` "learned", ``explained_variance`` None). Kept under the
    manifest's "pca" key whatever its kind: a lookalike that knows only PCA then refuses a learned
    file loudly, where under a new key it would search unprojected queries in silence."""

    dim: int
    whiten: bool
    file: str
    trained_on: int
    seed: int
    explained_variance: float | None
    kind: str = "pca"
    pairs: int = 0

    @property
    def learned(self) -> bool:
        return self.kind == "learned"


@dataclass(frozen=True)
class Manifest:
    model: ModelEntry
    index_spec: str
    created: str
    updated: str
    search: dict[str, int] = field(default_factory=dict)  # per-call knobs (`bench --apply`)
    store: str | None = None  # a PostgreSQL URI without its password; None: SQLite
    pca: PcaEntry | None = None
    learn: bool = True  # False after `lookalike learn --off`: index and compact then never learn

    @property
    def spec(self) -> IndexSpec:
        return parse_spec(self.index_spec)

    @property
    def index_dim(self) -> int:
        """The dimension the index holds: the PCA's after `reduce`, else the model's."""
        return self.pca.dim if self.pca else self.model.dim

    def replace(self, **changes: Any) -> Manifest:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "model": dataclasses.asdict(self.model),
            "index": {"spec": self.index_spec, **({"search": self.search} if self.search else {})},
            "created": self.created,
            "updated": self.updated,
        }
        if self.store:
            data["store"] = self.store
        if not self.learn:
            data["learn"] = False
        if self.pca:
            data["pca"] = dataclasses.asdict(self.pca)
        return data

    @classmethod
    def from_dict(cls, data: Any, where: Path) -> Manifest:
        """Check every field a manifest must have; CorruptCollectionError naming the first
        that is wrong."""
        if not isinstance(data, dict):
            raise CorruptCollectionError(f"{where} is not a lookalike manifest (not an object); "
                                         "restore it from a backup.")
        version = data.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise CorruptCollectionError(
                f"{where} is damaged: its format_version is {version!r}, not a version number; "
                "restore it from a backup.")
        if version not in READABLE_FORMATS:
            raise CorruptCollectionError(
                f"{where.parent} has collection format {data.get('format_version')}, this "
                f"lookalike reads formats {READABLE_FORMATS}; upgrade lookalike or rebuild the "
                "collection."
            )
        try:
            model, index, pca = data["model"], data["index"], data.get("pca")
            return cls(
                model=ModelEntry(str(model["name"]), int(model["dim"]), model.get("weights"),
                                 model.get("fingerprint"), dict(model.get("preprocess") or {})),
                index_spec=str(index["spec"]),
                search={str(k): int(v) for k, v in (index.get("search") or {}).items()},
                created=str(data["created"]), updated=str(data["updated"]),
                store=data.get("store"),
                pca=_projection_entry(pca) if pca else None,
                learn=bool(data.get("learn", True)),
            )
        except KeyError as exc:
            raise CorruptCollectionError(
                f"{where} is damaged: it has no {exc.args[0]!r} field; restore it from a backup."
            ) from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise CorruptCollectionError(
                f"{where} is damaged ({type(exc).__name__}: {exc}); restore it from a backup."
            ) from None


def _projection_entry(data: dict[str, Any]) -> PcaEntry:
    explained = data["explained_variance"]
    return PcaEntry(int(data["dim"]), bool(data["whiten"]), str(data["file"]),
                    int(data["trained_on"]), int(data["seed"]),
                    None if explained is None else float(explained),
                    str(data.get("kind", "pca")), int(data.get("pairs", 0)))


def new_manifest(model: str, weights: str | None, index: IndexSpec) -> Manifest:
    spec = get_model_spec(model)
    return Manifest(
        model=ModelEntry(spec.name, spec.dim, weights, embedding_fingerprint(spec, weights),
                         spec.preprocess.to_dict()),
        index_spec=index.text, created=now(), updated=now(),
    )


def load_manifest(folder: Path) -> Manifest:
    """The manifest of the collection in ``folder``, checked."""
    path = folder / MANIFEST
    if folder.exists() and not folder.is_dir():
        raise CollectionNotFoundError(f"{folder} is a file, not a collection folder; pass the "
                                      "collection's folder to --collection.")
    if not path.is_file():
        raise CollectionNotFoundError(
            f"No collection at {folder}. Create one with `lookalike index PATH "
            f"--collection {folder}`, or pass the right --collection."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CorruptCollectionError(f"Cannot read {path}: {exc.strerror or exc}.") from None
    except ValueError as exc:
        raise CorruptCollectionError(f"{path} is damaged (not JSON: {exc}); restore it from a "
                                     "backup.") from None
    return Manifest.from_dict(data, path)


def read_manifest(folder: Path, *, model: str | None, weights: str | None) -> Manifest:
    """The manifest of the collection in ``folder``, checked against the model asked for."""
    manifest = load_manifest(folder)
    built_with = manifest.model.name
    if model and model != built_with:
        raise ModelMismatchError(
            f"{folder} was built with model {built_with!r}, not {model!r}. Use "
            f"--model {built_with}, or index into a new --collection to use {model}."
        )
    spec = get_model_spec(built_with)
    if manifest.model.dim != spec.dim:
        raise CorruptCollectionError(
            f"{folder / MANIFEST} is damaged: it says {built_with} makes "
            f"{manifest.model.dim}-d vectors, but {built_with} makes {spec.dim}-d ones. Restore "
            f"it from a backup (or set model.dim back to {spec.dim}).")
    found = embedding_fingerprint(spec, weights or manifest.model.weights)
    if found != manifest.model.fingerprint:
        raise ModelMismatchError(
            f"{folder} was built with {built_with} as {manifest.model.fingerprint}, "
            f"but this lookalike and these weights compute {found}: the vectors would not be "
            "comparable. Pass the weights it was built with, or index into a new --collection."
        )
    return manifest


def write_manifest(folder: Path, manifest: Manifest) -> None:
    """Save ``manifest`` (in this version's format) atomically."""
    write_json(folder / MANIFEST, manifest.to_dict())


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` atomically (temporary file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(data, indent=2) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
