"""Backfill on Spark: the files are decoded and embedded by Spark tasks, written here.

This process lists the files and skips the unchanged ones exactly as the local engine does
(:class:`~lookalike.ingest.Ingestor` does both), then hands the paths still to do to Spark, cut
into batches. A batch is one partition of a DataFrame of batch numbers (the paths travel once, as
a broadcast variable); ``mapInArrow`` runs it in one of Spark's Python workers, which reads,
decodes and embeds the files and returns one row per file: its content hash, pixel size and
vector (float32 bytes), or the reason it failed (Arrow rather than pandas: the vectors stay one
binary column, with no pandas round trip). Workers are reused from task to task, and each keeps
its model loaded (a module-level cache), so a model loads once per worker, not once per batch.
This process consumes the results as they come, from ``workers`` streams that each keep one or
two batches in flight (``toLocalIterator``), and writes them batch by batch, each batch one
transaction: an interrupted run loses only the batches in flight, and a rerun carries on. A file
that cannot be read or decoded comes back as a row with the reason and is recorded as a failure,
as locally; a task that fails outright stops the run with its reason (SparkJobError).

Without a master, a local Spark (``local[N]``) is started for the run and stopped after it; a
Spark session already active in this process (a notebook's) is used as it is and left running
(:mod:`~lookalike.ingest.spark_session`). On a cluster (``spark://HOST:7077``, ``yarn``,
``k8s://...``) the executors open the files at the paths this process listed, so the images must
be at the same path on every node (or in S3, with the credentials on every node), and lookalike
must be installed in the Python the executors run (``PYSPARK_PYTHON``), with any plugin whose
model the collection uses.

>>> col.index(["/shared/photos"], engine="spark", spark_master="spark://head:7077")
>>> col.index(["/shared/photos"], engine=SparkEngine(workers=8))
"""

from __future__ import annotations

import contextlib
import functools
import queue
import re
import threading
import time
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..embedders import Embedder
from ..errors import LookalikeError, SparkJobError, UsageError
from ..imaging import MAX_FILE_BYTES, Decoded, decode_file
from ..types import Preprocess
from .local import Batch
from .spark_session import no_pandas_warning, require_spark, session

#: What a task returns: one row per file (width, height and hash are 0 and "" for a failure).
_RESULT = ("batch long, uri string, hash string, width int, height int, error string, "
           "vector binary, decode_s double, embed_s double, load_s double")


@dataclass(frozen=True)
class SparkEngine:
    """Where and how a backfill runs on Spark.

    ``master`` is a cluster (``spark://HOST:7077``, ``yarn``, ``k8s://...``) or ``local[N]``;
    without one a local Spark is started for the run (``local[workers]``, default one slot per
    core) and stopped after it. ``workers`` is the number of batches embedded at once, each by a
    Spark task in a Python worker that keeps its model loaded (default: Spark's default
    parallelism, the cores of the local Spark or of the cluster). Each task's model gets
    ``spark.task.cpus`` threads (default 1).
    """

    master: str | None = None
    workers: int | None = None

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise UsageError(f"SparkEngine workers must be at least 1, got {self.workers}.")

    def source(self, embedder: Embedder, *, batch_size: int, max_pixels: int,
               max_bytes: int = MAX_FILE_BYTES, cache_dir: str | None = None) -> SparkSource:
        """A batch source for :class:`~lookalike.ingest.Ingestor` that embeds like ``embedder``."""
        return SparkSource(self, embedder, batch_size=batch_size, max_pixels=max_pixels,
                           max_bytes=max_bytes, cache_dir=cache_dir)


def engine_for(engine: str | SparkEngine, master: str | None, workers: int | None) -> SparkEngine:
    """The engine a name (or an engine) and the index call's options stand for."""
    if isinstance(engine, SparkEngine):
        return engine if engine.master or not master else replace(engine, master=master)
    if engine != "spark":
        raise UsageError(f"Unknown indexing engine {engine!r}; choose local, ray or spark.")
    if workers is not None and workers < 1:
        raise UsageError(f"--workers is the number of batches embedded at once with --engine "
                         f"spark: at least 1, got {workers}.")
    require_spark()  # fail before any work when the extra or Java is missing
    return SparkEngine(master=master, workers=workers)


