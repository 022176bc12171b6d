"""Backfill on a Ray cluster: the files are decoded and embedded by Ray Data, written here.

This process lists the files and skips the unchanged ones exactly as the local engine does
(:class:`~lookalike.ingest.Ingestor` does both), then hands the paths still to do to Ray Data.
``map_batches`` runs a pool of actors that each load the model once; on CPU nodes an actor reads,
decodes and embeds its batch itself, so only paths go out and 5 KiB vectors come back, never pixel
arrays. On a cluster with usable CUDA GPUs, decoding runs in CPU tasks and one actor per GPU
embeds. This process consumes the results as they come (in any order) and writes them to the
collection batch by batch, each batch one transaction, so an interrupted run loses only the
batches in flight and a rerun carries on. A file that cannot be read or decoded comes back as a
row with the reason and is recorded as a failure, as locally.

The workers open the files at the paths this process listed: on a cluster, the images must be on a
filesystem every node mounts at the same path, and lookalike must be installed on every node.
Objects (``s3://``) are read by the workers too, so every node needs the AWS credentials (and
``LOOKALIKE_S3_ENDPOINT_URL``, if set); a local Ray's workers inherit this process's environment.

>>> col.index(["/shared/photos"], engine="ray", ray_address="ray://head:10001")
>>> col.index(["/shared/photos"], engine=RayEngine(actors=8, cpus_per_actor=2))
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Generator, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..embedders import Embedder
from ..errors import LookalikeError, MissingDependencyError, UsageError
from ..imaging import MAX_FILE_BYTES, Decoded, decode_file
from ..types import Preprocess
from .local import Batch

_INSTALL = "pip install 'lookalike[ray]'"


@dataclass(frozen=True)
class RayEngine:
    """Where and how a backfill runs on Ray.

    ``address`` is an existing cluster (``ray://head:10001``, ``head:6379`` or ``auto``); without
    one a local Ray is started for the run (with ``num_cpus`` CPUs, default all) and stopped
    after it. ``actors`` is the number of embedding actors (default: as many as the cluster's CPUs
    allow, or one per GPU), ``cpus_per_actor`` the CPUs, and model threads, each CPU actor gets
    (default 1).
    """

    address: str | None = None
    actors: int | None = None
    cpus_per_actor: int | None = None
    num_cpus: int | None = None

    def __post_init__(self) -> None:
        for name in ("actors", "cpus_per_actor", "num_cpus"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"RayEngine {name} must be at least 1, got {value}.")

    def source(self, embedder: Embedder, *, batch_size: int, max_pixels: int,
               max_bytes: int = MAX_FILE_BYTES, cache_dir: str | None = None) -> RaySource:
        """A batch source for :class:`~lookalike.ingest.Ingestor` that embeds like ``embedder``."""
        return RaySource(self, embedder, batch_size=batch_size, max_pixels=max_pixels,
                         max_bytes=max_bytes, cache_dir=cache_dir)


def engine_for(engine: str | RayEngine, address: str | None, actors: int | None) -> RayEngine:
    """The engine a name (or an engine) and the index call's options stand for."""
    if isinstance(engine, RayEngine):
        return engine if engine.address or not address else replace(engine, address=address)
    if engine != "ray":
        raise UsageError(f"Unknown indexing engine {engine!r}; choose local or ray.")
    if actors is not None and actors < 1:
        raise UsageError(f"--workers is the number of embedding actors with --engine ray: at "
                         f"least 1, got {actors}.")
    require_ray()  # fail before any work when the extra is missing
    return RayEngine(address=address, actors=actors)


def require_ray() -> Any:
    """The ``ray`` module, or MissingDependencyError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (the `ray` package without the `data` extra lacks pyarrow)
    except ImportError:
        raise MissingDependencyError("ray[data]", "The Ray engine (--engine ray)",
                                     _INSTALL) from None
    return ray


class RaySource:
    """Decodes and embeds on Ray; yields ``(decoded, vectors)`` batches for the Ingestor."""

    def __init__(self, engine: RayEngine, embedder: Embedder, *, batch_size: int,
                 max_pixels: int, max_bytes: int = MAX_FILE_BYTES,
                 cache_dir: str | None = None) -> None:
        self.engine = engine
        self.batch_size = max(1, batch_size)
        self._limits = {"max_pixels": max_pixels, "max_bytes": max_bytes}
        self.preprocess = embedder.preprocess
        runtime, precision = embedder.cpu_runtime
        # Pinned to what this process resolved, so every node embeds as the local engine would.
        self._load = {"name": embedder.name, "weights": embedder.weights, "runtime": runtime,
                      "precision": precision, "cache_dir": cache_dir}

    def batches(self, uris: list[str], stages: dict[str, float]) -> Generator[Batch, None, None]:
        ray = require_ray()
        if not uris:  # nothing to do: no cluster to start
            return
        started = time.perf_counter()
        with _cluster(ray, self.engine) as (cpus, gpus):
            dataset = self._plan(ray, uris, cpus, gpus)
            stages["ray_start"] = time.perf_counter() - started
            stages.setdefault("decode_wait", 0.0)
            rows = iter(dataset.iter_batches(batch_size=None, batch_format="numpy"))
            # Closed while Ray still runs: a run stopped mid-way (Ctrl-C during a write) must
            # not leave Ray Data's iterator to be torn down after ray.shutdown().
            with contextlib.closing(rows):
                while True:
                    wait_start = time.perf_counter()
                    batch = next(rows, None)
                    stages["decode_wait"] += time.perf_counter() - wait_start
                    if batch is None:
                        return
                    # start-up (cluster, actors, model loads) plus the first batch's own work
                    stages.setdefault("ray_first_batch", time.perf_counter() - started)
                    stages["decode"] += float(batch["decode_s"].sum())
                    stages["embed"] += float(batch["embed_s"].sum())
                    yield _unpack(batch)

    def _plan(self, ray: Any, uris: list[str], cpus: float, gpus: float) -> Any:
        from ray.data import ActorPoolStrategy

        # Blocks of at most one batch, and one block per call (batch_size=None): results stream
        # back, and are committed, batch by batch rather than in a few large blocks.
        blocks = -(-len(uris) // self.batch_size)
        dataset = ray.data.from_items([{"uri": u} for u in uris], override_num_blocks=blocks)
        gpu_load = {**self._load, "runtime": "torch", "device": "cuda", "precision": "auto",
                    "threads": None}
        cuda_problem = _cuda_problem(ray, gpu_load) if gpus >= 1 else "no GPUs"
        if cuda_problem is None:
            actors = min(self.engine.actors or int(gpus), blocks)
            decoded = dataset.map_batches(
                _decode_batch, batch_size=None, batch_format="numpy", num_cpus=1,
                fn_kwargs={"preprocess": self.preprocess, **self._limits},
            )
            return decoded.map_batches(
                EmbedActor, batch_size=None, batch_format="numpy",
                compute=ActorPoolStrategy(size=actors), num_gpus=1, num_cpus=1,
                fn_constructor_kwargs={"load": gpu_load, "preprocess": self.preprocess,
                                       **self._limits, "decode": False},
            )
        if gpus >= 1:
            warnings.warn(f"The Ray cluster has GPUs but the model cannot run on them "
                          f"({cuda_problem}); embedding on CPUs instead.", RuntimeWarning,
                          stacklevel=2)
        per_actor = self.engine.cpus_per_actor or 1
        actors = min(self.engine.actors or max(1, int(cpus // per_actor)), blocks)
        load = {**self._load, "device": "cpu", "threads": per_actor}
        return dataset.map_batches(
            EmbedActor, batch_size=None, batch_format="numpy",
            compute=ActorPoolStrategy(size=actors), num_cpus=per_actor,
            fn_constructor_kwargs={"load": load, "preprocess": self.preprocess,
                                   **self._limits, "decode": True},
        )


class EmbedActor:
    """A Ray Data actor: loads the model once, then embeds batch after batch (decoding them
    first when ``decode``, else taking the pixels a decoding task produced)."""

    def __init__(self, load: dict[str, Any], preprocess: Preprocess, max_pixels: int,
                 max_bytes: int, decode: bool) -> None:
        self._embedder = Embedder.load(**load)
        self._preprocess = preprocess
        self._max_pixels, self._max_bytes = max_pixels, max_bytes
        self._decode = decode

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._decode:
            start = time.perf_counter()
            decoded = [decode_file(str(u), self._preprocess, self._max_pixels, self._max_bytes)
                       for u in batch["uri"]]
            out = _pack(decoded, self._preprocess.size, with_pixels=False)
            out["decode_s"] = np.full(len(decoded), (time.perf_counter() - start) / len(decoded))
            pixels = [d.pixels for d in decoded if d.pixels is not None]
            todo = np.stack(pixels) if pixels else None
        else:
            out = {name: column for name, column in batch.items() if name != "pixels"}
            todo = batch["pixels"][out["error"] == ""]
        start = time.perf_counter()
        vectors = np.zeros((len(out["uri"]), self._embedder.dim), np.float32)
        if todo is not None and len(todo):
            vectors[out["error"] == ""] = self._embedder.embed_pixels(np.ascontiguousarray(todo))
        out["vector"] = vectors
        out["embed_s"] = np.full(len(vectors), (time.perf_counter() - start) / len(vectors))
        return out


def _decode_batch(batch: dict[str, np.ndarray], preprocess: Preprocess, max_pixels: int,
                  max_bytes: int) -> dict[str, np.ndarray]:
    """A Ray Data task: decode a batch of files to model input (GPU clusters)."""
    start = time.perf_counter()
    decoded = [decode_file(str(u), preprocess, max_pixels, max_bytes) for u in batch["uri"]]
    out = _pack(decoded, preprocess.size, with_pixels=True)
    out["decode_s"] = np.full(len(decoded), (time.perf_counter() - start) / len(decoded))
    return out


def _pack(decoded: list[Decoded], size: int, *, with_pixels: bool) -> dict[str, np.ndarray]:
    columns: dict[str, np.ndarray] = {
        "uri": np.array([d.uri for d in decoded], dtype=object),
        "width": np.array([d.width for d in decoded], np.int64),
        "height": np.array([d.height for d in decoded], np.int64),
        "hash": np.array([d.content_hash for d in decoded], dtype=object),
        "error": np.array([d.error or "" for d in decoded], dtype=object),
    }
    if with_pixels:
        empty = np.zeros((size, size, 3), np.uint8)
        columns["pixels"] = np.stack([empty if d.pixels is None else d.pixels for d in decoded])
    return columns


def _unpack(batch: dict[str, np.ndarray]) -> Batch:
    decoded, vectors = [], {}
    for i, uri in enumerate(batch["uri"]):
        uri, error = str(uri), str(batch["error"][i]) or None
        # No file fields (format, EXIF) travel back: the store derives format from the name.
        decoded.append(Decoded(uri, None, int(batch["width"][i]), int(batch["height"][i]),
                               str(batch["hash"][i]), error))
        if error is None:
            vectors[uri] = np.array(batch["vector"][i], np.float32)
    return decoded, vectors


def _cuda_problem(ray: Any, load: dict[str, Any]) -> str | None:
    """Why the model cannot be loaded on a GPU of the cluster, or None when it can."""

    @ray.remote(num_gpus=1, num_cpus=0)
    def probe() -> str | None:
        try:
            Embedder.load(**load)
        except LookalikeError as exc:
            return str(exc)
        return None

    try:
        return ray.get(probe.remote(), timeout=300)
    except Exception as exc:  # noqa: BLE001 - whatever failed, do not plan on the GPUs
        return f"{type(exc).__name__}: {exc}"


def _init(ray: Any, options: dict[str, Any], address: str | None, attempts: int = 2) -> None:
    """``ray.init``; a local Ray whose processes do not come up in time (Ray waits 30 s for its
    raylet, which a busy or cold machine can miss) is started again once."""
    failure: Exception
    for _ in range(attempts):
        try:
            ray.init(**options)
            return
        except ConnectionError as exc:
            if address:
                raise UsageError(
                    f"Cannot connect to the Ray cluster at {address}: {exc}. Check "
                    "--ray-address (ray://HEAD:10001, HEAD:6379 or auto).") from None
            failure = exc
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception on a slow start
            if address or "timed out during startup" not in str(exc):
                raise
            failure = exc
        ray.shutdown()  # stop what did start before trying again
    raise UsageError(f"Could not start a local Ray ({attempts} tries): {failure}. Retry on a "
                     "less busy machine, give a running cluster with --ray-address, or index "
                     "with --engine local.") from None


@contextlib.contextmanager
def _cluster(ray: Any, engine: RayEngine) -> Iterator[tuple[float, float]]:
    """Connect to the engine's cluster (or start a local one); yields its (CPUs, GPUs)."""
    from ray.data import DataContext

    owned = not ray.is_initialized()
    if owned:
        options: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
        if engine.address:
            options["address"] = engine.address
        else:  # "local": a fresh Ray for this run, even if `ray start` runs on this machine
            options.update(address="local", include_dashboard=False, num_cpus=engine.num_cpus)
        _init(ray, options, engine.address)
    quiet = logging.getLogger("ray.data")  # its INFO and WARNING lines are about itself
    context = DataContext.get_current()
    saved = (quiet.level, context.enable_progress_bars, context.print_on_execution_start)
    quiet.setLevel(logging.ERROR)
    context.enable_progress_bars = False  # lookalike draws its own
    context.print_on_execution_start = False
    try:
        resources = ray.cluster_resources()
        yield float(resources.get("CPU", 1.0)), float(resources.get("GPU", 0.0))
    finally:
        quiet.setLevel(saved[0])
        context.enable_progress_bars, context.print_on_execution_start = saved[1:]
        if owned:
            ray.shutdown()

