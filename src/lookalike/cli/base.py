"""The `lookalike` group and the options its commands share."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import click

COLLECTION_HELP = (
    "Collection folder [env LOOKALIKE_COLLECTION; default ~/.local/share/lookalike/default]."
)
_common_runtime = [
    click.option("--runtime", type=click.Choice(["auto", "openvino", "onnxruntime", "torch"]),
                 default=None, help="Inference runtime [env LOOKALIKE_RUNTIME; default auto]."),
    click.option("--precision", type=click.Choice(["auto", "f32", "bf16"]), default=None,
                 help="CPU inference precision [env LOOKALIKE_PRECISION; default auto: bf16 "
                      "where the CPU has it natively]."),
    click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
                 help="cuda runs the model on a GPU [env LOOKALIKE_DEVICE; default cpu]."),
    click.option("--threads", type=click.IntRange(min=1), default=None,
                 help="Threads for the model runtime [env LOOKALIKE_THREADS]."),
    click.option("--weights", type=click.Path(dir_okay=False), default=None,
                 help="Weights file for models that need one (e.g. resnet50)."),
]


#: How long a writing command waits for another process's write (an upload, a delete) to end.
wait_option = click.option(
    "--wait", type=click.FloatRange(min=0), default=10.0, show_default=True,
    help="Seconds to wait for another process that is writing to the collection (an upload, "
         "a delete) before giving up.")


no_learn_option = click.option(
    "--learn/--no-learn", default=True,
    help="Learn the collection's invariances (`lookalike learn`) when it is due: at 1,000 "
         "images, then each time the collection doubles [setting learn_min_images; 0: never].")


def echo_learned(report: Any) -> None:
    """The line `learn`, `index` and `compact` print for a :class:`lookalike.LearnReport`."""
    if report.off:
        removed = (f"Learned projection removed: the index is back to {report.dim_after} "
                   f"dimensions (rebuilt in {report.build_seconds:.1f} s)" if report.vectors
                   else "No learned projection to remove")
        click.echo(f"{removed}; index and compact no longer learn by themselves, until the "
                   "next `lookalike learn`.")
        return
    unreadable = (f" ({report.unreadable} files could not be read again unchanged)"
                  if report.unreadable else "")
    click.echo(f"Learned this collection's invariances from {report.pairs} images and edited "
               f"copies of them{unreadable}, {report.dim_before} -> {report.dim_after} "
               f"dimensions, in {report.seconds:.1f} s (copies {report.copy_seconds:.1f} s, "
               f"fit {report.fit_seconds:.1f} s, index rebuilt with {report.vectors} vectors "
               f"in {report.build_seconds:.1f} s).")


class Decimal(click.IntRange):
    """An integer option in plain decimal digits (:func:`lookalike.types.is_decimal`), as the
    HTTP API takes them."""

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        from ..types import is_decimal

        if isinstance(value, str) and not is_decimal(value):
            self.fail(f"{value!r} is not an integer in decimal digits.", param, ctx)
        return super().convert(value, param, ctx)

    def _describe_range(self) -> str:
        # click's own reads "x<=None" for a range without bounds; say nothing then.
        return "" if self.min is None and self.max is None else super()._describe_range()


def runtime_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_common_runtime):
        func = option(func)
    return func


def known_id(image_id: int) -> int:
    """``image_id``, or the collection's own not-found error when no image can have it (the
    store cannot even look up an id past 64 bits)."""
    from ..errors import ImageNotFoundError
    from ..types import MAX_IMAGE_ID

    if not 1 <= image_id <= MAX_IMAGE_ID:
        raise ImageNotFoundError(f"No indexed image has id {image_id}.")
    return image_id


def collection_path(value: str | None) -> str:
    from ..settings import resolve

    return os.path.expanduser(resolve("collection", value))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="lookalike")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
def cli(debug: bool) -> None:
    """lookalike: find more images that look like this one, offline."""


