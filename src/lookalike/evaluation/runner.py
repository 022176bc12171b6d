"""Run an evaluation: embed the images with a pipeline, search exactly, score the rankings.

A :class:`Pipeline` is a model plus the optional retrieval steps after it: PCA (fitted on the
database vectors, optionally whitened), database-side augmentation (DBA) and α-query expansion
(αQE). Search is exact inner product in numpy, so the numbers measure the representation, not an
approximate index. Embedding and scoring are separate steps so a benchmark can embed once per
model and score many pipelines on the same vectors.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import settings
from ..embedders import Embedder
from ..errors import UsageError
from ..imaging import MAX_FILE_BYTES, decode_file
from ..index import PCA, Projection
from ..index.expansion import combine, database_augmentation, nearest
from ..index.whitening import LearnedWhitening
from ..settings import DEFAULT_MODEL
from .datasets import CopyDetectionSet, LabelledSet
from .metrics import QueryScores, Summary, score_queries

DEFAULT_KS = (1, 10)
_MAX_PIXELS = 1 << 28
_QUERY_CHUNK = 512


@dataclass(frozen=True)
class Pipeline:
    """What turns an image into the vector that is searched, and how the search is expanded.

    ``qe``/``dba`` are numbers of neighbours (0: off), ``qe_alpha``/``dba_alpha`` the exponents
    on their similarity weights. ``pca`` is the output dimension (None: no PCA).
    """

    model: str = DEFAULT_MODEL
    pca: int | None = None
    whiten: bool = False
    learn: bool = False  # learned whitening, fitted as `lookalike learn` does (learn_projection)
    qe: int = 0
    qe_alpha: float = 3.0
    dba: int = 0
    dba_alpha: float = 3.0

    def __post_init__(self) -> None:
        if self.pca is not None and self.pca < 1:
            raise UsageError(f"--pca must be a positive dimension, got {self.pca}.")
        if self.whiten and self.pca is None:
            raise UsageError("--whiten needs --pca DIM (whitening is part of the PCA).")
        if self.learn and self.pca is not None:
            raise UsageError("--learn and --pca are two projections of the vectors: pick one.")
        if self.qe < 0 or self.dba < 0 or self.qe_alpha < 0 or self.dba_alpha < 0:
            raise UsageError("--qe, --dba and their alphas must be >= 0.")

    def steps(self) -> str:
        """The retrieval steps after the model, e.g. ``PCA-256w + DBA(2) + αQE(2)``."""
        parts = []
        if self.pca:
            parts.append(f"PCA-{self.pca}{'w' if self.whiten else ''}")
        if self.learn:
            parts.append("learned whitening")
        if self.dba:
            parts.append(f"DBA({self.dba}, α={self.dba_alpha:g})")
        if self.qe:
            parts.append(f"αQE({self.qe}, α={self.qe_alpha:g})")
        return " + ".join(parts) or "plain"

    def describe(self) -> str:
        return f"{self.model}, {self.steps()}"


@dataclass(frozen=True)
class Embedded:
    """Vectors for a list of files: row ``i`` is file ``i``; rows of failed files are zero."""

    vectors: np.ndarray
    ok: np.ndarray
    failed: list[tuple[str, str]]
    seconds: float  # wall clock, decoding and model together
    model_seconds: float  # inside the model only

    @property
    def images_per_second(self) -> float:
        return float(self.ok.sum()) / self.seconds if self.seconds > 0 else float("nan")


@dataclass(frozen=True)
class Timing:
    """Seconds per stage. ``embed`` covers decoding too; ``search`` covers DBA, αQE and search."""

    images: int
    embed_seconds: float
    model_seconds: float
    queries: int
    search_seconds: float
    pca_seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.images / self.embed_seconds if self.embed_seconds > 0 else float("nan")

    @property
    def ms_per_query(self) -> float:
        return 1000 * self.search_seconds / self.queries if self.queries else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"images": self.images, "embed_seconds": self.embed_seconds,
                "model_seconds": self.model_seconds, "images_per_second": self.images_per_second,
                "pca_seconds": self.pca_seconds, "queries": self.queries,
                "search_seconds": self.search_seconds, "ms_per_query": self.ms_per_query}


@dataclass(frozen=True)
class LabelledReport:
    """Leave-one-out retrieval on a labelled set: every image queries all the others."""

    pipeline: Pipeline
    root: str
    images: int
    classes: int
    dim: int
    summary: Summary
    timing: Timing
    failed: list[tuple[str, str]] = field(default_factory=list)
    small_classes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "labelled", "pipeline": _pipeline_dict(self.pipeline), "root": self.root,
                "images": self.images, "classes": self.classes, "dim": self.dim,
                **self.summary.to_dict(), "timing": self.timing.to_dict(),
                "failed": [{"path": p, "reason": r} for p, r in self.failed],
                "small_classes": self.small_classes}


@dataclass(frozen=True)
class CopyDetectionReport:
    """Edited copies searched against originals plus distractors, overall and per edit."""

    pipeline: Pipeline
    root: str
    database: int
    originals: int
    dim: int
    total: Summary
    per_edit: dict[str, Summary]
    timing: Timing
    failed: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "copydetect", "pipeline": _pipeline_dict(self.pipeline),
                "root": self.root, "database": self.database, "originals": self.originals,
                "dim": self.dim, "total": self.total.to_dict(),
                "per_edit": {e: s.to_dict() for e, s in self.per_edit.items()},
                "timing": self.timing.to_dict(),
                "failed": [{"path": p, "reason": r} for p, r in self.failed]}


def _pipeline_dict(pipeline: Pipeline) -> dict[str, Any]:
    return {**pipeline.__dict__, "steps": pipeline.steps()}


# -- embedding -------------------------------------------------------------------------------


def load_embedder(model: str, *, weights: str | None = None, runtime: str | None = None,
                  device: str | None = None, threads: int | None = None,
                  precision: str | None = None) -> Embedder:
    """The pipeline's model, with runtime settings resolved like a collection resolves them."""
    from .. import settings

    return Embedder.load(
        model, weights=weights, runtime=settings.resolve("runtime", runtime),
        device=settings.resolve("device", device), threads=settings.resolve("threads", threads),
        precision=settings.resolve("precision", precision),
        cache_dir=settings.resolve("cache_dir"),
    )


