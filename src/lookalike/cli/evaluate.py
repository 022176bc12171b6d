"""`lookalike eval labelled|copydetect`: measure retrieval quality. Registered on `lookalike`."""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .base import cli, runtime_options

if TYPE_CHECKING:
    from ..evaluation import Pipeline, Timing

RECALL_HELP = (
    "Cut-off k for recall@k and hit@k [default 10]. recall@k: the share of a query's relevant "
    "images found in the top k, averaged over queries; hit@k: the share of queries with at least "
    "one relevant image in the top k. With one original per query (copydetect) they are equal."
)


def pipeline_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
        click.option("-m", "--model", default=None,
                     help="Model (see `lookalike models`) [default efficientnet-lite0-gem, "
                          "setting model]."),
        click.option("--pca", type=click.IntRange(min=1), default=None,
                     help="Project to this many dimensions with PCA fitted on the database."),
        click.option("--whiten", is_flag=True, help="Whiten the PCA (needs --pca)."),
        click.option("--learn", is_flag=True,
                     help="Project with learned whitening, fitted as `lookalike learn` does on "
                          "the database's own images and edited copies of them (a labelled "
                          "set: on its images)."),
        click.option("--qe", type=click.IntRange(min=0), default=None,
                     help="α-query expansion with this many neighbours (0: off) [default: "
                          "what searches use, the query_expansion setting, 2]."),
        click.option("--qe-alpha", type=click.FloatRange(min=0), default=None,
                     help="αQE weight exponent: neighbours count with similarity^alpha "
                          "[default: the query_expansion_alpha setting, 3]."),
        click.option("--dba", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Database-side augmentation with this many neighbours (0: off)."),
        click.option("--dba-alpha", type=click.FloatRange(min=0), default=3.0,
                     show_default=True, help="DBA weight exponent."),
        click.option("-k", "--k", "k", type=click.IntRange(min=1), default=10, help=RECALL_HELP),
        click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
                     help="Images per model call."),
        click.option("--progress/--no-progress", default=None,
                     help="Progress bars on stderr [default: when stderr is a terminal]."),
        click.option("--json", "as_json", is_flag=True, help="Print the report as JSON."),
        runtime_options,
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _pipeline(model: str | None, pca: int | None, whiten: bool, learn: bool, qe: int | None,
              qe_alpha: float | None, dba: int, dba_alpha: float) -> Pipeline:
    from ..evaluation import Pipeline
    from ..settings import resolve

    return Pipeline(model=resolve("model", model), pca=pca, whiten=whiten, learn=learn,
                    qe=resolve("query_expansion", qe),
                    qe_alpha=resolve("query_expansion_alpha", qe_alpha), dba=dba,
                    dba_alpha=dba_alpha)


@cli.group("eval")
def eval_group() -> None:
    """Measure retrieval quality on a labelled folder or on edited copies of photos.

    Search is exact (no approximate index), so the numbers measure the embedding pipeline.
    """


@eval_group.command("labelled")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@pipeline_options
def labelled_command(folder: str, model: str | None, pca: int | None, whiten: bool,
                     learn: bool, qe: int | None, qe_alpha: float | None, dba: int,
                     dba_alpha: float, k: int, batch_size: int, progress: bool | None,
                     as_json: bool, **runtime: Any) -> None:
    """mAP, precision@1, recall@k and hit@k on FOLDER, one sub-folder per class.

    Every image is a query against all the others (itself excluded); images of its class are
    the relevant ones. Classes with fewer than 2 images are skipped; files that cannot be
    decoded are listed and left out.

    \b
    Example:  lookalike eval labelled ~/datasets/pets --pca 256 --whiten --json
    """
    from ..evaluation import evaluate_labelled, load_embedder, read_labelled

    pipeline = _pipeline(model, pca, whiten, learn, qe, qe_alpha, dba, dba_alpha)
    dataset = read_labelled(folder)
    click.echo(f"{len(dataset.paths)} images in {len(dataset.classes)} classes; "
               f"{pipeline.describe()}", err=True)
    embedder = load_embedder(pipeline.model, **runtime)
    report = evaluate_labelled(dataset, pipeline, embedder, ks=sorted({1, k}),
                               batch_size=batch_size, show_progress=progress)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    click.echo(f"labelled set  {report.root}: {report.images} images in {report.classes} classes")
    if report.small_classes:
        click.echo(f"  skipped {len(report.small_classes)} class folder(s) with < 2 images: "
                   f"{', '.join(report.small_classes)}")
    click.echo(f"pipeline      {pipeline.describe()} ({report.dim}-d)")
    s = report.summary
    click.echo(f"mAP           {s.map:.4f}")
    click.echo(f"precision@1   {s.precision_at_1:.4f}")
    click.echo(f"recall@{k:<6} {s.recall_at[k]:.4f}  (share of a query's relevant images in "
               f"the top {k})")
    click.echo(f"hit@{k:<9} {s.hit_at[k]:.4f}  (share of queries with a relevant image in "
               f"the top {k})")
    if s.skipped:
        click.echo(f"  {s.skipped} queries had no other image of their class left (skipped)")
    _echo_timing(report.timing)
    _echo_failures(report.failed)


@eval_group.command("copydetect")
@click.argument("photos", type=click.Path(exists=True, file_okay=False))
@click.option("--originals", type=click.IntRange(min=1), default=300, show_default=True,
              help="Photos that get edited copies (the queries).")