class SparkSource:
    """Decodes and embeds on Spark; yields ``(decoded, vectors)`` batches for the Ingestor."""

    def __init__(self, engine: SparkEngine, embedder: Embedder, *, batch_size: int,
                 max_pixels: int, max_bytes: int = MAX_FILE_BYTES,
                 cache_dir: str | None = None) -> None:
        self.engine = engine
        self.batch_size = max(1, batch_size)
        self.max_pixels, self.max_bytes = max_pixels, max_bytes
        self.preprocess = embedder.preprocess
        runtime, precision = embedder.cpu_runtime
        # Pinned to what this process resolved, so every worker embeds as the local engine would.
        self._load = {"name": embedder.name, "weights": embedder.weights, "runtime": runtime,
                      "precision": precision, "cache_dir": cache_dir, "device": "cpu"}

    def batches(self, uris: list[str], stages: dict[str, float]) -> Generator[Batch, None, None]:
        require_spark()
        if not uris:  # nothing to do: no Spark to start
            return
        started = time.perf_counter()
        chunks = [uris[i:i + self.batch_size] for i in range(0, len(uris), self.batch_size)]
        with session(self.engine.master, self.engine.workers) as spark:
            sc = spark.sparkContext
            work = sc.broadcast(chunks)
            threads = int(sc.getConf().get("spark.task.cpus", "1"))
            embed = functools.partial(_embed_partitions, work=work, preprocess=self.preprocess,
                                      max_pixels=self.max_pixels, max_bytes=self.max_bytes,
                                      load={**self._load, "threads": threads})
            # One DataFrame per stream, of batch numbers s, s + streams, ...: one a partition.
            n, streams = len(chunks), min(self.engine.workers or sc.defaultParallelism, len(chunks))
            with no_pandas_warning():
                frames = [spark.range(s, n, streams, numPartitions=len(range(s, n, streams)))
                          .mapInArrow(embed, _RESULT) for s in range(streams)]
            stages["spark_start"] = time.perf_counter() - started
            try:
                for rows in _consume(spark, frames, [len(c) for c in chunks], stages):
                    stages.setdefault("spark_first_batch", time.perf_counter() - started)
                    yield self._unpack(rows, stages)
            finally:
                with contextlib.suppress(Exception):  # a JVM already gone: keep the real error
                    work.destroy()

    def _unpack(self, rows: list[Any], stages: dict[str, float]) -> Batch:
        decoded, vectors = [], {}
        for row in rows:
            # No file fields (format, EXIF) travel back: the store derives format from the name.
            decoded.append(Decoded(row.uri, None, row.width, row.height, row.hash, row.error))
            if row.vector is not None:
                vectors[row.uri] = np.frombuffer(row.vector, "<f4").astype(np.float32)
            stages["decode"] += row.decode_s
            stages["embed"] += row.embed_s
            if row.load_s:  # this row's worker loaded the model first
                stages["model_load"] = stages.get("model_load", 0.0) + row.load_s
        return decoded, vectors


def _consume(spark: Any, frames: list[Any], sizes: list[int],
             stages: dict[str, float]) -> Iterator[list[Any]]:
    """The rows of every batch, a batch at a time, in the order they complete. Closing the
    iterator (or an error) cancels the jobs still running."""
    group = f"lookalike-{uuid.uuid4().hex}"
    results: queue.SimpleQueue[list[Any] | BaseException | None] = queue.SimpleQueue()
    threads = [threading.Thread(target=_stream, args=(spark, frame, sizes, group, results),
                                daemon=True) for frame in frames]
    for thread in threads:
        thread.start()
    try:
        running = len(threads)
        while running:
            wait_start = time.perf_counter()
            item = results.get()
            stages["decode_wait"] += time.perf_counter() - wait_start
            if item is None:
                running -= 1
            elif isinstance(item, LookalikeError | KeyboardInterrupt):
                raise item
            elif isinstance(item, BaseException):
                raise _job_error(item) from item
            else:
                yield item
    finally:
        spark.sparkContext.cancelJobGroup(group)
        for thread in threads:
            thread.join(timeout=30)