def embed_files(
    paths: Sequence[str | Path], embedder: Embedder, *, batch_size: int = 32,
    workers: int = 2, show_progress: bool | None = None,
) -> Embedded:
    """Decode and embed files in batches, decoding the next batch while the model runs.

    A file that cannot be decoded gets a zero row, ``ok`` false and an entry in ``failed``.
    """
    from tqdm import tqdm

    files = [str(p) for p in paths]
    vectors = np.zeros((len(files), embedder.dim), np.float32)
    ok = np.zeros(len(files), bool)
    failed: list[tuple[str, str]] = []
    batches = [files[i:i + batch_size] for i in range(0, len(files), batch_size)]
    started, model_seconds = time.perf_counter(), 0.0
    disable = None if show_progress is None else not show_progress

    def decode(path: str) -> Any:
        return decode_file(path, embedder.preprocess, _MAX_PIXELS)

    with ThreadPoolExecutor(max(1, workers)) as pool, \
            tqdm(total=len(files), unit="img", disable=disable) as bar:
        pending = [pool.submit(decode, p) for p in batches[0]] if batches else []
        for number in range(len(batches)):
            done = [f.result() for f in pending]
            if number + 1 < len(batches):
                pending = [pool.submit(decode, p) for p in batches[number + 1]]
            good = [d for d in done if d.pixels is not None]
            failed += [(d.uri, d.error or "unknown") for d in done if d.pixels is None]
            rows = np.asarray([number * batch_size + i for i, d in enumerate(done)
                               if d.pixels is not None], dtype=np.int64)
            if len(good):
                tick = time.perf_counter()
                vectors[rows] = embedder.embed_pixels(np.stack([d.pixels for d in good]))
                model_seconds += time.perf_counter() - tick
                ok[rows] = True
            bar.update(len(done))
    return Embedded(vectors, ok, failed, time.perf_counter() - started, model_seconds)