@click.option("--distractors", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Further photos in the database that no query is a copy of.")
@click.option("--distractors-from", type=click.Path(exists=True, file_okay=False), default=None,
              help="Take the distractors from this folder instead of PHOTOS.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Picks the originals, distractors and edit parameters.")
@click.option("--edits", default=None,
              help="Comma-separated edits to apply [default: all: crop, rotate, jpeg, colour, "
                   "grey, blur, scale, flip, text, border, chain].")
@click.option("--heavy", is_flag=True,
              help="Harder copies: crops keeping 25-80 % of the area, JPEG quality 5-40, blur "
                   "σ 1-4 px at the model's 224 px, stronger colour, text with a caption bar.")
@click.option("--cache", type=click.Path(file_okay=False), default=None,
              help="Folder for the edited copies and manifest, reused when the recipe matches "
                   "[default: under the cache folder, LOOKALIKE_CACHE_DIR].")
@pipeline_options
def copydetect_command(photos: str, originals: int, distractors: int,
                       distractors_from: str | None, seed: int, edits: str | None,
                       heavy: bool, cache: str | None, model: str | None, pca: int | None,
                       whiten: bool, learn: bool, qe: int | None, qe_alpha: float | None, dba: int,
                       dba_alpha: float, k: int, batch_size: int, progress: bool | None,
                       as_json: bool, **runtime: Any) -> None:
    """Copy detection on edited copies of the photos in PHOTOS (searched recursively).

    A seeded choice of photos becomes the originals, each edited once per edit type (crop,
    rotation, JPEG, colour, greyscale, blur, downscale, flip, text, border, and chains of 2-4
    edits); the edited copies are the queries, searched against the originals plus distractor
    photos. Reports recall@1, recall@k and mAP per edit and overall.

    \b
    Example:  lookalike eval copydetect ~/Pictures --originals 200 --distractors 2000
    Learned:  lookalike eval copydetect ~/Pictures --heavy --learn
    """
    from ..evaluation import EDITS, build_copydetect, evaluate_copydetect, load_embedder
    from ..settings import resolve

    pipeline = _pipeline(model, pca, whiten, learn, qe, qe_alpha, dba, dba_alpha)
    chosen = tuple(e.strip() for e in edits.split(",") if e.strip()) if edits else tuple(EDITS)
    folder = Path(cache) if cache else _default_cache(
        photos, distractors_from, originals, distractors, seed, chosen, heavy,
        resolve("cache_dir"))

    def building(done: int, total: int) -> None:
        if progress is not False and (done == total or done % 50 == 0):
            click.echo(f"edited copies: {done}/{total} originals", err=True)

    dataset = build_copydetect(photos, folder, originals=originals, distractors=distractors,
                               seed=seed, edits=chosen, distractors_from=distractors_from,
                               heavy=heavy, progress=building)
    click.echo(f"{len(dataset.queries)} queries, {len(dataset.database)} database images "
               f"({folder}); {pipeline.describe()}", err=True)
    embedder = load_embedder(pipeline.model, **runtime)
    report = evaluate_copydetect(dataset, pipeline, embedder, ks=sorted({1, k}),
                                 batch_size=batch_size, show_progress=progress)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    click.echo(f"copy detection  {report.total.queries} queries against {report.database} "
               f"images ({report.originals} originals); {pipeline.describe()} "
               f"({report.dim}-d)")
    click.echo(f"{'edit':<8} {'queries':>8} {'recall@1':>9} {f'recall@{k}':>10} {'mAP':>7}")
    for name, s in [*report.per_edit.items(), ("all", report.total)]:
        click.echo(f"{name:<8} {s.queries:>8} {s.recall_at[1]:>9.4f} {s.recall_at[k]:>10.4f} "
                   f"{s.map:>7.4f}")
    if report.total.skipped:
        click.echo(f"  {report.total.skipped} queries skipped: their original failed to decode")
    _echo_timing(report.timing)
    _echo_failures(report.failed)


def _default_cache(photos: str, distractors_from: str | None, originals: int, distractors: int,
                   seed: int, edits: tuple[str, ...], heavy: bool, cache_dir: str) -> Path:
    others = os.path.abspath(distractors_from) if distractors_from else None
    # "heavy" only when set, so the folders of standard sets keep their names
    recipe = json.dumps([os.path.abspath(photos), others, originals, distractors, seed, edits,
                         *(["heavy"] if heavy else [])])
    digest = hashlib.blake2b(recipe.encode(), digest_size=6).hexdigest()
    name = f"copydetect-{Path(photos).resolve().name}-{digest}"
    return Path(cache_dir).expanduser() / "evalsets" / name


def _echo_timing(timing: Timing) -> None:
    click.echo(f"embedding     {timing.images} images in {timing.embed_seconds:.1f} s "
               f"({timing.images_per_second:.1f} images/s, decoding included)")
    pca = f"; PCA fit {timing.pca_seconds:.2f} s" if timing.pca_seconds else ""
    per_query = timing.ms_per_query
    click.echo(f"search        {per_query if math.isfinite(per_query) else 0:.3f} ms/query "
               f"(exact, with any DBA/αQE){pca}")


def _echo_failures(failed: list[tuple[str, str]]) -> None:
    if failed:
        click.echo(f"{len(failed)} file(s) could not be read and were left out:")
    for path, reason in failed:
        click.echo(f"  failed: {path}: {reason}")

