"""Sharded backfill for batch schedulers: N jobs embed a stable share each, one import loads them.

AWS Batch array jobs, Kubernetes indexed jobs and Slurm arrays run N copies of one command that
differ by an index. ``lookalike embed PATHS --shard I/N --out DIR`` lists PATHS as `index` does,
keeps the files whose :func:`shard_of` is I, and writes their vectors (or why they failed) to one
Parquet file (:mod:`.shard_files`), decoded and embedded exactly as the local engine does: the
same decoding in worker processes, the same model, the same batches through it. A file's shard
depends on its URI alone (64 bits of BLAKE2b, mod N), never on the listing's order or on other
files, so every job agrees which files are its own without talking to the others; the images must
be at the same paths (or URIs) on every machine, as for `--engine ray`. Every job lists all of
PATHS: N listings of an ``s3://`` prefix cost N times its LIST requests.

:mod:`.shard_import` loads the files into a collection.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
from collections.abc import Generator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from .. import settings
from ..embedders import Embedder, embedding_fingerprint
from ..errors import UsageError
from ..imaging import Decoded
from ..types import FailedFile, Preprocess, shown_uri
from .local import FileEntry, decoded_chunks, walk
from .shard_files import require_pyarrow, target_of, written

#: Where each scheduler puts a copy's index (0-based; Slurm's counts from SLURM_ARRAY_TASK_MIN).
INDEX_VARIABLES = ("AWS_BATCH_JOB_ARRAY_INDEX", "JOB_COMPLETION_INDEX", "SLURM_ARRAY_TASK_ID")


def shard_of(uri: str, count: int) -> int:
    """The shard (0 to ``count`` - 1) that the file or object ``uri`` belongs to."""
    digest = hashlib.blake2b(uri.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based: ``3/16`` is the fourth of sixteen)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1:
            raise UsageError(f"Shard {self.index}/{self.count}: the number of shards must be at "
                             "least 1, e.g. --shard 3/16.")
        if not 0 <= self.index < self.count:
            hint = " (shards count from 0)" if self.index == self.count else ""
            raise UsageError(f"Shard {self.index}/{self.count} does not exist{hint}: the index "
                             f"goes from 0 to the number of shards - 1, e.g. --shard 3/16.")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``I/N`` as given to ``--shard``."""
        index, _, count = text.partition("/")
        if not (index.strip().isdigit() and count.strip().isdigit()):
            raise UsageError(f"--shard takes INDEX/COUNT, e.g. 3/16 (the fourth of 16 shards), "
                             f"not {text!r}.")
        return cls(int(index), int(count))

    @classmethod
    def from_env(cls, count: int | None, environ: Mapping[str, str] | None = None) -> Shard:
        """This copy's shard: its index from the scheduler's variable (:data:`INDEX_VARIABLES`),
        the number of shards from ``count`` (``--shards``)."""
        environ = os.environ if environ is None else environ
        name = next((n for n in INDEX_VARIABLES if environ.get(n, "").strip()), None)
        if name is None:
            raise UsageError(f"Which shard? Give --shard I/N, or --shards N in an array job "
                             f"(which sets {', '.join(INDEX_VARIABLES[:-1])} or "
                             f"{INDEX_VARIABLES[-1]}).")
        value = environ[name].strip()
        if name == "SLURM_ARRAY_TASK_ID":  # --array=1-16 numbers the tasks from 1
            base = environ.get("SLURM_ARRAY_TASK_MIN", "0").strip()
            value = str(int(value) - int(base)) if value.isdigit() and base.isdigit() else value
        if not value.isdigit():
            raise UsageError(f"{name}={environ[name]!r} is not a shard index (0, 1, 2, ...).")
        if count is None:
            raise UsageError(f"The shard index comes from {name}={value}; give the number of "
                             "shards (the array's size) with --shards N.")
        if int(value) >= count:
            raise UsageError(f"{name}={environ[name]} gives shard {value}, but --shards {count} "
                             f"has shards 0 to {count - 1}: give --shards the array's size.")
        return cls(int(value), count)

    @property
    def file_name(self) -> str:
        """The shard file's name, e.g. ``part-00003-of-00016.parquet``."""
        return f"part-{self.index:05d}-of-{self.count:05d}.parquet"

    def owns(self, uri: str) -> bool:
        return shard_of(uri, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True)
