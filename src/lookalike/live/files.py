"""The live index's files beside the store: their names, whether one changed, checking them
against the store, and cleaning up after killed writers."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CorruptCollectionError
from ..index import IndexSpec, VectorIndex, load_index, parse_spec
from ..storage import Store

MAIN_INDEX, DELTA_INDEX = "main.index", "delta.index"
FLAT = parse_spec("Flat")


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify`` found: counts, and every disagreement between the indexes and the store."""

    active_images: int
    main_vectors: int
    delta_vectors: int
    pending_vectors: int  # committed after the last index save; added on open (normal)
    tombstones: int
    problems: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.problems


def file_stamp(path: Path) -> tuple[int, int, int] | None:
    """(inode, mtime, size): changes whenever the file is replaced or rewritten."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def verify(folder: Path, spec: IndexSpec, dim: int, store: Store) -> VerifyReport:
    """Compare the index files in ``folder`` with the store, without changing anything."""
    problems: list[str] = []
    active: set[int] = set()
    for ids, vectors in store.iter_vectors():  # one pass: the ids, and the norms checked
        active.update(ids.tolist())
        norms = np.linalg.norm(vectors, axis=1)
        bad = ids[np.abs(norms - 1.0) > 1e-3]
        if len(bad):
            problems.append(f"{len(bad)} stored vectors are not unit length "
                            f"(e.g. {bad[:5].tolist()})")
    stored = {int(i) for ids, _ in store.iter_vectors(active_only=False) for i in ids}
    main = _read_file(folder / MAIN_INDEX, spec, dim, problems)
    delta = _read_file(folder / DELTA_INDEX, FLAT, dim, problems)
    main_ids = main.ids() if main else np.zeros(0, np.int64)
    delta_ids = delta.ids() if delta else np.zeros(0, np.int64)
    main_max = int(main_ids.max()) if len(main_ids) else 0
    for name, ids in (("main.index", main_ids), ("delta.index", delta_ids)):
        if len(ids) != len(np.unique(ids)):
            problems.append(f"{name} holds {len(ids) - len(np.unique(ids))} duplicate ids")
        unknown = set(ids.tolist()) - stored
        if unknown:
            problems.append(f"{name} holds {len(unknown)} ids with no stored vector "
                            f"(e.g. {sorted(unknown)[:5]})")
    missing = {i for i in active if i <= main_max} - set(main_ids.tolist())
    if missing:
        problems.append(f"{len(missing)} active images are missing from main.index "
                        f"(e.g. {sorted(missing)[:5]})")
    on_disk = set(main_ids.tolist()) | set(delta_ids.tolist())
    pending = {i for i in active if i > main_max} - on_disk
    return VerifyReport(
        active_images=len(active), main_vectors=len(main_ids), delta_vectors=len(delta_ids),
        pending_vectors=len(pending), tombstones=len(stored - active),
        problems=tuple(problems),
    )


def _read_file(path: Path, spec: IndexSpec, dim: int, problems: list[str]) -> VectorIndex | None:
    if not path.is_file():
        return None
    try:
        index = load_index(path, spec)
    except CorruptCollectionError as exc:
        problems.append(str(exc))
        return None
    if index.ntotal and index.dim != dim:
        problems.append(f"{path.name} has dimension {index.dim}, the collection {dim}")
    return index


def remove_stale_temporaries(folder: Path) -> None:
    """Delete temporary files that killed writers left behind (``.<name>.<pid>[.<n>].tmp``),
    never one whose writer is still running."""
    for tmp in folder.glob(".*.tmp"):
        parts = tmp.name.split(".")
        pid = next((int(p) for p in parts if p.isdigit()), None)
        if pid is None or _alive(pid):
            continue
        try:
            if tmp.is_dir():  # a ScaNN index is serialised into a folder before it is packed
                shutil.rmtree(tmp)
            else:
                os.unlink(tmp)
        except FileNotFoundError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
