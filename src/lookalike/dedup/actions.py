"""Acting on duplicate groups: move the copies not kept to a quarantine folder, replace exact
copies by hard links to the kept one, or drop them from the collection; and undoing it.

Nothing happens without ``apply``: a plan lists each step, or why it is skipped. A step is
skipped, never half done, when the copy is only ``similar`` (never acted on), when it or the kept
copy is gone or changed since it was indexed, when both are one file (the same device and inode:
one file listed twice, through a link or a second mount), when it was uploaded into the
collection, or when it is an object in a store. Before the first change an undo manifest is
written; :func:`undo` reads the files' state, not what the manifest claims was done, so it also
repairs a run that was killed midway.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .. import objects
from ..collection import Collection
from ..collection.files import is_upload, open_indexed
from ..errors import ImageFileError, UsageError
from ..storage import ImageRecord
from ..types import shown_uri
from .groups import DuplicateGroup

ACTIONS = ("quarantine", "hardlink", "remove")
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class Step:
    """One copy a plan acts on (or skips, saying why)."""

    image_id: int
    uri: str
    keep_id: int
    keep_uri: str
    tier: str
    target: str | None = None  # quarantine: where the file goes
    skipped: str | None = None
    done: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "uri": shown_uri(self.uri), "keep_uri": shown_uri(self.keep_uri)}


@dataclass(frozen=True)
class ActionReport:
    action: str
    applied: bool
    steps: list[Step]
    manifest: Path | None = None

    @property
    def acted(self) -> list[Step]:
        return [s for s in self.steps if s.done]

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "applied": self.applied,
                "manifest": str(self.manifest) if self.manifest else None,
                "steps": [s.to_dict() for s in self.steps]}


def act(collection: Collection, groups: list[DuplicateGroup], action: str, *,
        to: str | os.PathLike[str] | None = None, apply: bool = False) -> ActionReport:
    """Plan ``action`` on every group's copies but the kept one, and carry it out if ``apply``
    (module docstring). ``to``: the quarantine folder (action ``quarantine`` only)."""
    if action not in ACTIONS:
        raise UsageError(f"Unknown action {action!r}: use one of {', '.join(ACTIONS)}.")
    if (action == "quarantine") != (to is not None):
        raise UsageError("--to DIR goes with --action quarantine (where the copies are moved), "
                         "and only with it.")
    folder = Path(to).expanduser().absolute() if to is not None else None
    if folder is not None:
        _check_quarantine(collection, folder)
    steps = _plan(collection, groups, action)
    if folder is not None:
        steps = _targets(steps, folder)
    if not apply or not any(s.skipped is None for s in steps):
        return ActionReport(action, False, steps)
    manifest = _manifest_path(folder or collection.path / "undo", action)
    entries = [_entry(step) for step in steps if step.skipped is None]
    _write_manifest(manifest, collection, action, entries)  # before the first change
    done = [_carry_out(step, action) for step in steps]
    removed = [s.image_id for s in done if s.done and action in ("quarantine", "remove")]
    if removed:
        collection.remove(removed, wait=30.0)
    finished = {s.image_id for s in done if s.done}
    _write_manifest(manifest, collection, action,
                    [{**e, "done": e["id"] in finished} for e in entries])
    return ActionReport(action, True, done, manifest)


def _check_quarantine(collection: Collection, folder: Path) -> None:
    """UsageError for a quarantine folder inside the collection, or inside a folder that holds
    indexed files: indexing that folder again would add the quarantined copies back."""
    if folder == collection.path or collection.path in folder.parents:
        raise UsageError(f"The quarantine folder {folder} is inside the collection: pick "
                         "another folder.")
    indexed = {os.path.dirname(uri) for uri in collection.store.file_states()
               if not objects.is_object_uri(uri)}
    for parent in (folder, *folder.parents):
        if str(parent) in indexed:
            raise UsageError(f"The quarantine folder {folder} is inside {parent}, which holds "
                             "indexed images: indexing it again would add the quarantined "
                             "copies back. Pick a folder outside the indexed ones.")


def _plan(collection: Collection, groups: list[DuplicateGroup], action: str) -> list[Step]:
    steps = []
    for group in groups:
        ids = group.ids
        records = collection.store.get(ids)
        keep = records.get(group.keep.image_id)
        keep_problem = _problem(collection, keep, action, kept=True)
        for member in group.members:
            step = Step(member.image_id, member.uri, group.keep.image_id, group.keep.uri,
                        member.tier or "exact")
            record = records.get(member.image_id)
            reason = (_tier_problem(member.tier, member.how, action) or keep_problem
                      or _problem(collection, record, action)
                      or _same_file(member.uri, group.keep.uri))
            steps.append(replace(step, skipped=reason))
    return steps


def _tier_problem(tier: str | None, how: str, action: str) -> str | None:
    if tier == "similar":
        return "only similar: never acted on"
    if action == "hardlink" and how != "same bytes":
        return "not the same bytes: only identical files are hard-linked"
    return None


def _problem(collection: Collection, record: ImageRecord | None, action: str,
             kept: bool = False) -> str | None:
    """Why a step must not touch this image's file (or rely on it, ``kept``), if it must not."""
    whose = "the kept copy " if kept else ""
    if record is None or record.status != "active":
        return f"{whose}is no longer indexed"
    if objects.is_object_uri(record.uri):
        return None if action == "remove" or kept else "an object in a store: files only"
    if is_upload(collection.path, record.uri) and not kept:
        return "uploaded into the collection: use `lookalike remove`"
    try:
        open_indexed(record).file.close()  # the size, time and content hash it was indexed with
    except ImageFileError as exc:
        return (f"{whose}changed since it was indexed" if exc.reason == "changed"
                else f"{whose}file is gone")
    return None


