"""The collection manifest: which model, weights and index spec built a collection."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..embedders import embedding_fingerprint, get_model_spec
from ..errors import CollectionNotFoundError, CorruptCollectionError, ModelMismatchError
from ..index import IndexSpec

# 2: PCA, PostgreSQL stores and search defaults. A lookalike that reads only format 1 would
# ignore them and search garbage, so every manifest this version writes says 2; it reads 1 too.
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
MANIFEST = "manifest.json"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_manifest(model: str, weights: str | None, index: IndexSpec) -> dict[str, Any]:
    spec = get_model_spec(model)
    return {
        "format_version": FORMAT_VERSION,
        "model": {"name": spec.name, "dim": spec.dim, "weights": weights,
                  "fingerprint": embedding_fingerprint(spec, weights),
                  "preprocess": spec.preprocess.to_dict()},
        "index": {"spec": index.text},
        "created": now(),
        "updated": now(),
    }


def read_manifest(folder: Path, *, model: str | None, weights: str | None) -> dict[str, Any]:
    """The manifest of the collection in ``folder``, checked against the model asked for."""
    path = folder / MANIFEST
    if not path.is_file():
        raise CollectionNotFoundError(
            f"No collection at {folder}. Create one with `lookalike index PATH "
            f"--collection {folder}`, or pass the right --collection."
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CorruptCollectionError(f"Cannot read {path}: {exc}") from None
    if manifest.get("format_version") not in READABLE_FORMATS:
        raise CorruptCollectionError(
            f"{folder} has collection format {manifest.get('format_version')}, this lookalike "
            f"reads formats {READABLE_FORMATS}; upgrade lookalike or rebuild the collection."
        )
    built_with = manifest["model"]["name"]
    if model and model != built_with:
        raise ModelMismatchError(
            f"{folder} was built with model {built_with!r}, not {model!r}. Use "
            f"--model {built_with}, or index into a new --collection to use {model}."
        )
    found = embedding_fingerprint(get_model_spec(built_with),
                                  weights or manifest["model"].get("weights"))
    if found != manifest["model"].get("fingerprint"):
        raise ModelMismatchError(
            f"{folder} was built with {built_with} as {manifest['model'].get('fingerprint')}, "
            f"but this lookalike and these weights compute {found}: the vectors would not be "
            "comparable. Pass the weights it was built with, or index into a new --collection."
        )
    return manifest


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Save ``manifest`` (in this version's format) atomically."""
    manifest["format_version"] = FORMAT_VERSION
    write_json(folder / MANIFEST, manifest)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` atomically (temporary file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(data, indent=2) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
