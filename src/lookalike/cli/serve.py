"""`lookalike serve`: the HTTP API and web page. Registered on the `lookalike` group."""

from __future__ import annotations

import os
from typing import Any

import click

from .base import COLLECTION_HELP, cli, runtime_options
from .consume import consume_options


@cli.command("serve")
@click.option("-c", "--collection", default=None, help=COLLECTION_HELP)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 for every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Server processes; each loads the model and index and shares the collection.")
@click.option("--api-key", default=None,
              help="Require this key on every route but health, the web page and the API "
                   "description [env LOOKALIKE_API_KEY].")
@click.option("--write-key", default=None,
              help="Require this key for uploads and deletes [env LOOKALIKE_WRITE_KEY].")
@click.option("--max-upload-bytes", type=click.IntRange(min=1), default=None,
              help="Largest request body [env LOOKALIKE_MAX_UPLOAD_BYTES; default 20 MiB].")
@click.option("--cors-origin", "cors_origins", multiple=True,
              help="Allow this origin by CORS (repeat; * for any) [env LOOKALIKE_CORS_ORIGINS; "
                   "default: CORS off].")
@click.option("--head-timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              metavar="SECONDS", help="Close a connection that takes longer to send a request's "
              "headers [env LOOKALIKE_HEAD_TIMEOUT; default 10].")
@click.option("--body-timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              metavar="SECONDS", help="Answer 408 and close when a request body pauses this "
              "long [env LOOKALIKE_BODY_TIMEOUT; default 30].")
@click.option("--max-connections", type=click.IntRange(min=1), default=None,
              help="Most open connections per server process; past it the one stalled "
                   "longest in its headers gives way, else 503 [env LOOKALIKE_MAX_CONNECTIONS; "
                   "default 1000, kept under `ulimit -n`].")
@click.option("--max-k", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Most results one search may ask for.")
@click.option("--batching/--no-batching", default=True, show_default=True,
              help="Run concurrent queries through the model together.")
@click.option("--auto-compact/--no-auto-compact", default=True, show_default=True,
              help="Merge the delta into the main index in the background when it grows.")
@click.option("--consume", "consume", default=None, metavar="SOURCE",
              help="Also apply this queue's image events to the collection, in this process "
                   "(see `lookalike consume --help`; with --workers N, each worker consumes).")
@click.option("--screen-against", "screen_against", default=None, metavar="WATCHLIST",
              help="Screen every upload against this watchlist collection (near copies, by its "
                   "model's calibrated normal threshold).")
@click.option("--screen-action", type=click.Choice(["flag", "reject"]), default="flag",
              show_default=True,
              help="flag: answer the match in the upload's `screened` field and log it; "
                   "reject: refuse a matching upload with 422 `screened`.")
@consume_options
@runtime_options
def serve_command(collection: str | None, host: str, port: int, workers: int,
                  api_key: str | None, write_key: str | None, max_upload_bytes: int | None,
                  cors_origins: tuple[str, ...], head_timeout: float | None,
                  body_timeout: float | None, max_connections: int | None, max_k: int,
                  batching: bool, auto_compact: bool, consume: str | None, batch_size: int,
                  max_attempts: int, allow_paths: tuple[str, ...], screen_against: str | None,
                  screen_action: str, **runtime: Any) -> None:
    """Serve the HTTP API and the web page over a collection.

    Open http://HOST:PORT/ for the web page and /docs for the API. The collection must exist
    (create it with `lookalike index`); images uploaded through the API are stored inside it.

    \b
    Example:  lookalike serve -c photos.lookalike --port 8000
              lookalike serve -c photos.lookalike --consume sqs://photos-events
              lookalike serve -c photos.lookalike --screen-against banned.lookalike \\
                  --screen-action reject
    """
    import uvicorn

    from ..collection import Collection
    from ..server import ServeConfig, create_app
    from ..server.config import CONFIG_ENV
    from ..server.connections import GuardedHttpProtocol, fit_open_files

    config = ServeConfig.from_settings(
        collection, api_key=api_key, write_key=write_key, max_upload_bytes=max_upload_bytes,
        cors_origins=cors_origins or None, head_timeout=head_timeout,
        body_timeout=body_timeout, max_connections=max_connections, max_k=max_k,
        batching=batching,
        auto_compact=auto_compact, runtime={k: v for k, v in runtime.items() if v is not None},
        background_load=workers == 1, consume=consume, consume_batch_size=batch_size,
        consume_max_attempts=max_attempts,
        consume_allow_paths=tuple(os.path.abspath(p) for p in allow_paths),
        screen_against=os.path.abspath(os.path.expanduser(screen_against))
        if screen_against else None, screen_action=screen_action,
    )
    Collection.open(config.collection).close()  # fail now, with the CLI's message, if missing
    if config.screen_against:  # the watchlist too, and that its model has thresholds
        from ..dedup import thresholds_for

        with Collection.open(config.screen_against) as watchlist:
            thresholds_for(watchlist.model_name)
    if host not in ("127.0.0.1", "localhost", "::1") and not (config.api_key or config.write_key):
        click.echo(f"Warning: listening on {host} with no API key: anyone who can reach this "
                   "port can upload and delete images. Set --api-key / --write-key.", err=True)
    connections = fit_open_files(config.max_connections)
    if connections < config.max_connections:
        click.echo(f"Warning: the open-file limit (`ulimit -n`) leaves room for "
                   f"{connections} connections per process, not --max-connections "
                   f"{config.max_connections}; raise it to serve more.", err=True)
    click.echo(f"Serving {config.collection} on http://{host}:{port}/ (API docs at /docs)",
               err=True)
    options: dict[str, Any] = {
        "host": host, "port": port, "log_level": "warning",
        "http": GuardedHttpProtocol.configured(head_timeout=config.head_timeout,
                                               max_connections=connections),
    }
    if workers == 1:
        uvicorn.run(create_app(config), **options)
        return
    os.environ[CONFIG_ENV] = config.to_env()
    uvicorn.run("lookalike.server.app:app_from_environment", factory=True, workers=workers,
                **options)