def _same_file(a: str, b: str) -> str | None:
    if objects.is_object_uri(a) or objects.is_object_uri(b):
        return None
    try:
        if os.path.samefile(a, b):
            return "the same file as the kept copy (same device and inode)"
    except OSError:
        return "file is gone"
    return None


def _targets(steps: list[Step], folder: Path) -> list[Step]:
    """Each file's place in the quarantine: its path below the deepest folder all the moved
    files share, so relative paths are kept and no two files collide."""
    moving = [s for s in steps if s.skipped is None]
    if not moving:
        return steps
    root = Path(os.path.commonpath([os.path.dirname(s.uri) for s in moving]))
    out = []
    for step in steps:
        if step.skipped is None:
            target = folder / Path(step.uri).relative_to(root)
            if target.exists():
                step = replace(step, skipped=f"{target} already exists")
            step = replace(step, target=str(target))
        out.append(step)
    return out


def _carry_out(step: Step, action: str) -> Step:
    if step.skipped is not None:
        return step
    try:
        if action == "quarantine" and step.target is not None:
            Path(step.target).parent.mkdir(parents=True, exist_ok=True)
            if os.path.lexists(step.target):
                return replace(step, skipped=f"{step.target} already exists")
            shutil.move(step.uri, step.target)
        elif action == "hardlink":
            _link_in_place(step.keep_uri, step.uri)
    except OSError as exc:
        return replace(step, skipped=f"failed: {exc.strerror or exc}")
    return replace(step, done=True)


def _link_in_place(keep: str, path: str) -> None:
    """Make ``path`` a hard link to ``keep``: the link is made beside it and renamed over it,
    so ``path`` always holds the image."""
    if os.stat(keep).st_dev != os.stat(path).st_dev:
        raise OSError(0, "on another file system than the kept copy")
    temporary = f"{path}.lookalike-link"
    os.link(keep, temporary)
    os.replace(temporary, path)