# -- scoring ---------------------------------------------------------------------------------


def fit_pca(pipeline: Pipeline, database: np.ndarray,
            projection: Projection | None = None) -> Projection | None:
    """The pipeline's projection: ``projection`` (what :func:`learn_projection` fitted) for
    learned whitening, else its PCA learnt from the database vectors, or None without one."""
    if pipeline.learn:
        if projection is None:
            raise UsageError("A pipeline with learned whitening is scored with the projection "
                             "learn_projection() fitted on its database.")
        return projection
    if pipeline.pca is None:
        return None
    return PCA.fit(database, pipeline.pca, whiten=pipeline.whiten)


def learn_projection(paths: Sequence[str | Path], embedded: Embedded, embedder: Embedder, *,
                     pairs: int | None = None, seed: int = 0) -> LearnedWhitening:
    """The learned whitening `lookalike learn` fits on a collection of these images: ``pairs``
    (setting ``learn_pairs``) of them drawn at random, read again and edited, and their copies
    embedded; ``embedded`` holds the images' own vectors."""
    from ..collection.learning import copy_vectors

    rows = np.flatnonzero(embedded.ok)
    count = min(settings.resolve("learn_pairs", pairs), len(rows))
    picked = np.sort(np.random.default_rng(seed).choice(rows, count, replace=False))
    made, copies = copy_vectors([str(paths[i]) for i in picked], [None] * len(picked), embedder,
                                seed=seed, workers=settings.resolve("workers"),
                                max_pixels=_MAX_PIXELS, max_bytes=MAX_FILE_BYTES)
    return LearnedWhitening.fit(embedded.vectors[rows], embedded.vectors[picked[made]],
                                copies[made])


def score_labelled(
    vectors: np.ndarray, labels: np.ndarray, pipeline: Pipeline,
    ks: Sequence[int] = DEFAULT_KS, *, pca_sample: np.ndarray | None = None,
    projection: Projection | None = None,
) -> tuple[QueryScores, float, float]:
    """Leave-one-out scores: each vector queries all the others; same label = relevant.

    With DBA, a query must not be in the database it is compared with: every database vector
    whose augmentation used the query is recomputed without it for that query, so the numbers
    are those of a query from outside the collection. The PCA is learnt from ``pca_sample``
    when given (a larger, independent sample, as the literature learns whitening), else from
    ``vectors``; learned whitening is ``projection``. Returns (scores, PCA seconds, search
    seconds).
    """
    labels = np.asarray(labels)
    n = len(vectors)
    if n < 2:
        raise UsageError("Leave-one-out retrieval needs at least 2 images.")
    tick = time.perf_counter()
    pca = fit_pca(pipeline, vectors if pca_sample is None else pca_sample, projection)
    x = pca.apply(vectors) if pca else np.asarray(vectors, np.float32)
    pca_seconds = time.perf_counter() - tick if pca else 0.0
    tick = time.perf_counter()
    scores = _leave_one_out_scores(x, pipeline)
    search_seconds = time.perf_counter() - tick
    relevant = labels[:, None] == labels[None, :]
    exclude = np.eye(n, dtype=bool)
    return score_queries(scores, relevant, ks, exclude), pca_seconds, search_seconds


