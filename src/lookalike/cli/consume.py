"""`lookalike consume`: a queue feeds the collection. Registered on the `lookalike` group."""

from __future__ import annotations

import json
import signal
import threading
import time
from typing import Any

import click

from .base import COLLECTION_HELP, cli, collection_path, runtime_options


def consume_options(func: Any) -> Any:
    """The options `consume` and `serve --consume` share."""
    for option in reversed([
        click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
                     help="Messages pulled, and images embedded, together."),
        click.option("--max-attempts", type=click.IntRange(min=1), default=5, show_default=True,
                     help="Deliveries of a failing message before it goes to the dead letters."),
        click.option("--allow-path", "allow_paths", multiple=True,
                     type=click.Path(exists=True, file_okay=False),
                     help="Also read local image files named by messages, under this folder "
                          "(repeat). Default: s3:// URIs only, as whoever can send to the "
                          "queue names what is read."),
    ]):
        func = option(func)
    return func


@cli.command("consume")
@click.argument("source")
@click.option("-c", "--collection", default=None, help=COLLECTION_HELP)
@consume_options
@click.option("--seconds", type=click.FloatRange(min=0), default=None,
              help="Stop after this many seconds (default: run until Ctrl-C or SIGTERM).")
@click.option("--json", "as_json", is_flag=True, help="Print the final report as JSON.")
@runtime_options
def consume_command(source: str, collection: str | None, batch_size: int, max_attempts: int,
                    allow_paths: tuple[str, ...], seconds: float | None, as_json: bool,
                    **runtime: Any) -> None:
    """Apply a queue's image events to a collection as they arrive: uploads become searchable
    in seconds, deletions drop out of results.

    SOURCE is sqs://QUEUE_URL_OR_NAME[?dlq=NAME] or
    kafka://HOST:PORT/TOPIC?group=NAME[&dlq=TOPIC][&OPTION=VALUE]. Messages are S3 event
    notifications (also wrapped by SNS or EventBridge), operations {"op": "upsert"|"delete",
    "uri": ...}, or embeddings made by `lookalike.serverless`. A message is acknowledged only
    after what it does is committed;
    one that keeps failing goes to the dead-letter queue or topic with its reason. Ctrl-C or
    SIGTERM finishes the batch in hand, then exits.

    \b
    Example:  lookalike consume sqs://photos-events -c photos.lookalike
              lookalike consume 'kafka://broker:9092/uploads?group=indexer' -c photos.lookalike
    """
    from ..collection import Collection
    from ..queues import open_source
    from ..stream import Consumer

    stop = threading.Event()
    with Collection.open(collection_path(collection),
                         **{k: v for k, v in runtime.items() if v is not None}) as col:
        queue = open_source(source)
        try:
            consumer = Consumer(col, queue, batch_size=batch_size, max_attempts=max_attempts,
                                allow_paths=allow_paths,
                                log=lambda line: click.echo(line, err=True))
            click.echo(f"Consuming {queue.name} into {col.path} (Ctrl-C to stop)", err=True)
            progress = threading.Thread(target=_report, args=(consumer, stop), daemon=True)
            with _stopping_on_signals(stop):
                if seconds is not None:
                    threading.Timer(seconds, stop.set).start()
                progress.start()
                stats = consumer.run(stop)
        finally:
            queue.close()
    summary = stats.as_dict()
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(_line(summary))


def _report(consumer: Any, stop: threading.Event, every: float = 5.0) -> None:
    shown = None
    while not stop.wait(every):
        line = _line(consumer.stats.as_dict())
        if line != shown:
            click.echo(line, err=True)
            shown = line


def _line(s: dict[str, Any]) -> str:
    lag = "?" if s["lag"] is None else s["lag"]
    error = f" (last error: {s['last_error']})" if s["last_error"] and s["retried"] else ""
    return (f"{s['messages']} deliveries: {s['added']} added, {s['updated']} updated, "
            f"{s['deleted']} deleted, {s['unchanged']} unchanged, {s['failed']} failed, "
            f"{s['ignored']} ignored, {s['stale']} stale, {s['skipped']} skipped, "
            f"{s['retried']} retried, {s['dead_lettered']} dead-lettered; "
            f"{s['images_per_second']:.1f} img/s, lag {lag}{error}")


class _stopping_on_signals:
    """SIGINT and SIGTERM ask the consumer to stop after its batch; a second SIGINT stops at
    once (nothing acknowledged is lost: an unfinished batch comes again)."""

    def __init__(self, stop: threading.Event) -> None:
        self._stop = stop
        self._old: dict[int, Any] = {}

    def __enter__(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, sig: int, _: Any) -> None:
        if self._stop.is_set() and sig == signal.SIGINT:
            raise KeyboardInterrupt
        self._stop.set()
        click.echo(f"Stopping after the batch in hand ({time.strftime('%H:%M:%S')})...",
                   err=True)

    def __exit__(self, *_: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