def _manifest_path(folder: Path, action: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = folder / f"lookalike-undo-{action}-{stamp}.json"
    n = 1
    while path.exists():
        n += 1
        path = folder / f"lookalike-undo-{action}-{stamp}-{n}.json"
    return path


def _entry(step: Step) -> dict[str, Any]:
    """What undo needs of a step, read before it is carried out: a hard link takes the kept
    copy's mode and time, which undo gives back."""
    st = None if objects.is_object_uri(step.uri) else os.stat(step.uri)
    return {"id": step.image_id, "path": step.uri, "to": step.target, "keep": step.keep_uri,
            "done": False, "mode": st.st_mode & 0o7777 if st else None,
            "mtime_ns": st.st_mtime_ns if st else None}


def _write_manifest(path: Path, collection: Collection, action: str,
                    entries: list[dict[str, Any]]) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"version": MANIFEST_VERSION, "action": action,
                                     "collection": str(collection.path), "entries": entries},
                                    indent=1))
    os.replace(temporary, path)


@dataclass(frozen=True)
class UndoReport:
    restored: list[str]
    skipped: list[tuple[str, str]]  # (path, why)


def read_manifest(manifest: str | os.PathLike[str]) -> dict[str, Any]:
    """An undo manifest, checked: UsageError for anything :func:`act` did not write."""
    path = Path(manifest).expanduser()
    not_one = UsageError(f"{path} is not a lookalike undo manifest (the JSON file `dedup "
                         "--apply` wrote); nothing was changed.")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        raise not_one from None
    if not (isinstance(data, dict) and isinstance(data.get("entries"), list)
            and isinstance(data.get("collection"), str)
            and all(isinstance(e, dict) and isinstance(e.get("path"), str)
                    and isinstance(e.get("to"), str | None) for e in data["entries"])):
        raise not_one
    if data.get("version") != MANIFEST_VERSION or data.get("action") not in ACTIONS:
        raise UsageError(f"{path} is an undo manifest this lookalike cannot read.")
    return data


def manifest_collection(manifest: str | os.PathLike[str]) -> str:
    """The collection whose action ``manifest`` records."""
    return str(read_manifest(manifest)["collection"])


def undo(collection: Collection, manifest: str | os.PathLike[str]) -> UndoReport:
    """Undo what the action of ``manifest`` did: quarantined files go back to their paths,
    hard links become files of their own again, and images dropped from the collection are
    indexed again (their vectors reused: nothing is embedded twice). Only files in the
    manifest's own folder (the quarantine) are moved back."""
    path = Path(manifest).expanduser().absolute()
    data = read_manifest(path)
    action, entries = data["action"], data["entries"]
    if os.path.abspath(data["collection"]) != str(collection.path):
        raise UsageError(f"{path} records an action on {data['collection']}, not on "
                         f"{collection.path}.")
    restored, skipped = [], []
    for entry in entries:
        to = entry.get("to")
        if action == "quarantine" and (to is None or path.parent not in Path(to).parents):
            skipped.append((entry["path"], f"{to} is not in the quarantine folder {path.parent}"))
            continue
        reason = _undo_one(action, entry)
        if reason is None:
            restored.append(entry["path"])
        else:
            skipped.append((entry["path"], reason))
    back = [p for p in restored if action in ("quarantine", "remove")]
    if back:
        collection.add(back, show_progress=False)
    return UndoReport(restored, skipped)


def _undo_one(action: str, entry: dict[str, Any]) -> str | None:
    source = entry["path"]
    if action == "remove":
        return None if os.path.isfile(source) else "file is gone"
    if action == "quarantine":
        if os.path.lexists(source):
            return "a file is in its place again: left as it is"
        if not os.path.isfile(entry["to"]):
            return f"not in the quarantine ({entry['to']})"
        Path(source).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(entry["to"], source)
        return None
    # hardlink: a file of its own again, with the same bytes
    if not os.path.isfile(source):
        return "file is gone"
    if os.stat(source).st_nlink < 2:
        return "not a hard link any more"
    temporary = f"{source}.lookalike-copy"
    shutil.copyfile(source, temporary)
    if entry.get("mode") is not None:
        os.chmod(temporary, entry["mode"])
    if entry.get("mtime_ns") is not None:
        os.utime(temporary, ns=(entry["mtime_ns"], entry["mtime_ns"]))
    os.replace(temporary, source)
    return None
