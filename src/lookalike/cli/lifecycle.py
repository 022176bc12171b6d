"""Commands that change or check a collection beyond indexing folders: add, remove, watch,
compact, rebuild, reduce, learn, verify. Registered on the `lookalike` group when imported."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import click

from ..objects import is_object_uri
from ..settings import MIN_LEARN_PAIRS
from ..types import line_uri, shown_uri
from .base import (
    COLLECTION_HELP,
    cli,
    collection_path,
    echo_learned,
    known_id,
    no_learn_option,
    runtime_options,
    wait_option,
)


@cli.command("add")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("-c", "--collection", default=None, help=COLLECTION_HELP)
@click.option("--check", is_flag=True,
              help="Also list each added image's exact and near duplicates in the collection "
                   "(by the model's calibrated normal threshold).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@wait_option
@runtime_options
def add_command(paths: Sequence[str], collection: str | None, check: bool, as_json: bool,
                wait: float, **runtime: Any) -> None:
    """Add image files or folders (or S3 objects and prefixes, s3://...); nothing else in the
    collection is removed.

    Each image is searchable when the command returns (it is in the delta index).

    \b
    Example:  lookalike add new-photo.jpg -c photos.lookalike
    Check:    lookalike add new-photo.jpg --check
    """
    from ..collection import Collection

    for path in paths:
        if not is_object_uri(path) and not os.path.exists(path):
            raise click.BadParameter(f"Path '{path}' does not exist.", param_hint="PATHS")
    with Collection.open_or_create(collection_path(collection), **runtime) as col:
        report = col.add(paths, workers=0, show_progress=False, wait=wait)
        ids = {p: col.find(p) for p in paths}
        checked = _checked(col, paths) if check else {}
    if as_json:
        shown = {shown_uri(path): image_id for path, image_id in ids.items()}
        extra = ({"duplicates": {shown_uri(uri): [m.to_dict() for m in found]
                                 for uri, found in checked.items()}} if check else {})
        click.echo(json.dumps({**report.to_dict(), "ids": shown, **extra}, indent=2))
        return
    for path, image_id in ids.items():
        click.echo(f"{image_id if image_id is not None else '-':>8}  {line_uri(path)}")
    for failure in report.failed:
        click.echo(f"  failed: {line_uri(failure.uri)}: {failure.reason}")
    for uri, found in checked.items():
        for m in found:
            how = m.how or f"cosine {m.cosine:.3f}"
            click.echo(f"  {line_uri(uri)} is a {m.tier} copy ({how}) of {m.image_id} "
                       f"{line_uri(m.uri)}")


def _checked(col: Any, paths: Sequence[str]) -> dict[str, list[Any]]:
    """Each indexed image under ``paths``: its exact and near duplicates in the collection."""
    from ..dedup import thresholds_for
    from ..dedup.matching import duplicates_of
    from ..ingest.local import walk

    thresholds = thresholds_for(col.model_name)
    found = {}
    for entry in walk(paths)[0]:
        image_id = col.find(entry.uri)
        if image_id is not None:
            found[entry.uri] = duplicates_of(col, image_id, thresholds)
    return found


@cli.command("remove")
@click.argument("images", nargs=-1, required=True)
@click.option("-c", "--collection", default=None, help=COLLECTION_HELP)
@wait_option
def remove_command(images: Sequence[str], collection: str | None, wait: float) -> None:
    """Remove images by id, path or s3:// URI; they disappear from results at once.

    \b
    Example:  lookalike remove 17 ~/Pictures/blurry.jpg -c photos.lookalike
    """
    from ..collection import Collection

    targets = [known_id(int(i)) if i.isdigit() else i for i in images]
    with Collection.open(collection_path(collection)) as col:
        removed = col.remove(targets, wait=wait)
    click.echo(f"Removed {len(removed)} image(s): {', '.join(map(str, removed))}")


@cli.command("compact")
@click.option("-c", "--collection", default=None, help=COLLECTION_HELP)
@no_learn_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def compact_command(collection: str | None, learn: bool, as_json: bool) -> None:
    """Merge the delta into a new main index and drop removed images from it.

    Searches and writers carry on during the merge; the new index is swapped in atomically.
    The merge runs at low CPU priority, so searches served meanwhile stay fast. When learning
    is due (see --learn), it learns instead, which builds a new main index too.
    """
    import os

    from ..collection import Collection

    os.nice(10)
    with Collection.open(collection_path(collection)) as col:
        learned = col.learn_if_due() if learn else None
        if learned is None:
            _print_compaction(col.compact(), as_json)
        elif as_json:
            click.echo(json.dumps(learned.to_dict(), indent=2))
        else:
            echo_learned(learned)


@cli.command("rebuild")
@click.option("-c", "--collection", default=None, help=COLLECTION_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def rebuild_command(collection: str | None, as_json: bool) -> None:
    """Rebuild every index file from the stored vectors."""
    from ..collection import Collection

    with Collection.open(collection_path(collection)) as col:
        report = col.rebuild()
    _print_compaction(report, as_json)


def _print_compaction(report: Any, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(report.__dict__, indent=2))
        return
    click.echo(f"Main index: {report.main_vectors} vectors ({report.spec}) built in "
               f"{report.seconds:.1f} s; {report.dropped_tombstones} removed images dropped.")


@cli.command("reduce")
@click.option("--dim", type=click.IntRange(min=1), default=None,
              help="Dimensions to keep, e.g. 256 (fewer: smaller and faster, less exact).")
@click.option("--off", is_flag=True, help="Remove the PCA: search at the model's full dimension.")
@click.option("--whiten", is_flag=True,
              help="Also equalise the variance of the kept dimensions (PCA-whitening).")
@click.option("--sample", type=click.IntRange(min=1), default=1_000_000, show_default=True,
              help="Stored vectors to learn the PCA from (drawn at random).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the sample.")
@click.option("-c", "--collection", default=None, help=COLLECTION_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def reduce_command(dim: int | None, off: bool, whiten: bool, sample: int, seed: int,
                   collection: str | None, as_json: bool) -> None:
    """Shrink the index with a PCA learnt from the stored vectors, and rebuild it.

    Every indexed vector and every query is projected to --dim dimensions and re-normalised.
    The stored vectors keep their full dimension: run it again with another --dim, or --off.
    A running `lookalike serve` switches to the new index on its own.

    \b
    Example:  lookalike reduce --dim 256 -c photos.lookalike
    """
    from ..collection import Collection

    if (dim is None) == (not off):
        raise click.UsageError("Give either --dim N or --off.")
    if off and whiten:
        raise click.UsageError("--whiten needs --dim.")
    with Collection.open(collection_path(collection)) as col:
        report = col.reduce(dim or 0, whiten=whiten, sample=sample, seed=seed)  # 0: off
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    if report.explained_variance is None:
        click.echo(f"PCA removed: the index is back to {report.dim_after} dimensions.")
    else:
        kind = "PCA-whitening" if report.whiten else "PCA"
        click.echo(f"{kind} {report.dim_before} -> {report.dim_after} dimensions keeps "
                   f"{report.explained_variance:.1%} of the variance; learnt from "
                   f"{report.trained_on} vectors in {report.fit_seconds:.1f} s.")
    click.echo(f"Index rebuilt: {report.vectors} vectors, {report.index_bytes_before / 1e6:.2f} "
               f"MB -> {report.index_bytes_after / 1e6:.2f} MB in {report.build_seconds:.1f} s.")


@cli.command("learn")
@click.option("--dim", type=click.IntRange(min=1), default=None,
              help="Also reduce the index to this many dimensions [default: as now: the "
                   "model's, or what `reduce` or an earlier `learn --dim` chose].")
@click.option("--pairs", type=click.IntRange(min=MIN_LEARN_PAIRS), default=None,
              help="Images to edit a copy of and learn from, drawn at random "
                   "[env LOOKALIKE_LEARN_PAIRS; default 1000].")
@click.option("--off", is_flag=True,
              help="Remove the learned projection; index and compact stop learning by "
                   "themselves until the next `lookalike learn`.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed for the images drawn and their edits.")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Processes that read and edit the images (0: this one).")
@click.option("-c", "--collection", default=None, help=COLLECTION_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@wait_option
@runtime_options
def learn_command(dim: int | None, pairs: int | None, off: bool, seed: int,
                  workers: int | None, collection: str | None, as_json: bool, wait: float,
                  **runtime: Any) -> None:
    """Learn what this collection's copies change, so edited copies find their originals.

    Images drawn at random are read again and edited as people edit photos they re-post
    (crop, rotation, blur, JPEG, colour, text, borders...). From each image and its copy a
    projection learns which directions copies move in, and damps them (learned whitening): no
    labels and no outside data. The index then holds projected vectors; the stored vectors
    keep the model's, so run it again at any time, or --off. A running `lookalike serve`
    switches on its own. `lookalike index` and `compact` run it by themselves at 1,000 images
    and each time the collection doubles.

    \b
    Example:  lookalike learn -c photos.lookalike
    """
    from ..collection import Collection

    if off and (dim or pairs):
        raise click.UsageError("--off takes no --dim or --pairs.")
    with Collection.open(collection_path(collection), **runtime) as col:
        report = col.learn(dim=dim, pairs=pairs, seed=seed, off=off, wait=wait,
                           workers=workers)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        echo_learned(report)


@cli.command("verify")
@click.option("-c", "--collection", default=None, help=COLLECTION_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify_command(collection: str | None, as_json: bool) -> None:
    """Check that the index files agree with the stored vectors (exit 1 on any drift).

    Vectors committed after the last index save are normal: they are added when the collection
    is opened. Fix drift with `lookalike rebuild`.
    """
    from ..collection import Collection

    with Collection.open(collection_path(collection)) as col:
        report = col.verify()
    if as_json:
        click.echo(json.dumps({**report.__dict__, "ok": report.ok}, indent=2))
    else:
        click.echo(f"{report.active_images} active images; main.index {report.main_vectors}, "
                   f"delta.index {report.delta_vectors}, {report.pending_vectors} pending, "
                   f"{report.tombstones} tombstones.")
        for problem in report.problems:
            click.echo(f"  drift: {problem}")
        click.echo("OK: the indexes agree with the store." if report.ok else
                   "Run `lookalike rebuild` to rebuild the indexes from the stored vectors.")
    if not report.ok:
        raise click.exceptions.Exit(1)


@cli.command("watch")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("-c", "--collection", default=None, help=COLLECTION_HELP)
@click.option("--poll", "poll_seconds", type=float, default=None,
              help="Poll every N seconds instead of using inotify.")
@click.option("--seconds", type=float, default=None,
              help="Stop after this many seconds (default: run until Ctrl-C).")
@runtime_options
def watch_command(paths: Sequence[str], collection: str | None, poll_seconds: float | None,
                  seconds: float | None, **runtime: Any) -> None:
    """Keep a collection in step with folders: new, changed, moved and deleted files are
    reflected within seconds.

    \b
    Example:  lookalike watch ~/Pictures -c photos.lookalike
    """
    from ..collection import Collection
    from ..watch import watch

    with Collection.open_or_create(collection_path(collection), **runtime) as col:
        watch(col, paths, poll_seconds=poll_seconds, seconds=seconds,
              report=lambda line: click.echo(line, err=True))
