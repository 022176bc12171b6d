"""Sharded backfill: `embed` (one shard of a batch scheduler's array job) and `import`.
Registered on the `lookalike` group when imported."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import click

from ..objects import is_object_uri
from ..types import line_uri
from .base import COLLECTION_HELP, cli, collection_path, runtime_options, wait_option


@cli.command("embed")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True,
              help="Folder or s3://bucket/prefix/ for the shard file "
                   "(part-IIIII-of-NNNNN.parquet).")
@click.option("--shard", "shard_text", default=None, metavar="I/N",
              help="Embed shard I of N (0-based: 3/16 is the fourth of 16).")
@click.option("--shards", type=click.IntRange(min=1), default=None,
              help="Number of shards, in an array job: the index comes from "
                   "AWS_BATCH_JOB_ARRAY_INDEX, JOB_COMPLETION_INDEX or SLURM_ARRAY_TASK_ID.")
@click.option("-m", "--model", default=None,
              help="Model, as for a new collection (see `lookalike models`) "
                   "[default efficientnet-lite0-gem, setting model].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per model call.")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Decoding processes (0: decode in this process) [default: one per CPU].")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr [default: when stderr is a terminal].")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@runtime_options
def embed_command(paths: Sequence[str], out: str, shard_text: str | None, shards: int | None,
                  model: str | None, batch_size: int | None, workers: int | None,
                  progress: bool | None, as_json: bool, **runtime: Any) -> None:
    """Embed one shard of the image files under PATHS into a Parquet file for `import`.

    Every copy of an array job (AWS Batch, a Kubernetes indexed Job, Slurm) lists the same
    PATHS (folders, files, s3:// prefixes, at the same paths everywhere) and embeds the files
    whose URI hashes to its shard: together the N shards cover every file once. The file
    appears in --out only when complete; a shard that was killed is simply run again (it starts
    over). Files that cannot be decoded are rows with the reason.

    \b
    Example:  lookalike embed /shared/photos --shard 3/16 --out /shared/embeddings
    Array:    lookalike embed s3://media/photos/ --shards 16 --out s3://media/embeddings/
    """
    from ..ingest.shards import Shard, embed_shard, load_embedder

    for path in paths:
        if not is_object_uri(path) and not os.path.exists(path):
            raise click.BadParameter(f"{path} does not exist.", param_hint="PATHS")
    shard = Shard.parse(shard_text) if shard_text else Shard.from_env(shards)
    if shards is not None and shards != shard.count:
        raise click.UsageError(f"--shard {shard} and --shards {shards} disagree; give one.")
    report = embed_shard(paths, shard, out, load_embedder(model, **runtime),
                         batch_size=batch_size, workers=workers, show_progress=progress)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    click.echo(f"Embedded shard {report.shard}: {report.images} of {report.listed} images, "
               f"{len(report.failed)} failed, in {report.seconds:.1f} s "
               f"({report.images_per_second:.1f} images/s) -> {line_uri(report.out)}")
    for failure in report.failed:
        click.echo(f"  failed: {line_uri(failure.uri)}: {failure.reason}")


@cli.command("import")
@click.argument("sources", nargs=-1, required=True)
@click.option("-c", "--collection", default=None, help=COLLECTION_HELP)
@click.option("--index", "index_spec", default=None,
              help="Index spec for a new collection (see `lookalike index --help`).")
@click.option("--store", default=None,
              help="Metadata store for a new collection: sqlite or postgresql://... "
                   "[env LOOKALIKE_STORE; default sqlite].")
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="Weights file, for a new collection of a model that needs one (resnet50).")
@click.option("--batch-size", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Images per store transaction.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr [default: when stderr is a terminal].")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@wait_option
def import_command(sources: Sequence[str], collection: str | None, index_spec: str | None,
                   store: str | None, weights: str | None, batch_size: int,
                   progress: bool | None, as_json: bool, wait: float) -> None:
    """Load the shard files `lookalike embed` wrote into a collection.

    SOURCES are shard files, folders of them or s3:// prefixes. A new collection gets the
    shards' model. Images already stored unchanged are skipped, so importing a shard twice adds
    nothing and an interrupted import resumes when run again. Shards embedded with another
    model than the collection's are refused. Images in the collection that are missing from
    the shards are NOT removed: run `lookalike index` on the paths (or `lookalike remove`).

    \b
    Example:  lookalike import /shared/embeddings -c photos.lookalike
    From S3:  lookalike import s3://media/embeddings/ -c photos.lookalike
    """
    from ..collection import Collection
    from ..errors import CollectionNotFoundError
    from ..ingest.shard_import import open_shards

    path = collection_path(collection)
    with open_shards(sources) as found:
        try:
            col = Collection.open(path, weights=weights, store=store)
        except CollectionNotFoundError:
            found.check_new(weights, path)  # refused before an empty collection is made
            col = Collection.create(path, model=found.model, weights=weights, index=index_spec,
                                    store=store)
        with col:
            found.check(col.manifest.model.fingerprint, col.dim, path)  # before the warnings
            missing = found.missing()
            for count, absent in missing.items():
                shown = ", ".join(map(str, absent[:8])) + (", ..." if len(absent) > 8 else "")
                click.echo(f"warning: {len(absent)} of {count} shards are not among the files "
                           f"(shard {shown} of {count}): their images are not imported; run "
                           "them, then import again.", err=True)
            report = col.import_shards(found, batch_size=batch_size, show_progress=progress,
                                       wait=wait)
    if as_json:
        click.echo(json.dumps({**report.to_dict(), "shard_files": len(found.headers),
                               "missing_shards": {str(n): a for n, a in missing.items()}},
                              indent=2))
        return
    click.echo(
        f"Imported {report.added + report.updated} images from {len(found.headers)} shard "
        f"files in {report.seconds:.1f} s ({report.images_per_second:.1f} images/s): "
        f"{report.added} added, {report.updated} updated, {report.unchanged} unchanged, "
        f"{report.reused} reused by content hash, {len(report.failed)} failed."
    )
    for failure in report.failed:
        click.echo(f"  failed: {line_uri(failure.uri)}: {failure.reason}")
