"""Which engine decodes and embeds an `index` run: this machine's processes (local), a Ray
cluster (:mod:`.ray`) or a Spark cluster (:mod:`.spark`), from a name or an engine object."""

from __future__ import annotations

from typing import Any

from .. import settings
from ..embedders import Embedder
from ..errors import UsageError
from .local import BatchSource

ENGINES = ("local", "ray", "spark")


def engine_kind(engine: Any) -> str:
    """local, ray or spark: what an index call's ``engine`` (a name or an engine) names."""
    from .ray import RayEngine
    from .spark import SparkEngine

    kind = {RayEngine: "ray", SparkEngine: "spark"}.get(type(engine), engine)
    if kind not in ENGINES:
        raise UsageError(f"Unknown indexing engine {engine!r}; choose local, ray or spark.")
    return str(kind)


def checked_engine(engine: Any, ray_address: str | None, spark_master: str | None) -> Any:
    """The engine to run with (None: local), once its options agree with it (UsageError)."""
    engine = settings.resolve("engine", engine)
    kind = engine_kind(engine)
    if ray_address and kind != "ray":
        raise UsageError("ray_address (--ray-address) needs engine='ray' (--engine ray).")
    if spark_master and kind != "spark":
        raise UsageError("spark_master (--spark-master) needs engine='spark' (--engine spark).")
    return None if kind == "local" else engine


def chosen_engine(engine: Any, *, ray_address: str | None, spark_master: str | None,
                  workers: int | None) -> Any:
    """The Ray or Spark engine an index call's options stand for, checked (UsageError for
    options that disagree, MissingDependencyError for a missing extra or Java), or None for the
    local engine. Cheap: callers check before they create anything."""
    engine = checked_engine(engine, ray_address, spark_master)
    if engine is None:
        return None
    from . import ray, spark

    if engine_kind(engine) == "spark":
        return spark.engine_for(engine, settings.resolve("spark_master", spark_master), workers)
    return ray.engine_for(engine, settings.resolve("ray_address", ray_address), workers)


def engine_source(engine: Any, embedder: Embedder, *, batch_size: int, max_pixels: int,
                  max_bytes: int) -> BatchSource | None:
    """The batch source of a cluster ``engine`` (from :func:`chosen_engine`), embedding like
    ``embedder``; None for the local engine, whose Ingestor decodes in worker processes."""
    if engine is None:
        return None
    source: BatchSource = engine.source(embedder, batch_size=batch_size, max_pixels=max_pixels,
                                        max_bytes=max_bytes,
                                        cache_dir=settings.resolve("cache_dir"))
    return source