def _stream(spark: Any, frame: Any, sizes: list[int], group: str,
            results: queue.SimpleQueue[list[Any] | BaseException | None]) -> None:
    """A thread: collects ``frame`` one partition at a time, the next one already running
    (prefetch), and hands each completed batch's rows to ``results``."""
    try:
        # The group is this thread's; the jobs toLocalIterator starts inherit it.
        spark.sparkContext.setJobGroup(group, "lookalike index", interruptOnCancel=True)
        pending: dict[int, list[Any]] = {}
        for row in frame.toLocalIterator(prefetchPartitions=True):
            rows = pending.setdefault(row.batch, [])
            rows.append(row)
            if len(rows) == sizes[row.batch]:
                results.put(pending.pop(row.batch))
        if pending:
            raise SparkJobError(f"Spark returned incomplete batches {sorted(pending)}.")
        results.put(None)
    except BaseException as exc:  # noqa: BLE001 - handed to the consuming thread, raised there
        results.put(exc)


def _job_error(exc: BaseException) -> SparkJobError:
    """A failed Spark job's error, with the reason a task gave (the last line of its Python
    traceback, or Spark's own first exception line) rather than pages of Java stack."""
    text = str(exc).strip()
    found = re.findall(r"^:? ?(\w+(?:\.\w+)*(?:Error|Exception)\b.*)$", text, re.MULTILINE)
    if found:
        reason = found[-1] if "Traceback (most recent call last)" in text else found[0]
    else:
        reason = text.splitlines()[0] if text else type(exc).__name__
    return SparkJobError(f"The Spark job failed: {reason} (rerun with --debug for Spark's "
                         "message; what was written before stays, and a rerun carries on).")


# -- in Spark's Python workers ---------------------------------------------------------------------

#: This Python worker's model, by what it was loaded with. Spark reuses a worker process from
#: task to task (spark.python.worker.reuse, on by default), so the model loads once per worker.
_MODELS: dict[tuple[tuple[str, Any], ...], Embedder] = {}


def _embed_partitions(frames: Iterator[Any], *, work: Any, load: dict[str, Any],
                      preprocess: Preprocess, max_pixels: int, max_bytes: int) -> Iterator[Any]:
    """``mapInArrow``'s function: for each batch number, decode and embed that batch's files."""
    import pyarrow as pa  # type: ignore[import-untyped]

    schema = pa.schema([("batch", pa.int64()), ("uri", pa.string()), ("hash", pa.string()),
                        ("width", pa.int32()), ("height", pa.int32()), ("error", pa.string()),
                        ("vector", pa.binary()), ("decode_s", pa.float64()),
                        ("embed_s", pa.float64()), ("load_s", pa.float64())])
    key = tuple(sorted(load.items()))
    for frame in frames:
        for batch in frame.column("id").to_pylist():
            load_s = 0.0
            if key not in _MODELS:
                start = time.perf_counter()
                _MODELS.clear()  # one model per worker
                _MODELS[key] = Embedder.load(**load)
                load_s = time.perf_counter() - start
            columns = _embed_batch(_MODELS[key], work.value[batch], preprocess, max_pixels,
                                   max_bytes)
            n = len(columns["uri"])
            columns.update(batch=[batch] * n, load_s=[load_s] + [0.0] * (n - 1))
            yield pa.RecordBatch.from_pydict(columns, schema=schema)


def _embed_batch(embedder: Embedder, uris: list[str], preprocess: Preprocess, max_pixels: int,
                 max_bytes: int) -> dict[str, list[Any]]:
    start = time.perf_counter()
    decoded = [decode_file(u, preprocess, max_pixels, max_bytes) for u in uris]
    decoded_at = time.perf_counter()
    pixels = [d.pixels for d in decoded if d.error is None and d.pixels is not None]
    vectors = iter(embedder.embed_pixels(np.stack(pixels)) if pixels else [])
    blobs = [next(vectors).astype("<f4").tobytes() if d.error is None and d.pixels is not None
             else None for d in decoded]
    n, done = len(decoded), time.perf_counter()
    return {"uri": [d.uri for d in decoded], "hash": [d.content_hash for d in decoded],
            "width": [d.width for d in decoded], "height": [d.height for d in decoded],
            "error": [d.error for d in decoded], "vector": blobs,
            "decode_s": [(decoded_at - start) / n] * n, "embed_s": [(done - decoded_at) / n] * n}