def _leave_one_out_scores(x: np.ndarray, pipeline: Pipeline) -> np.ndarray:
    n = len(x)
    dba, qe = min(pipeline.dba, n - 2), min(pipeline.qe, n - 1)
    database = x
    if dba:
        sims, rows = nearest(x, x, dba + 1, exclude=np.arange(n))
        database = combine(x, x, sims[:, :dba], rows[:, :dba], pipeline.dba_alpha)
    scores = np.empty((n, n), np.float32)
    for i in range(n):
        users, patched = np.zeros(0, np.int64), np.zeros((0, x.shape[1]), np.float32)
        if dba:  # database rows whose augmentation used query i, redone from their next neighbour
            users, position = np.nonzero(rows[:, :dba] == i)
            keep = np.arange(dba + 1)[None, :] != position[:, None]
            patched = combine(x[users], x, sims[users][keep].reshape(-1, dba),
                              rows[users][keep].reshape(-1, dba), pipeline.dba_alpha)
        row = _search_without(database, users, patched, x[i], i)
        if qe:
            top = np.argsort(-row, kind="stable")[:qe]
            neighbours = database[top]
            hit = np.isin(top, users)  # users is sorted and unique (np.nonzero's row order)
            neighbours[hit] = patched[np.searchsorted(users, top[hit])]
            query = combine(x[i][None], neighbours, row[top][None], np.arange(qe)[None],
                            pipeline.qe_alpha)[0]
            row = _search_without(database, users, patched, query, i)
        scores[i] = row
    return scores


def _search_without(database: np.ndarray, users: np.ndarray, patched: np.ndarray,
                    query: np.ndarray, own: int) -> np.ndarray:
    """Scores of ``query`` against ``database`` with rows ``users`` replaced by ``patched`` and
    row ``own`` (the query itself) ruled out."""
    row = database @ query
    row[users] = patched @ query
    row[own] = -np.inf
    return row


def score_copydetect(
    database: np.ndarray, queries: np.ndarray, originals: np.ndarray, pipeline: Pipeline,
    ks: Sequence[int] = DEFAULT_KS, groups: np.ndarray | None = None,
    projection: Projection | None = None,
) -> tuple[QueryScores, float, float]:
    """Each query's right answer is database row ``originals[j]`` (-1: its original failed), or
    with ``groups`` (a picture id per database row) any row showing the same picture as it; the
    first of them in the ranking counts (``one_answer``). Learned whitening is ``projection``.

    Returns (scores, PCA seconds, search seconds); search covers DBA, αQE and the search itself.
    """
    picture = np.arange(len(database)) if groups is None else np.asarray(groups)
    tick = time.perf_counter()
    pca = fit_pca(pipeline, database, projection)
    if pca:
        database, queries = pca.apply(database), pca.apply(queries)
    pca_seconds = time.perf_counter() - tick if pca else 0.0
    tick = time.perf_counter()
    if pipeline.dba:
        database = database_augmentation(database, min(pipeline.dba, len(database) - 1),
                                         pipeline.dba_alpha)
    parts, search_seconds = [], time.perf_counter() - tick
    for start in range(0, len(queries), _QUERY_CHUNK):
        chunk = np.asarray(queries[start:start + _QUERY_CHUNK], np.float32)
        tick = time.perf_counter()
        scores = chunk @ database.T
        if pipeline.qe:
            qe = min(pipeline.qe, len(database))
            top = np.argsort(-scores, axis=1, kind="stable")[:, :qe]
            chunk = combine(chunk, database, np.take_along_axis(scores, top, axis=1), top,
                            pipeline.qe_alpha)
            scores = chunk @ database.T
        search_seconds += time.perf_counter() - tick
        wanted = originals[start:start + _QUERY_CHUNK]
        relevant = (picture[None, :] == picture[wanted][:, None]) & (wanted >= 0)[:, None]
        parts.append(score_queries(scores, relevant, ks, one_answer=True))
    return QueryScores.concatenate(parts), pca_seconds, search_seconds


# -- whole evaluations -----------------------------------------------------------------------


