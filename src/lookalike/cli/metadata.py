"""Metadata commands: tag. (`lookalike index --metadata FILE` is an option of index.)"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from ..objects import is_object_uri
from ..types import line_uri
from ..where import MAX_KEY
from .base import COLLECTION_HELP, cli, collection_path, known_id, wait_option

if TYPE_CHECKING:
    from ..collection.metadata import MetadataReport

#: `index --metadata`'s help (the README says the same).
METADATA_HELP = (
    "Then set the metadata of the images a .jsonl file (one JSON object a line) or a .csv file "
    "(a header row) names: each row gives an image by path (or uri; relative paths are from the "
    "file's folder) and replaces its metadata with the row's other keys. A CSV cell that is a "
    "JSON number (3, -2.5, 1e3) becomes a number and true/false a boolean, anything else is "
    "text (007, +1, null), and an empty cell sets nothing. Rows naming no indexed image are "
    "listed on stderr. The file is checked before indexing starts.")


def echo_unmatched(report: MetadataReport, shown: int = 5) -> None:
    """On stderr, the rows of a metadata file that named no indexed image: how many, and the
    first ``shown``."""
    if not report.unmatched:
        return
    rows = len(report.unmatched)
    click.echo(f"Warning: {rows} metadata row{'' if rows == 1 else 's'} "
               f"name{'s' if rows == 1 else ''} no indexed image:", err=True)
    for uri in report.unmatched[:shown]:
        click.echo(f"  {line_uri(uri)}", err=True)
    if len(report.unmatched) > shown:
        click.echo(f"  ... and {len(report.unmatched) - shown} more", err=True)


@cli.command("tag")
@click.argument("items", nargs=-1, required=True, metavar="ID|PATH... KEY=VALUE...")
@click.option("--remove", "remove", multiple=True, metavar="KEY",
              help="Take this key out of the images' metadata (repeatable).")
@click.option("-c", "--collection", default=None, help=COLLECTION_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the images' metadata as JSON.")
@wait_option
def tag_command(items: Sequence[str], remove: Sequence[str], collection: str | None,
                as_json: bool, wait: float) -> None:
    """Set metadata of indexed images: KEY=VALUE pairs are merged into each image's metadata
    (a key it has is overwritten), and --remove KEY takes keys out. Filters (`search --where`)
    see the keys as fields.

    Images are given by id or by path (or s3:// URI); an argument with = that is not an
    existing file is a KEY=VALUE pair. A VALUE that is a JSON number (3, -2.5, 1e3) is stored
    as a number and true/false as a boolean, so filters compare them as such; anything else is
    text (007, +1, null).

    \b
    Example:  lookalike tag 17 ~/Pictures/cat.jpg album=pets rating=5
              lookalike tag 17 --remove rating
    """
    from ..collection import Collection
    from ..collection.metadata import typed_value

    images: list[int | str] = []
    values: dict[str, Any] = {}
    for item in items:
        if "=" in item and not os.path.exists(item) and not is_object_uri(item):
            key, _, text = item.partition("=")
            if not key:
                raise click.BadParameter(f"{item!r} has no key before =.", param_hint="KEY=VALUE")
            if len(key) > MAX_KEY or "`" in key:  # a key no filter could name
                raise click.BadParameter(f"a key is at most {MAX_KEY} characters, without "
                                         f"backticks; got {key[:40]!r}.", param_hint="KEY=VALUE")
            values[key] = typed_value(text)
        elif item.isascii() and item.isdigit() and not os.path.exists(item):
            images.append(known_id(int(item)))
        else:
            images.append(item)
    if not images:
        raise click.UsageError("Name at least one image, by id or path.")
    if not values and not remove:
        raise click.UsageError("Give KEY=VALUE pairs to set, or --remove KEY.")
    with Collection.open(collection_path(collection)) as col:
        tagged = col.tag(images, values, remove=remove, wait=wait)
    if as_json:
        click.echo(json.dumps([{"image_id": d.image_id, "uri": d.to_dict()["uri"],
                                "metadata": d.metadata} for d in tagged], indent=2))
        return
    for details in tagged:
        shown = json.dumps(details.metadata, ensure_ascii=False)
        click.echo(f"{details.image_id:>6}  {line_uri(details.uri)}  {shown}")
