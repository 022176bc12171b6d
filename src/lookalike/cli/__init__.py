"""The command line: parse, call the library, format. Results on stdout, progress on stderr."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import click

from ..errors import LookalikeError
from ..types import shown_uri
from . import (  # noqa: F401  (importing registers their commands)
    bench,
    commands,
    consume,
    dedup,
    evaluate,
    lifecycle,
    metadata,
    serve,
    shards,
)
from .base import cli

__all__ = ["cli", "main"]


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: maps errors to exit codes (2 misuse, 1 failure, 130 interrupted)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or bool(os.environ.get("LOOKALIKE_DEBUG"))
    if not debug:  # a warning is a sentence for the user, not a source line
        warnings.showwarning = _show_warning
    try:
        code = cli.main(args=args, prog_name="lookalike", standalone_mode=False)
        if isinstance(code, int) and code:  # a command that raised click's Exit(code)
            sys.exit(code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("Interrupted. Finished batches are saved; run the same command to resume.",
                   err=True)
        sys.exit(130)
    except LookalikeError as exc:
        if debug:
            raise
        click.echo(f"Error: {shown_uri(str(exc))}", err=True)
        sys.exit(exc.exit_code)


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    click.echo(f"Warning: {message}", err=True)