def evaluate_labelled(
    dataset: LabelledSet, pipeline: Pipeline, embedder: Embedder, *,
    ks: Sequence[int] = DEFAULT_KS, batch_size: int = 32, show_progress: bool | None = None,
) -> LabelledReport:
    """Embed a labelled set with ``embedder`` (the pipeline's model) and score it."""
    embedded = embed_files(dataset.paths, embedder, batch_size=batch_size,
                           show_progress=show_progress)
    vectors, labels = embedded.vectors[embedded.ok], dataset.labels[embedded.ok]
    projection = (learn_projection(dataset.paths, embedded, embedder) if pipeline.learn
                  else None)
    scores, pca_seconds, search_seconds = score_labelled(vectors, labels, pipeline, ks,
                                                         projection=projection)
    return LabelledReport(
        pipeline=pipeline, root=str(dataset.root), images=len(vectors),
        classes=len(np.unique(labels)), dim=pipeline.pca or embedder.dim,
        summary=scores.summary(),
        timing=Timing(len(vectors), embedded.seconds, embedded.model_seconds, len(vectors),
                      search_seconds, pca_seconds),
        failed=embedded.failed, small_classes=dataset.small_classes,
    )


def evaluate_copydetect(
    dataset: CopyDetectionSet, pipeline: Pipeline, embedder: Embedder, *,
    ks: Sequence[int] = DEFAULT_KS, batch_size: int = 32, show_progress: bool | None = None,
) -> CopyDetectionReport:
    """Embed a copy-detection set's database and queries with ``embedder`` and score them."""
    db = embed_files(dataset.database, embedder, batch_size=batch_size,
                     show_progress=show_progress)
    qs = embed_files([q.path for q in dataset.queries], embedder, batch_size=batch_size,
                     show_progress=show_progress)
    projection = (learn_projection(dataset.database, db, embedder) if pipeline.learn
                  else None)
    return copydetect_report(dataset, pipeline, db, qs, ks, projection)


def copydetect_scores(
    dataset: CopyDetectionSet, pipeline: Pipeline, db: Embedded, qs: Embedded,
    ks: Sequence[int] = DEFAULT_KS, projection: Projection | None = None,
) -> tuple[QueryScores, float, float]:
    """:func:`score_copydetect` on embedded vectors of ``dataset`` (``db`` rows = database,
    ``qs`` rows = queries); queries whose file failed are left out, and database rows that
    failed are out of the ranking. Returns (scores, PCA seconds, search seconds)."""
    originals = np.asarray([q.original for q in dataset.queries], np.int64)
    new_row = np.cumsum(db.ok) - 1  # database row after dropping failed files
    relevant_row = np.where(db.ok[originals], new_row[originals], -1)
    groups = None if dataset.groups is None else np.asarray(dataset.groups)[db.ok]
    return score_copydetect(db.vectors[db.ok], qs.vectors[qs.ok], relevant_row[qs.ok], pipeline,
                            ks, groups, projection)


def copydetect_report(
    dataset: CopyDetectionSet, pipeline: Pipeline, db: Embedded, qs: Embedded,
    ks: Sequence[int] = DEFAULT_KS, projection: Projection | None = None,
) -> CopyDetectionReport:
    """Score embedded copy-detection vectors (``db`` rows = database, ``qs`` rows = queries),
    overall and per edit (a chain of edits is the edit ``chain``)."""
    scores, pca_seconds, search_seconds = copydetect_scores(dataset, pipeline, db, qs, ks,
                                                            projection)
    kept_edits = np.asarray([q.edit for q in dataset.queries])[qs.ok]
    per_edit = {e: scores.select(kept_edits == e).summary() for e in dataset.edits
                if np.any(kept_edits == e)}
    images = int(db.ok.sum() + qs.ok.sum())
    return CopyDetectionReport(
        pipeline=pipeline, root=str(dataset.root), database=int(db.ok.sum()),
        originals=dataset.originals, dim=pipeline.pca or db.vectors.shape[1],
        total=scores.summary(), per_edit=per_edit,
        timing=Timing(images, db.seconds + qs.seconds, db.model_seconds + qs.model_seconds,
                      int(qs.ok.sum()), search_seconds, pca_seconds),
        failed=db.failed + qs.failed,
    )