class ShardReport:
    """What one `lookalike embed` run did: ``images`` rows written to ``out`` (``failed``
    among them) of the ``listed`` files under its paths."""

    shard: str
    out: str
    listed: int
    images: int
    failed: tuple[FailedFile, ...] = ()
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["out"] = shown_uri(self.out)
        data["failed"] = [{"uri": shown_uri(f.uri), "reason": f.reason} for f in self.failed]
        data["images_per_second"] = round(self.images_per_second, 2)
        return data


def load_embedder(model: str | None = None, *, weights: str | None = None,
                  runtime: str | None = None, device: str | None = None,
                  threads: int | None = None, precision: str | None = None) -> Embedder:
    """The model a new collection would get (``model``, else the ``model`` setting), loaded as a
    collection loads it, so its vectors are the ones `lookalike index` stores."""
    return Embedder.load(
        settings.resolve("model", model),
        weights=os.path.realpath(os.path.expanduser(weights)) if weights else None,
        runtime=settings.resolve("runtime", runtime), device=settings.resolve("device", device),
        threads=settings.resolve("threads", threads),
        precision=settings.resolve("precision", precision),
        cache_dir=settings.resolve("cache_dir"),
    )


def embed_shard(paths: Sequence[str | os.PathLike[str]], shard: Shard, out: str,
                embedder: Embedder, *, batch_size: int | None = None,
                workers: int | None = None, show_progress: bool | None = None) -> ShardReport:
    """Embed ``shard``'s share of the image files under ``paths`` into its file in ``out`` (a
    folder or an ``s3://`` prefix), named :attr:`Shard.file_name`. A killed run leaves no file of
    that name; running the shard again starts it over."""
    from tqdm import tqdm

    require_pyarrow()
    started = time.perf_counter()
    files, roots, missing = walk(paths)
    if missing:
        raise UsageError(f"Path {missing[0]} does not exist.")
    mine = [e for e in files if shard.owns(e.uri)]
    stages = {"walk": time.perf_counter() - started, "decode": 0.0, "decode_wait": 0.0,
              "embed": 0.0, "write": 0.0}
    metadata = {"model": embedder.name, "dim": embedder.dim, "weights": embedder.weights,
                "fingerprint": embedding_fingerprint(embedder.spec, embedder.weights),
                "shard": str(shard), "paths": roots,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    target = target_of(out, shard.file_name)
    failed: list[FailedFile] = []
    disable = None if show_progress is None else not show_progress
    batches = _decoded(mine, embedder.preprocess, settings.resolve("batch_size", batch_size),
                       settings.resolve("workers", workers), stages)
    with written(target, embedder.dim, metadata) as writer, contextlib.closing(batches), tqdm(
        total=len(mine), unit="img", desc=f"embedding {shard}", disable=disable,
        file=sys.stderr, smoothing=0.1,
    ) as bar:
        for entries, decoded in batches:
            start = time.perf_counter()
            good = [(d.uri, d.pixels) for d in decoded if d.pixels is not None]
            vectors = embedder.embed_pixels(np.stack([p for _, p in good])) if good else None
            by_uri = {uri: vectors[i] for i, (uri, _) in enumerate(good) if vectors is not None}
            embedded = time.perf_counter()
            for entry, item in zip(entries, decoded, strict=True):
                writer.add(item.uri, (entry.size, entry.mtime_ns, entry.etag), item.content_hash,
                           (item.width, item.height), by_uri.get(item.uri), item.error)
                if item.error:
                    failed.append(FailedFile(item.uri, item.error))
            stages["embed"] += embedded - start
            stages["write"] += time.perf_counter() - embedded
            bar.update(len(decoded))
        start = time.perf_counter()
    stages["write"] += time.perf_counter() - start  # the last row group, and the rename/upload
    return ShardReport(str(shard), target, len(files), len(mine), tuple(failed),
                       time.perf_counter() - started,
                       {k: round(v, 3) for k, v in stages.items()})


def _decoded(files: list[FileEntry], preprocess: Preprocess, batch_size: int, workers: int,
             stages: dict[str, float]
             ) -> Generator[tuple[list[FileEntry], list[Decoded]], None, None]:
    """(entries, decoded) batches in listing order, decoded as the local engine decodes."""
    limits = (settings.resolve("max_pixels"), settings.resolve("max_file_bytes"))
    size = max(1, batch_size)
    chunks = [files[i:i + size] for i in range(0, len(files), size)]
    decoded = decoded_chunks([[e.uri for e in chunk] for chunk in chunks], preprocess, *limits,
                             workers, stages)
    with contextlib.closing(decoded):
        yield from zip(chunks, decoded, strict=True)
