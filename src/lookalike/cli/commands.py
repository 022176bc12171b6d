"""Indexing and querying commands: index, search, info, models, demo."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import click

from ..objects import is_object_uri
from ..types import line_uri, shown_uri
from ..where import Where, parse_max_per
from .base import (
    COLLECTION_HELP,
    Decimal,
    cli,
    collection_path,
    echo_learned,
    known_id,
    no_learn_option,
    runtime_options,
    wait_option,
)
from .metadata import METADATA_HELP, echo_unmatched


@cli.command("index")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("-c", "--collection", default=None, help=COLLECTION_HELP)
@click.option("-m", "--model", default=None,
              help="Model for a new collection (see `lookalike models`) "
                   "[default efficientnet-lite0-gem, setting model].")
@click.option("--index", "index_spec", default=None,
              help="Index spec for a new collection: auto, Flat, HNSW32[,SQ8], IVF1024,Flat, "
              "IVF1024,PQ32[x4fs,RFlat], ScaNN[,leaves=1000], a Milvus collection: "
              "milvus-lite[:FILE.db/NAME] (embedded, in the collection folder) or "
              "milvus://HOST:19530/NAME[?index=HNSW&M=32&efConstruction=64], or a Qdrant one: "
              "qdrant-edge[:DIR/NAME] (embedded) or qdrant://HOST:6333/NAME[?m=32&ef_construct=128].")
@click.option("--store", default=None,
              help="Metadata store for a new collection: sqlite, or postgresql://user[:password]"
                   "@host[:port]/db[?schema=name] (the password is not recorded); for an "
                   "existing PostgreSQL one, where and how to reach it "
                   "[env LOOKALIKE_STORE; default sqlite].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per model call.")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Decoding processes (0: decode in this process); with --engine ray, "
                   "embedding actors [default: one per CPU of the cluster, or per GPU]; with "
                   "--engine spark, batches embedded at once, one Spark task each in a Python "
                   "worker that keeps its model loaded (and the cores of a local Spark) "
                   "[default: Spark's default parallelism, one per core].")
@click.option("--engine", type=click.Choice(["local", "ray", "spark"]), default=None,
              help="Decode and embed here, or on a Ray or Spark cluster (the image paths must "
                   "be the same on every node) [env LOOKALIKE_ENGINE; default local].")
@click.option("--ray-address", default=None,
              help="Ray cluster for --engine ray: ray://HEAD:10001, HEAD:6379 or auto "
                   "[env LOOKALIKE_RAY_ADDRESS; default: start a local Ray for the run].")
@click.option("--spark-master", default=None,
              help="Spark master for --engine spark: spark://HOST:7077, yarn, k8s://..., "
                   "local[N] [env LOOKALIKE_SPARK_MASTER; default: start a local Spark for the "
                   "run].")
@click.option("--rebuild", is_flag=True, help="Also rebuild the index from the stored vectors.")
@click.option("--metadata", "metadata_file", type=click.Path(exists=True, dir_okay=False),
              default=None, help=METADATA_HELP)
@no_learn_option
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr [default: when stderr is a terminal].")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@wait_option
@runtime_options
def index_command(paths: Sequence[str], collection: str | None, model: str | None,
                  index_spec: str | None, store: str | None, batch_size: int | None,
                  workers: int | None, engine: str | None, ray_address: str | None,
                  spark_master: str | None, rebuild: bool, metadata_file: str | None,
                  learn: bool, progress: bool | None, as_json: bool, wait: float,
                  **runtime: Any) -> None:
    """Index image files and folders (recursively) into a collection.

    PATHS may also be S3 objects and prefixes (s3://bucket/key, s3://bucket/prefix/).
    Unchanged files are skipped, renamed or copied files reuse their vectors, files that
    disappeared are removed, and an interrupted run resumes where it stopped. Once the
    collection holds 1,000 images (and each time it doubles), it learns its invariances
    (`lookalike learn`) unless --no-learn.

    \b
    Example:  lookalike index ~/Pictures --collection photos.lookalike
    From S3:  lookalike index s3://media/photos/ -c photos.lookalike
    On Ray:   lookalike index /shared/photos -c photos.lookalike --engine ray
    On Spark: lookalike index /shared/photos -c photos.lookalike --engine spark
    Metadata: lookalike index ~/Pictures --metadata captions.csv
    """
    from ..collection import Collection
    from ..collection.metadata import read_metadata_file
    from ..ingest.engines import chosen_engine

    for path in paths:
        if not is_object_uri(path) and not os.path.exists(path):
            raise click.BadParameter(f"{path} does not exist.", param_hint="PATHS")
    # The engine's options, checked before a new collection is made for them.
    chosen_engine(engine, ray_address=ray_address, spark_master=spark_master, workers=workers)
    # A bad metadata file stops the run before anything is indexed.
    rows = read_metadata_file(metadata_file) if metadata_file else None
    with Collection.open_or_create(collection_path(collection), model=model, index=index_spec,
                                   store=store, **runtime) as col:
        report = col.index(paths, batch_size=batch_size, workers=workers, show_progress=progress,
                           engine=engine, ray_address=ray_address,
                           spark_master=spark_master, wait=wait, learn=learn)
        tagged = col.apply_metadata(rows, wait=wait) if rows is not None else None
        if rebuild:
            col.rebuild()
    if tagged is not None:
        echo_unmatched(tagged)
    if as_json:
        data = report.to_dict()
        if tagged is not None:
            data["metadata"] = tagged.to_dict()
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(
        f"Indexed {report.added + report.updated} images in {report.seconds:.1f} s "
        f"({report.images_per_second:.1f} images/s): {report.added} added, {report.updated} "
        f"updated, {report.unchanged} unchanged, {report.reused} reused by content hash, "
        f"{report.removed} removed, {len(report.failed)} failed."
    )
    for failure in report.failed:
        click.echo(f"  failed: {line_uri(failure.uri)}: {failure.reason}")
    if tagged is not None:
        click.echo(f"Metadata set for {tagged.applied} image"
                   f"{'' if tagged.applied == 1 else 's'}.")
    if report.learned:
        echo_learned(report.learned)


@cli.command("search")
@click.argument("image", required=False)
@click.option("--id", "image_id", type=Decimal(), default=None,
              help="Search by an indexed image's id.")
@click.option("-c", "--collection", default=None, help=COLLECTION_HELP)
@click.option("-k", type=Decimal(1, 10_000), default=10, show_default=True,
              help="Number of results.")
@click.option("--ef", type=Decimal(1, 100_000), default=None,
              help="HNSW efSearch for this query (higher: more accurate, slower).")
@click.option("--qe", type=Decimal(0, 100), default=None,
              help="Query expansion: re-rank with the query plus its N best matches "
                   "(0: off) [default 2, setting query_expansion].")
@click.option("--where", default=None, metavar="EXPR",
              help="Only images whose fields pass EXPR, e.g. 'format = jpeg and width >= "
                   "1000', 'album in [trip, home]', 'taken between 2021-01 and 2021-06', "
                   "'exists make' (see the README's Filters).")
@click.option("--max-per", multiple=True, metavar="KEY=N",
              help="At most N results per value of a field, e.g. album=2.")
@click.option("--collapse", is_flag=True,
              help="Fold copies of a better result into it (shown as '+N copies').")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
@runtime_options
def search_command(image: str | None, image_id: int | None, collection: str | None, k: int,
                   ef: int | None, qe: int | None, where: str | None, max_per: Sequence[str],
                   collapse: bool, as_json: bool, **runtime: Any) -> None:
    """Find the indexed images most similar to IMAGE.

    IMAGE is an image file or S3 object (s3://bucket/key), or the path, URI or id of an indexed
    image (then its stored vector is used and the image itself is left out of the results).
    Each result is labelled by the model's calibrated thresholds: exact (the same bytes), copy
    (an edited copy), similar (the same scene or a look-alike), or '-'.

    \b
    Examples:  lookalike search holiday.jpg -k 5
               lookalike search holiday.jpg --where 'album = trip' --max-per folder=2
    """
    from ..collection import Collection

    if (image is None) == (image_id is None):
        raise click.UsageError("Give either IMAGE or --id, not both.")
    if len(max_per) > 1:
        raise click.BadParameter("give it once: results are limited per value of one field.",
                                 param_hint="--max-per")
    within: dict[str, Any] = {  # parsed before opening: a bad one is exit 2 at once
        "where": Where.of(where), "max_per": parse_max_per(max_per[0] if max_per else None),
        "collapse": collapse}
    with Collection.open(collection_path(collection), **runtime) as col:
        if image is not None and image_id is None:
            if is_object_uri(image) or os.path.isfile(image):
                image_id = col.find(image)
            else:
                image_id = _as_id(image)
        if image_id is not None:
            hits = col.search_similar(known_id(image_id), k, ef=ef, qe=qe, **within)
        else:
            hits = col.search(image, k, ef=ef, qe=qe, **within)
        if not hits and within["where"] is not None:
            _say_why_none_pass(col, within["where"])
    if as_json:
        results = [{"rank": r, **hit.to_dict()} for r, hit in enumerate(hits, 1)]
        query = shown_uri(image) if image is not None else image_id
        click.echo(json.dumps({"query": query, "results": results}, indent=2))
        return
    for rank, hit in enumerate(hits, 1):
        click.echo(f"{rank:>4}  {hit.match or '-':<7}  {hit.score:.4f}  {line_uri(hit.uri)}")
        if hit.copies:
            click.echo(f"        +{len(hit.copies)} "
                       f"cop{'y' if len(hit.copies) == 1 else 'ies'}: "
                       + ", ".join(line_uri(c.uri) for c in hit.copies[:3])
                       + (", ..." if len(hit.copies) > 3 else ""))


def _say_why_none_pass(col: Any, where: Where) -> None:
    """On stderr: no image passes the filter, and which of its fields no image has."""
    known = {key for key, _ in col.store.field_keys()}
    missing = sorted(where.keys() - known)
    hint = (f" No image has the field{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)}; `lookalike info --fields` lists them." if missing else "")
    click.echo(f"No indexed image passes the filter {where.text}.{hint}", err=True)


def _as_id(value: str) -> int:
    if value.isdigit():
        return int(value)
    raise click.BadParameter(f"{value} is neither an existing file nor an image id.",
                             param_hint="IMAGE")


@cli.command("info")
@click.option("-c", "--collection", default=None, help=COLLECTION_HELP)
@click.option("--failures", is_flag=True, help="Also list the files that failed, with reasons.")
@click.option("--fields", "show_fields", is_flag=True,
              help="Also list the fields images have (what `search --where` filters on), with "
                   "how many images have each.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def info_command(collection: str | None, failures: bool, show_fields: bool,
                 as_json: bool) -> None:
    """Counts, model, index spec and sizes on disk of a collection."""
    from ..collection import Collection

    with Collection.open(collection_path(collection)) as col:
        info = col.info()
        failed = col.store.failures() if failures else []
        keys = col.store.field_keys() if show_fields else []
    if as_json:
        data = info.to_dict()
        if failures:
            data["failures"] = [{"uri": shown_uri(f.uri), "reason": f.error} for f in failed]
        if show_fields:
            data["fields"] = [{"key": key, "images": n} for key, n in keys]
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"collection  {info.path}")
    click.echo(f"model       {info.model} ({info.dim}-d)")
    click.echo(f"index       {info.index_spec} (main: {info.index_kind}, {info.main_vectors} "
               f"vectors; delta: {info.delta_vectors}; tombstones: {info.tombstones})")
    if info.pca and info.pca["kind"] == "learned":
        click.echo(f"learned     {info.dim} -> {info.pca['dim']} dimensions, whitening learnt "
                   f"from {info.pca['pairs']} images and copies of them at "
                   f"{info.pca['trained_on']} images (`lookalike learn`)")
    elif info.pca:
        whitened = ", whitened" if info.pca["whiten"] else ""
        click.echo(f"pca         {info.dim} -> {info.pca['dim']} dimensions{whitened}, "
                   f"{info.pca['explained_variance']:.1%} of the variance, learnt from "
                   f"{info.pca['trained_on']} vectors")
    if not info.learn:
        click.echo("learning    off: index and compact do not learn by themselves "
                   "(`lookalike learn` turns it on)")
    click.echo(f"images      {info.images} indexed, {info.failed} failed, {info.removed} removed")
    click.echo(f"metadata    {info.store}")
    for name, size in info.bytes_on_disk.items():
        click.echo(f"  {name:<16} {size / 1e6:10.2f} MB")
    click.echo(f"created     {info.created}\nupdated     {info.updated}")
    if show_fields:
        click.echo("fields      " + ", ".join(f"{line_uri(key)} ({n})" for key, n in keys))
    for record in failed:
        click.echo(f"  failed: {line_uri(record.uri)}: {record.error}")


@cli.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def models_command(as_json: bool) -> None:
    """List the available embedding models."""
    from ..embedders import describe_models
    from ..settings import resolve

    models = describe_models()
    if as_json:
        click.echo(json.dumps(models, indent=2))
        return
    default = resolve("model")
    width = max(len(m["name"]) for m in models) + len(" (default)")
    for m in models:
        name = m["name"] + (" (default)" if m["name"] == default else "")
        click.echo(f"{name:<{width}}  {m['description']}")


@cli.command("demo")
@click.option("--out", default="demo-out", show_default=True,
              help="Folder for the demo photos and collection.")
def demo_command(out: str) -> None:
    """Build a collection from sample photos and edited copies, and show what it finds."""
    from ..demo import run_demo

    run_demo(out)
