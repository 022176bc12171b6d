"""The live index's files beside the store: their names, the generation each was built at,
checking them against the store, and cleaning up after killed writers.

Every index file ends with a footer saying which store generation it holds: a main index holds
every image active at its generation (``base``); a delta holds, on top of the main index of
generation ``base``, every image that became active up to its own generation. A reader that
loads them catches up from there. Files without a footer (written before footers existed) hold
an unknown generation: a reader then catches up from the beginning, skipping what they hold.
"""

from __future__ import annotations

import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CorruptCollectionError, DiskWriteError
from ..index import IndexSpec, VectorIndex, load_index, parse_spec
from ..storage import Store
from .contract import VerifyReport

MAIN_INDEX, DELTA_INDEX = "main.index", "delta.index"
FLAT = parse_spec("Flat")
_FOOTER = struct.Struct("<16sqq")  # magic, generation, base generation
_MAGIC = b"lookalike.gen.v1"


@dataclass(frozen=True)
class Generations:
    """The store generations an index file holds (see the module docstring)."""

    generation: int
    base: int


def save_index(index: VectorIndex, path: Path, held: Generations) -> None:
    """Save ``index`` with its footer, atomically (temporary file + rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.gen.tmp")
    try:
        index.save(tmp)  # the engine's own atomic write, to our temporary name
        with open(tmp, "ab") as fh:
            fh.write(_FOOTER.pack(_MAGIC, held.generation, held.base))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # Faiss reports a failed write as RuntimeError
        tmp.unlink(missing_ok=True)
        raise DiskWriteError.writing(path, exc) from None


def read_generations(path: Path) -> Generations | None:
    """The footer of an index file; None without one (or without the file)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() < _FOOTER.size:
                return None
            fh.seek(-_FOOTER.size, os.SEEK_END)
            magic, generation, base = _FOOTER.unpack(fh.read(_FOOTER.size))
    except FileNotFoundError:
        return None
    return Generations(generation, base) if magic == _MAGIC else None


def file_stamp(path: Path) -> tuple[int, int, int] | None:
    """(inode, mtime, size): changes whenever the file is replaced or rewritten."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def check_vectors(store: Store, problems: list[str]) -> set[int]:
    """The active ids; every stored vector that is not finite and unit length is a problem."""
    active: set[int] = set()
    bad: list[int] = []
    for ids, vectors in store.iter_vectors():
        active.update(ids.tolist())
        norms = np.linalg.norm(vectors, axis=1)
        bad += ids[~(np.abs(norms - 1.0) <= 1e-3)].tolist()  # a NaN norm fails too
    if bad:
        problems.append(f"{len(bad)} stored vectors are not finite unit vectors (e.g. "
                        f"{bad[:5]}); `lookalike rebuild` cannot restore them: re-index those "
                        "images")
    return active


def verify(folder: Path, spec: IndexSpec, dim: int, store: Store) -> VerifyReport:
    """Compare the index files in ``folder`` with the store, without changing anything: every
    active image must be in the main index (active by its generation), in the delta (active by
    the delta's), or pending (committed later: added on open); no id may be held twice."""
    problems = list(store.integrity_problems())
    active = check_vectors(store, problems)
    stored = {int(i) for ids, _ in store.iter_vectors(active_only=False) for i in ids}
    main = _read_file(folder / MAIN_INDEX, spec, dim, problems)
    main_ids = main.ids() if main else np.zeros(0, np.int64)
    main_held = read_generations(folder / MAIN_INDEX) if main else Generations(-1, -1)
    # A delta cached on top of another main index is stale: the next open ignores it.
    delta_held = read_generations(folder / DELTA_INDEX)
    current = main_held is not None and delta_held is not None and \
        delta_held.base == main_held.generation
    delta = _read_file(folder / DELTA_INDEX, FLAT, dim, problems) if current else None
    delta_ids = delta.ids() if delta else np.zeros(0, np.int64)
    for name, ids in (("main.index", main_ids), ("delta.index", delta_ids)):
        if len(ids) != len(np.unique(ids)):
            problems.append(f"{name} holds {len(ids) - len(np.unique(ids))} duplicate ids")
        unknown = set(ids.tolist()) - stored
        if unknown:
            problems.append(f"{name} holds {len(unknown)} ids with no stored vector "
                            f"(e.g. {sorted(unknown)[:5]})")
    both = set(main_ids.tolist()) & set(delta_ids.tolist())
    if both:
        problems.append(f"{len(both)} ids are in both main.index and delta.index "
                        f"(e.g. {sorted(both)[:5]})")
    covered = set(main_ids.tolist())
    if main_held is None:  # a file from before footers: it held every id up to its largest
        main_max = int(main_ids.max()) if len(main_ids) else 0
        _expect("main.index", {i for i in active if i <= main_max}, covered, problems)
    else:
        _expect("main.index", _active_by(store, main_held.generation), covered, problems)
        if delta_held is not None and current:
            expected = set(store.changes(main_held.generation, delta_held.generation,
                                         vectors=False).ids.tolist())
            _expect("delta.index", expected, set(delta_ids.tolist()), problems)
            covered |= set(delta_ids.tolist())
    pending = active - covered
    return VerifyReport(
        active_images=len(active), main_vectors=len(main_ids), delta_vectors=len(delta_ids),
        pending_vectors=len(pending), tombstones=len(stored - active),
        problems=tuple(problems),
    )


def _active_by(store: Store, generation: int) -> set[int]:
    return {int(i) for ids, _ in store.iter_vectors(upto_generation=generation) for i in ids}


def _expect(name: str, expected: set[int], held: set[int], problems: list[str]) -> None:
    missing = expected - held
    if missing:
        problems.append(f"{len(missing)} active images are missing from {name} "
                        f"(e.g. {sorted(missing)[:5]}); run `lookalike rebuild`")


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
