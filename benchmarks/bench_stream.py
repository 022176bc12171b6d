"""Live ingestion from a queue (issue 14): time from an S3 PUT to searchable, consumer throughput.

For SQS and for Kafka, at 1 and at 100 events/s, a producer PUTs distinct real photos (the first N
of photos-2000, benchmarks/photos.py: >= 1 MP JPEGs, each a different seeded crop) to S3 on a
fixed schedule (open loop: 32 threads, a PUT never waits for the one before). The consumer is
``lookalike.stream.Consumer`` with the defaults of ``lookalike consume`` (batch 32, 2 s receive
wait, ``workers`` decoding processes: one per core), run as that command runs it
(``Consumer.run``, here in a thread of the benchmark process by ``consume_in_thread``) into a
fresh collection of the default model: pipelined, it receives the next batch and has its images
fetched from S3 and decoded in its worker processes while it embeds and commits the one before.
Before any clock starts, the consumer takes a few warm-up photos (not measured) through the whole
path, so its worker processes, the model and the queue client are started. A poller thread
searches, after every commit the consumer makes, with the vector of each photo still pending
(``search_vector(v, k=1, qe=0)``; the vectors come from the baseline below, before any clock
starts) and records when the top hit is that object: the latency is from the PUT's return to that
search. The commit only wakes the poller; the search decides.

S3 and SQS are moto's server (``tests/cloud.py``), which sends S3's ObjectCreated notifications
to the queue itself. Kafka is a Tansu broker; moto has no S3-to-Kafka bridge, so after each PUT
the benchmark produces the S3 event notification of that object to the topic, as an S3-to-Kafka
connector or a Lambda forwarding the events would. moto, Tansu, the producer and the poller run on
the same machine as the consumer and take CPU from it: each row shows how much.

The consumer's time is taken from the benchmark process, without touching library code, by
wrapping what its thread calls: receive and settle (the source), ``_begin`` (receive, read the
events, submit the fetches), ``_prepare`` (wait for the fetched and decoded images, embed),
``_finish`` (all of a batch after ``_begin``), the model call and ``Collection.apply_events``
(the commit). Fetching and decoding run in the worker processes, where nothing is wrapped: what
they cost is their CPU time, read from /proc.

Also measured, each in a fresh interpreter like every configuration here:
- ``lookalike index`` (``Collection.index`` with its defaults) of the same photos from a local
  folder, first and last: the baseline of the throughput target;
- ``lookalike index s3://bucket/prefix/`` of the same photos PUT to moto's S3 beforehand (not
  timed): what indexing costs when every image is a GET from moto on these same cores, as the
  consumer's are;
- the consumer draining a pre-filled queue (a backlog of N events), batch 32 and 64: its
  sustained throughput, comparable to indexing;
- what one SQS ReceiveMessage costs moto with 100 to N messages queued: moto scans the whole
  queue each time, so with a backlog the SQS rows are bound by moto, not by the consumer.

Targets (issue 14, on the 2-core machine): p99 <= 2 s at 100 events/s; sustained throughput at
least 80 % of ``lookalike index`` on the same images.

    python benchmarks/bench_stream.py            # about 7 minutes on 2 cores
    python benchmarks/bench_stream.py --quick    # smoke test: fewer events, under 2 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import numpy as np

from common import (
    OUT,
    Meter,
    _descendants,
    child_spec,
    log,
    machine,
    proc_sample,
    reply,
    run_child,
    table,
)
from photos import ensure_photos

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import cloud  # noqa: E402 - the test servers: moto (S3 + SQS) and Tansu (Kafka)

P99_TARGET_S = 2.0
INDEX_TARGET = 0.8
PUT_THREADS = 32  # PUTs of tens of ms keep to the schedule; slower ones are flagged (!)
WARMUP_PHOTOS = 4  # taken through the whole path before the clocks start (not measured)


# -- timing the consumer's stages, from outside the library ------------------------------------


class Clock:
    """Seconds spent in each stage, summed over calls from any thread."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] += seconds

    def reset(self) -> None:
        with self._lock:
            self.seconds.clear()

    def wrap(self, stage: str, func: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                self.add(stage, time.perf_counter() - started)

        return timed


class TimedSource:
    """A queue Source that times receive, lag and settle (the acknowledgement). The first receive
    that returns messages is start-up (Kafka: joining the group) and is kept apart."""

    def __init__(self, source: Any, clock: Clock) -> None:
        self._source, self._clock = source, clock
        self.name = source.name
        self.sizes: list[int] = []
        self.first_batch: float | None = None  # when the first messages were in hand
        self.last_receive = 0.0
        self.last_lag = 0.0

    def receive(self, max_messages: int, wait: float) -> list[Any]:
        self.last_lag = 0.0
        started = time.perf_counter()
        found = self._source.receive(max_messages, wait)
        now = time.perf_counter()
        self.last_receive = now - started
        if found:
            if self.first_batch is not None:
                self._clock.add("receive", now - started)
            self.first_batch = self.first_batch or now
            self.sizes.append(len(found))
        return found

    def settle(self, done: Sequence[Any], retry: Sequence[Any]) -> None:
        self._clock.wrap("ack", self._source.settle)(done, retry)

    def lag(self) -> int | None:  # the consumer asks every 5 s, right after a receive
        started = time.perf_counter()
        try:
            return self._source.lag()
        finally:
            self.last_lag = time.perf_counter() - started

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)


class TimedEmbedder:
    """The collection's embedder with its model calls timed."""

    def __init__(self, embedder: Any, clock: Clock) -> None:
        self._embedder = embedder
        self.embed_pixels = clock.wrap("embed", embedder.embed_pixels)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._embedder, name)


class Commits:
    """Called with each batch the consumer commits (after ``Collection.apply_events``)."""

    def __init__(self) -> None:
        self.rows = 0
        self.last = 0.0
        self.history: list[tuple[float, int]] = []  # (when, rows so far)
        self.listeners: list[Callable[[int], None]] = []

    def __call__(self, rows: int) -> None:
        self.rows += rows
        self.last = time.perf_counter()
        self.history.append((self.last, self.rows))
        for listener in self.listeners:
            listener(rows)

    def reset(self) -> None:
        self.rows, self.last = 0, 0.0
        self.history.clear()

    def steady_rate(self) -> float:
        """Rows a second from the first commit to the last but one: the first batch's start and
        a short last batch left out."""
        if len(self.history) < 3:
            return 0.0
        (t0, n0), (t1, n1) = self.history[0], self.history[-2]
        return (n1 - n0) / (t1 - t0)


def instrument(col: Any, clock: Clock, commits: Commits) -> None:
    """Time the model and the commit by wrapping what the consumer calls; library code is
    untouched."""
    col.embedder = TimedEmbedder(col.embedder, clock)
    apply = col.apply_events

    def apply_events(batch: Any) -> Any:
        started = time.perf_counter()
        written = apply(batch)
        clock.add("commit", time.perf_counter() - started)
        commits(len(batch.images))
        return written

    col.apply_events = apply_events


def timed_consumer(col: Any, source: TimedSource, clock: Clock, batch_size: int) -> Any:
    """A ``Consumer`` with the defaults of ``lookalike consume`` whose stages are timed; it runs
    through the library's own ``run`` (pipelined), which calls these methods in its thread."""
    from lookalike.stream import Consumer

    class TimedConsumer(Consumer):
        in_hand = 0  # batches begun and not finished (nor abandoned) yet

        def _begin(self, wait: float) -> Any:  # receive, read the events, submit the fetches
            holding = self.in_hand > 0
            started = time.perf_counter()
            batch = super()._begin(wait)
            spent = time.perf_counter() - started
            clock.add("lag", source.last_lag)
            if holding:  # a batch in hand waits for this receive before it is finished
                clock.add("held", source.last_receive)
            if batch is not None:
                self.in_hand += 1
                clock.add("begin", spent - source.last_receive - source.last_lag)
            return batch

        def _finish(self, batch: Any) -> bool:  # wait for the images, embed, commit, ack
            started = time.perf_counter()
            try:
                return super()._finish(batch)
            finally:
                self.in_hand -= 1
                clock.add("finish", time.perf_counter() - started)

        def _abandon(self, batch: Any) -> None:
            self.in_hand -= 1
            super()._abandon(batch)

        def _prepare(self, batch: Any) -> Any:  # wait for the fetched images, embed
            started = time.perf_counter()
            try:
                return super()._prepare(batch)
            finally:
                clock.add("prepare", time.perf_counter() - started)

    return TimedConsumer(col, source, batch_size=batch_size)


def worker_cpu(servers: Sequence[int]) -> float:
    """CPU seconds so far of this process's children but the servers (moto, the broker) and
    theirs: the consumer's decoding processes (and multiprocessing's resource tracker)."""
    me = os.getpid()
    theirs = {p for s in servers for p in (s, *_descendants(s))}
    return sum(proc_sample(p)[1] for p in _descendants(me) if p not in theirs)


def start_workers(consumer: Any, paths: Sequence[str]) -> None:
    """Start the consumer's decoding processes (they start on first use) with local files, as
    many at once as there are workers, and wait for them."""
    futures = [consumer._fetcher.submit(p) for p in paths]
    wait(futures)
    for future in futures:
        future.result()


# -- the poller: when does a search first find each photo? ---------------------------------------


class Poller:
    """After each commit, searches with every pending photo's vector (oldest first, until as many
    were found as the commit wrote) and records when the top hit is that photo. A commit it could
    not account for makes it search all pending photos again every second."""

    def __init__(self, col: Any, vectors: dict[str, np.ndarray]) -> None:
        self.col, self.vectors = col, vectors
        self.found_at: dict[str, float] = {}
        self.searches = 0
        self.cpu = 0.0
        self._pending: dict[str, None] = {}  # in PUT order
        self._owed = 0  # rows committed and not found yet
        self._commits = 0
        self._stop = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="bench-poller", daemon=True)

    def expect(self, uri: str) -> None:
        with self._cond:
            self._pending[uri] = None

    def committed(self, rows: int) -> None:
        with self._cond:
            self._owed += rows
            self._commits += 1
            self._cond.notify()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        cpu0, seen = time.thread_time(), 0
        while True:
            with self._cond:
                self._cond.wait_for(lambda seen=seen: self._stop or self._commits != seen,
                                    timeout=1.0 if self._owed > 0 else None)
                if self._stop:
                    break
                seen = self._commits
                owed, todo = self._owed, list(self._pending)
            found = 0
            for uri in todo:
                if found >= owed:
                    break
                hits = self.col.search_vector(self.vectors[uri], k=1, qe=0)
                self.searches += 1
                if hits and hits[0].uri == uri:
                    self.found_at[uri] = time.perf_counter()
                    found += 1
                    with self._cond:
                        del self._pending[uri]
                        self._owed -= 1
        self.cpu = time.thread_time() - cpu0


# -- the queues ------------------------------------------------------------------------------------


@dataclass
class Bus:
    """A bucket and the queue its events reach, as the producer sees them."""

    spec: str
    bucket: str
    put: Callable[[str, bytes], None]  # PUT one object; its event reaches the queue
    test_event: Callable[[], None]  # an s3:TestEvent message, which the consumer ignores
    flush: Callable[[], None]
    servers: list[int]  # pids of moto, and of the broker


def open_bus(kind: str, moto: cloud.MotoServer, broker: cloud.KafkaBroker | None) -> Bus:
    s3 = moto.client("s3")
    bucket = moto.bucket()
    test = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": bucket})
    if kind == "sqs":
        url, _ = moto.queue(visibility=60, max_receives=5)
        moto.notify(bucket, url)
        sqs = moto.client("sqs")
        return Bus(f"sqs://{url}", bucket,
                   lambda key, data: s3.put_object(Bucket=bucket, Key=key, Body=data),
                   lambda: sqs.send_message(QueueUrl=url, MessageBody=test), lambda: None,
                   [moto.handle.process.pid])
    assert broker is not None
    topic, producer = broker.topic(), broker.producer()

    def put(key: str, data: bytes) -> None:
        etag = s3.put_object(Bucket=bucket, Key=key, Body=data)["ETag"].strip('"')
        record = {"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "s3": {
            "bucket": {"name": bucket},
            "object": {"key": quote_plus(key), "size": len(data), "eTag": etag}}}
        producer.produce(topic, json.dumps({"Records": [record]}).encode())
        producer.poll(0)

    def flush() -> None:
        if producer.flush(30):
            raise RuntimeError("Kafka did not take every event within 30 s")

    spec = (f"kafka://{broker.address}/{topic}?group=bench-stream"
            "&session.timeout.ms=6000&heartbeat.interval.ms=500")
    return Bus(spec, bucket, put, lambda: (producer.produce(topic, test.encode()), flush()),
               flush, [moto.handle.process.pid, broker.handle.process.pid])


class Servers:
    """moto (and Tansu for Kafka) for one configuration, stopped at the end."""

    def __init__(self, kind: str) -> None:
        self.moto = cloud.start_moto()
        os.environ.update(self.moto.env)  # this process is the consumer: it reads moto's S3
        self.broker = cloud.start_kafka() if kind == "kafka" else None

    def __enter__(self) -> Servers:
        return self

    def __exit__(self, *_: object) -> None:
        self.moto.stop()
        if self.broker is not None:
            self.broker.stop()


def cpu_seconds(pids: Sequence[int]) -> list[float]:
    return [proc_sample(pid)[1] for pid in pids]


# -- the measured configurations (each runs in a child process) --------------------------------


def fresh_collection(spec: dict[str, Any], clock: Clock, commits: Commits) -> Any:
    from lookalike import Collection

    work = Path(tempfile.mkdtemp(prefix="stream-", dir=spec["tmp"]))
    col = Collection.create(work / "collection")
    col.embed(spec["paths"][:8])  # load and warm up the model before any clock starts
    instrument(col, clock, commits)
    return col


def keys_for(paths: Sequence[str], prefix: str = "uploads/") -> list[tuple[str, bytes]]:
    return [(f"{prefix}{Path(p).name}", Path(p).read_bytes()) for p in paths]


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.perf_counter() + seconds
    while not condition():
        if time.perf_counter() > deadline:
            raise RuntimeError(f"stream: {what} did not happen within {seconds:.0f} s")
        time.sleep(0.01)


def stats_since(stats: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """The consumer's counters since ``before`` (the warm-up left out)."""
    return {k: v - before[k] if isinstance(v, int) and not isinstance(v, bool)
            and k != "lag" and isinstance(before.get(k), int) else v
            for k, v in stats.items()}


def run_rate(spec: dict[str, Any]) -> dict[str, Any]:
    """PUT the photos at ``rate`` per second while the consumer runs; when is each searchable?"""
    from lookalike.queues import open_source
    from lookalike.stream import consume_in_thread

    clock, commits = Clock(), Commits()
    col = fresh_collection(spec, clock, commits)
    objects = keys_for(spec["paths"])
    with Servers(spec["queue"]) as servers:
        bus = open_bus(spec["queue"], servers.moto, servers.broker)
        uris = [f"s3://{bus.bucket}/{key}" for key, _ in objects]
        poller = Poller(col, dict(zip(uris, np.load(spec["vectors"])[:len(uris)], strict=True)))
        source = TimedSource(open_source(bus.spec), clock)
        consumer = timed_consumer(col, source, clock, spec["batch_size"])
        start_workers(consumer, spec["warmup"])
        thread, stop = consume_in_thread(consumer)
        # Warm-up (not measured): the consumer takes a test event and a few photos through the
        # whole path (Kafka: joins its group; the workers open their S3 clients).
        bus.test_event()
        for key, data in keys_for(spec["warmup"], "warmup/"):
            bus.put(key, data)
        bus.flush()
        wait_for(lambda: commits.rows >= len(spec["warmup"]), 120, "the warm-up")
        wait_for(lambda: consumer.in_hand == 0, 30, "the end of the warm-up")
        time.sleep(0.5)
        clock.reset()
        source.sizes.clear()
        commits.reset()
        commits.listeners.append(poller.committed)
        before = consumer.stats.as_dict()
        poller.start()
        put_done: dict[str, float] = {}
        put_seconds: list[float] = []
        producer_cpu: list[float] = []

        def put(uri: str, key: str, data: bytes) -> None:
            started, cpu = time.perf_counter(), time.thread_time()
            bus.put(key, data)
            put_done[uri] = time.perf_counter()
            put_seconds.append(put_done[uri] - started)
            producer_cpu.append(time.thread_time() - cpu)

        cpu0, self0 = cpu_seconds(bus.servers), proc_sample(os.getpid())[1]
        workers0 = worker_cpu(bus.servers)
        with Meter() as meter:
            first = time.perf_counter() + 0.05
            with ThreadPoolExecutor(PUT_THREADS, thread_name_prefix="bench-put") as pool:
                for i, (uri, (key, data)) in enumerate(zip(uris, objects, strict=True)):
                    poller.expect(uri)
                    delay = first + i / spec["rate"] - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                    pool.submit(put, uri, key, data)
            bus.flush()
            last_put = max(put_done.values())
            behind = len(uris) - sum(1 for t in poller.found_at.values() if t <= last_put)
            deadline = last_put + spec["drain_timeout"]
            while len(poller.found_at) < len(uris) and time.perf_counter() < deadline:
                time.sleep(0.05)
            finished = time.perf_counter()
        cpu1, self1 = cpu_seconds(bus.servers), proc_sample(os.getpid())[1]
        workers = worker_cpu(bus.servers) - workers0
        wall = finished - first
        stop.set()
        thread.join()
        poller.stop()
        source.close()
    latencies = [poller.found_at[u] - put_done[u] for u in uris if u in poller.found_at]
    found_last = max(poller.found_at.values(), default=first)
    return {
        **common_result(spec, col, clock, source, consumer, meter, before, workers),
        "events": len(uris), "found": len(latencies),
        "sent_rate": (len(uris) - 1) / (last_put - first) if len(uris) > 1 else 0.0,
        "put_ms_p50": 1000 * float(np.median(put_seconds)),
        "latency": latency_summary(latencies),
        "end_to_end_ips": len(latencies) / (found_last - first),
        "behind_at_last_put": behind, "drain_seconds": found_last - last_put,
        "cores": cores(self1 - self0 - sum(producer_cpu) - poller.cpu + workers,
                       [sum(producer_cpu) + poller.cpu,
                        *(b - a for a, b in zip(cpu0, cpu1, strict=True))], wall),
        "poller_cpu": poller.cpu, "searches": poller.searches,
    }


def run_backlog(spec: dict[str, Any]) -> dict[str, Any]:
    """Fill the queue with N events first, then time the consumer draining it."""
    from lookalike.queues import open_source
    from lookalike.stream import consume_in_thread

    clock, commits = Clock(), Commits()
    col = fresh_collection(spec, clock, commits)
    objects = keys_for(spec["paths"])
    with Servers(spec["queue"]) as servers:
        bus = open_bus(spec["queue"], servers.moto, servers.broker)
        started = time.perf_counter()
        with ThreadPoolExecutor(PUT_THREADS) as pool:
            list(pool.map(lambda item: bus.put(*item), objects))
        bus.flush()
        log(f"stream: {spec['queue']} backlog of {len(objects)} events queued in "
            f"{time.perf_counter() - started:.0f} s")
        source = TimedSource(open_source(bus.spec), clock)
        consumer = timed_consumer(col, source, clock, spec["batch_size"])
        start_workers(consumer, spec["warmup"])  # decoding processes up, before the clock
        before = consumer.stats.as_dict()
        cpu0, self0 = cpu_seconds(bus.servers), proc_sample(os.getpid())[1]
        workers0 = worker_cpu(bus.servers)
        with Meter() as meter:
            start = time.perf_counter()
            thread, stop = consume_in_thread(consumer)
            deadline = start + spec["drain_timeout"]
            while commits.rows < len(objects) and time.perf_counter() < deadline:
                time.sleep(0.02)
            finished = time.perf_counter()
        cpu1, self1 = cpu_seconds(bus.servers), proc_sample(os.getpid())[1]
        workers = worker_cpu(bus.servers) - workers0
        stop.set()
        thread.join()
        source.close()
    first = source.first_batch or finished
    return {
        **common_result(spec, col, clock, source, consumer, meter, before, workers),
        "events": len(objects), "drained": commits.rows,
        "drain_ips": commits.rows / (commits.last - first) if commits.rows else 0.0,
        "steady_ips": commits.steady_rate(),
        "startup_seconds": first - start,
        "cores": cores(self1 - self0 + workers,
                       [b - a for a, b in zip(cpu0, cpu1, strict=True)], finished - start),
    }


def common_result(spec: dict[str, Any], col: Any, clock: Clock, source: TimedSource,
                  consumer: Any, meter: Meter, before: dict[str, Any],
                  workers: float) -> dict[str, Any]:
    stats = stats_since(consumer.stats.as_dict(), before)
    images = stats["added"] + stats["updated"] + stats["failed"] + stats["unchanged"]
    busy = clock.seconds["begin"] + clock.seconds["lag"] + clock.seconds["finish"]
    result = {
        **{k: spec[k] for k in ("kind", "queue", "batch_size")}, "rate": spec.get("rate"),
        "stats": stats, "images": images, "stages": {**clock.seconds, "workers cpu": workers},
        "batches": len(source.sizes),
        "mean_batch": float(np.mean(source.sizes)) if source.sizes else 0.0,
        "busy_ips": images / busy if busy else 0.0,
        "other_cores": meter.other_cores, "runtime": col.embedder.runtime,
        "active": col.store.counts()["active"],
    }
    col.close()
    shutil.rmtree(col.path.parent, ignore_errors=True)
    return result


def own_cpu() -> float:
    """CPU seconds of this process and of its children that have exited (the index's decoding
    processes, once its pool is shut down), not of those still running (moto)."""
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                  resource.getrusage(resource.RUSAGE_CHILDREN)))


def timed_index(col: Any, root: str, servers: Sequence[int] = ()) -> dict[str, Any]:
    """``Collection.index([root])`` with its defaults, timed: images/s, and the cores it (with
    its decoding processes) and the ``servers`` used meanwhile."""
    col.embedder  # noqa: B018 - load the model before the clock starts
    cpu0, servers0 = own_cpu(), cpu_seconds(servers)
    with Meter() as meter:
        started = time.perf_counter()
        report = col.index([root], show_progress=False)
        wall = time.perf_counter() - started
    cpu1, servers1 = own_cpu(), cpu_seconds(servers)
    return {"images": report.added, "failed": len(report.failed), "seconds": report.seconds,
            "other_cores": meter.other_cores, "runtime": col.embedder.runtime,
            "walk_seconds": report.stage_seconds.get("walk", 0.0),
            "cores": cores(cpu1 - cpu0, [b - a for a, b in zip(servers0, servers1, strict=True)],
                           wall)}


def run_index(spec: dict[str, Any]) -> dict[str, Any]:
    """`lookalike index` of the photo folder into a new collection, with its defaults."""
    from lookalike import Collection

    work = Path(tempfile.mkdtemp(prefix="stream-index-", dir=spec["tmp"]))
    try:
        col = Collection.create(work / "collection")
        result = {**timed_index(col, spec["folder"]), "source": "folder"}
        ids = [col.find(os.path.abspath(p)) for p in spec["paths"]]
        if spec.get("vectors_out"):  # what the poller searches with, in the photos' order
            np.save(spec["vectors_out"], np.stack([col.store.vector(i) for i in ids]))
        col.close()
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_index_s3(spec: dict[str, Any]) -> dict[str, Any]:
    """`lookalike index s3://bucket/prefix/` into a new collection, with its defaults, of the
    same photos PUT to moto's S3 first (not timed); this process reads moto as the consumer
    does (its environment, which the decoding processes inherit)."""
    from lookalike import Collection

    work = Path(tempfile.mkdtemp(prefix="stream-index-s3-", dir=spec["tmp"]))
    try:
        with Servers("s3") as servers:
            s3, bucket = servers.moto.client("s3"), servers.moto.bucket()
            objects = keys_for(spec["paths"])
            with ThreadPoolExecutor(PUT_THREADS) as pool:
                list(pool.map(lambda item: s3.put_object(Bucket=bucket, Key=item[0],
                                                         Body=item[1]), objects))
            col = Collection.create(work / "collection")
            result = {**timed_index(col, f"s3://{bucket}/uploads/",
                                    [servers.moto.handle.process.pid]), "source": "s3"}
            col.close()
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_moto_probe(spec: dict[str, Any]) -> dict[str, Any]:
    """What one SQS ReceiveMessage (10 messages) costs moto with N messages queued."""
    with Servers("sqs") as servers:
        sqs = servers.moto.client("sqs")
        body = "x" * 1000  # about the size of an S3 notification
        found = {}
        for depth in spec["depths"]:
            url, _ = servers.moto.queue(visibility=60, max_receives=5)
            for start in range(0, depth, 10):
                sqs.send_message_batch(QueueUrl=url, Entries=[
                    {"Id": str(i), "MessageBody": body} for i in range(min(10, depth - start))])
            laps = []
            for _ in range(5):  # received messages stay in the queue, invisible, as in a run
                started = time.perf_counter()
                sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)
                laps.append(time.perf_counter() - started)
            found[str(depth)] = 1000 * float(np.median(laps))
    return {"receive_ms": found}


def latency_summary(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {}
    values = np.asarray(seconds)
    return {"p50": float(np.percentile(values, 50)), "p99": float(np.percentile(values, 99)),
            "max": float(values.max())}


def cores(consumer: float, others: list[float], wall: float) -> list[float]:
    """CPU cores used over ``wall``: the consumer (this process but for the producer and the
    poller threads), the producer and poller, moto, and the broker if there is one."""
    return [c / wall for c in (consumer, *others)]


# -- the parent: runs the configurations and prints the tables -----------------------------------


def photo_folder(count: int) -> list[Path]:
    """A folder holding exactly the first ``count`` photos of photos-2000 (hard links)."""
    source = ensure_photos(max(2000, count))[:count]
    folder = OUT / f"stream-photos-{count}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for path in source:
        link = folder / path.name
        if not link.exists():
            os.link(path, link)
        paths.append(link)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queues", default="sqs,kafka", help="default sqs,kafka")
    parser.add_argument("--slow-events", type=int, default=20,
                        help="events sent at 1 per second (default 20)")
    parser.add_argument("--fast-seconds", type=float, default=15.0,
                        help="seconds of events at 100 per second (default 15: 1,500 events)")
    parser.add_argument("--backlog", type=int, default=1000,
                        help="events in the pre-filled queue drained as fast as possible "
                        "(default 1000)")
    parser.add_argument("--batch-sizes", default="32,64",
                        help="consumer batch sizes for the backlog (default 32,64); the timed "
                        "rates use 32, the default of `lookalike consume`")
    parser.add_argument("--drain-timeout", type=float, default=120.0,
                        help="seconds after the last PUT to wait for the rest (default 120)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 8 slow events, 3 s at 100/s, a backlog of 300, batch 32")
    args = parser.parse_args()
    if args.quick:
        args.slow_events, args.fast_seconds, args.backlog, args.batch_sizes = 8, 3.0, 300, "32"
    queues = [q for q in args.queues.split(",") if q]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    fast = round(100 * args.fast_seconds)
    count = max(fast, args.backlog, args.slow_events)

    load_before = os.getloadavg()[0]
    started = time.monotonic()
    OUT.mkdir(parents=True, exist_ok=True)
    paths = photo_folder(count)
    spares = ensure_photos(2000)[-WARMUP_PHOTOS:]  # the warm-up photos, none of the N measured
    if count > 2000 - WARMUP_PHOTOS:
        parser.error(f"at most {2000 - WARMUP_PHOTOS} events: the last photos of photos-2000 "
                     "warm the consumer up")
    with tempfile.TemporaryDirectory(dir=OUT, prefix="stream-") as tmp:
        vectors = f"{tmp}/vectors.npy"
        index_spec = {"kind": "index", "folder": str(paths[0].parent),
                      "paths": [str(p) for p in paths], "tmp": tmp}
        indexes = [run_index_child({**index_spec, "vectors_out": vectors})]
        s3_index = run_index_child({**index_spec, "kind": "index-s3"})
        base = {"tmp": tmp, "vectors": vectors, "drain_timeout": args.drain_timeout,
                "warmup": [str(p) for p in spares]}
        rates, backlogs = [], []
        for queue in queues:
            for rate, events in ((1, args.slow_events), (100, fast)):
                spec = {**base, "kind": "rate", "queue": queue, "rate": rate, "batch_size": 32,
                        "paths": [str(p) for p in paths[:events]]}
                rates.append(run_child(__file__, spec))
                log(f"stream: {describe(rates[-1])}")
            for batch_size in batch_sizes:
                spec = {**base, "kind": "backlog", "queue": queue, "batch_size": batch_size,
                        "paths": [str(p) for p in paths[:args.backlog]]}
                backlogs.append(run_child(__file__, spec))
                log(f"stream: {describe(backlogs[-1])}")
        indexes.append(run_index_child(index_spec))  # again: has the machine's load changed?
        moto = run_child(__file__, {"kind": "moto", "depths": sorted({100, args.backlog, fast})})
    report(indexes, s3_index, rates, backlogs, moto, load_before, os.getloadavg()[0],
           time.monotonic() - started)


def run_index_child(spec: dict[str, Any]) -> dict[str, Any]:
    result = run_child(__file__, spec)
    moto = f", moto {result['cores'][1]:.2f} cores" if result["source"] == "s3" else ""
    log(f"stream: lookalike index ({result['source']}): "
        f"{result['images'] / result['seconds']:.1f} images/s ({result['runtime']}, "
        f"index {result['cores'][0]:.2f} cores{moto}, other processes: "
        f"{result['other_cores']:.2f} cores; listing {result['walk_seconds']:.2f} s of "
        f"{result['seconds']:.1f} s)")
    if result["failed"] or result["images"] != len(spec["paths"]):
        log(f"stream: lookalike index ({result['source']}): {result['images']} images added, "
            f"{result['failed']} failed, of {len(spec['paths'])} (!)")
    return result


def describe(result: dict[str, Any]) -> str:
    if result["kind"] == "rate":
        lat = result["latency"]
        return (f"{result['queue']} at {result['rate']}/s: {result['found']}/{result['events']} "
                f"searchable, p50 {lat.get('p50', float('nan')):.2f} s, "
                f"p99 {lat.get('p99', float('nan')):.2f} s")
    return (f"{result['queue']} backlog of {result['events']}, batch {result['batch_size']}: "
            f"{result['drain_ips']:.1f} images/s ({result['steady_ips']:.1f} steady)")


def _cores(result: dict[str, Any]) -> str:
    """consumer / producer + poller / moto / broker, in cores ('-' where there is none)."""
    values = [*result["cores"], None, None][:4]
    if result["kind"] == "backlog":
        values.insert(1, None)
        values = values[:4]
    return " / ".join("-" if v is None else f"{v:.2f}" for v in values)


def _per_image(result: dict[str, Any], stage: str) -> float:
    return 1000 * result["stages"].get(stage, 0.0) / max(1, result["images"])


def _nan(values: dict[str, float], key: str) -> float:
    return values.get(key, float("nan"))


def report(indexes: list[dict[str, Any]], s3_index: dict[str, Any], rates: list[dict[str, Any]],
           backlogs: list[dict[str, Any]], moto: dict[str, Any], load_before: float,
           load_after: float, seconds: float) -> None:
    index = max(indexes, key=lambda r: r["images"] / r["seconds"])
    index_ips = index["images"] / index["seconds"]
    s3_ips = s3_index["images"] / s3_index["seconds"]
    print(f"## Live ingestion from a queue ({machine()})\n")
    print(f"Model: the default (efficientnet-lite0-gem) on {index['runtime']} (what `auto` "
          "picked). Photos: the first N of photos-2000 (real photos, >= 1 MP JPEGs, all "
          "distinct). Consumer: `lookalike.stream.Consumer.run` in a thread of the benchmark "
          "process, `lookalike consume`'s defaults unless said: batch 32, 2 s receive wait, "
          "pipelined (the next batch is received, and its images fetched from S3 and decoded "
          f"in {os.cpu_count()} worker processes, while the one before is embedded and "
          "committed); warmed up with a few photos, not measured, before any clock starts. "
          "S3 and SQS: moto's server, which sends the S3 notifications to SQS itself. Kafka: a "
          "Tansu broker, one partition; moto has no S3-to-Kafka bridge, so after each PUT the "
          "benchmark produces that object's S3 event notification to the topic, as an S3-to-Kafka "
          "connector or a forwarding Lambda would. Everything runs on this machine. 1-minute "
          f"load average {load_before:.2f} before the run, {load_after:.2f} after "
          f"({seconds / 60:.1f} min).\n")

    print("### PUT to searchable\n")
    rows = []
    for r in rates:
        lat = r["latency"]
        verdict = ""
        if r["rate"] == 100:
            verdict = "**yes**" if _nan(lat, "p99") <= P99_TARGET_S else "**no**"
        rows.append([
            r["queue"], f"{r['rate']}/s", f"{r['events']:,}",
            f"{r['sent_rate']:.1f} ({r['put_ms_p50']:.0f} ms)"
            + (" (!)" if r["sent_rate"] < 0.9 * r["rate"] else ""),
            f"{r['found']:,}" + ("" if r["found"] == r["events"] else " (!)"),
            f"{_nan(lat, 'p50'):.2f} / {_nan(lat, 'p99'):.2f} / {_nan(lat, 'max'):.2f}", verdict,
            f"{r['end_to_end_ips']:.1f}", f"{r['busy_ips']:.1f}",
            f"{r['behind_at_last_put']:,}", f"{r['drain_seconds']:.1f}", _cores(r),
            f"{r['other_cores']:.2f}"])
    print(table(["queue", "rate", "events", "sent/s (PUT p50)", "searchable",
                 "PUT→searchable s p50 / p99 / max", f"p99 ≤ {P99_TARGET_S:.0f} s",
                 "end-to-end img/s", "consumer img/s (busy)", "not searchable at last PUT",
                 "drain after last PUT s", "CPU cores: consumer / producer + poller / moto / "
                 "broker", "other load"], rows))
    print("\nLatency: from the PUT's return to the first search whose top hit is the photo. "
          "End-to-end img/s: photos searchable / (last searchable - first PUT). Consumer img/s "
          "(busy): images / the consumer thread's time outside receive (reading the events, "
          "submitting the fetches, waiting for the decoded images, embedding, committing, "
          "acknowledging); the decoding processes work beside it. 'Not searchable at last "
          "PUT': the "
          "backlog when the producer stopped (at 1/s: the last photo itself). Pipelined: with a "
          "batch in hand, the consumer receives only what has already arrived (no wait) before "
          "it finishes that batch, so no batch waits for the next messages. CPU: the "
          "consumer is the benchmark process less the PUT threads and the poller, whose own "
          "thread CPU time is the second number, plus its decoding processes; moto serves the "
          "PUTs, the consumer's GETs and SQS. 'Other load': CPU other processes on the machine "
          "used meanwhile, in cores. "
          "(!) after sent/s: the PUTs could not keep to the schedule (moto too slow).\n")

    print("### Sustained throughput: draining a pre-filled queue, against `lookalike index`\n")
    def index_cores(r: dict[str, Any]) -> str:
        moto = f"{r['cores'][1]:.2f}" if len(r["cores"]) > 1 else "-"
        return f"{r['cores'][0]:.2f} / - / {moto} / -"

    rows = [[f"`lookalike index` (local folder, defaults), {when} run", "32",
             f"{r['images']:,}", f"{r['images'] / r['seconds']:.1f}", "", "", "", "-", "-",
             index_cores(r), f"{r['other_cores']:.2f}"]
            for when, r in zip(("first", "last"), indexes, strict=True)]
    rows.append(["`lookalike index s3://…` (the same photos in moto's S3, defaults)", "32",
                 f"{s3_index['images']:,}", f"{s3_ips:.1f}", "", "", "", "-", "-",
                 index_cores(s3_index), f"{s3_index['other_cores']:.2f}"])
    for r in backlogs:
        ratio = r["steady_ips"] / index_ips
        rows.append([f"consumer, {r['queue']}", r["batch_size"], f"{r['drained']:,}",
                     f"{r['drain_ips']:.1f}", f"{r['steady_ips']:.1f}",
                     f"{ratio:.0%} (**{'yes' if ratio >= INDEX_TARGET else 'no'}**)",
                     f"{r['steady_ips'] / s3_ips:.0%}",
                     f"{r['startup_seconds']:.1f}", f"{r['mean_batch']:.1f}", _cores(r),
                     f"{r['other_cores']:.2f}"])
    print(table(["ingestion", "batch", "images", "images/s", "steady images/s",
                 f"steady vs the faster local index (≥ {INDEX_TARGET:.0%})",
                 "steady vs index from S3", "start-up s", "mean batch",
                 "CPU cores: consumer or index / - / moto / broker", "other load"], rows))
    print("\n`lookalike index` runs first and last, on the same photos from a local folder, "
          "decoding in worker processes while the model runs; the target compares with the "
          "faster of the two. `lookalike index s3://…` runs once (after the first), on the same "
          "photos PUT to a bucket of moto's S3 beforehand (not timed): its decoding processes "
          "GET every image from moto, on these same cores, as the consumer's do, so the "
          "consumer against it leaves out what reading from moto rather than local files costs. "
          "Index images/s: images / `IngestReport.seconds` (listing, starting the decoding "
          "processes, decoding, embedding, writing); its CPU cores: the index process and its "
          "decoding processes. Consumer images/s: images / "
          "(last commit - first batch in hand); the start-up before it (Kafka: joining the "
          "group) is shown apart. Steady: from the first commit to the last but one, so neither "
          "the first batch nor a short last one counts. "
          "The consumer's decoding processes were started (on local files) before its clock, "
          "as a long-running consumer's are; the index's start its own.\n")

    print("### Where the consumer's time goes (ms per image)\n")
    rows = []
    for r in [*rates, *backlogs]:
        name = (f"{r['queue']} {r['rate']}/s" if r["kind"] == "rate"
                else f"{r['queue']} backlog, batch {r['batch_size']}")
        stage = {k: _per_image(r, k) for k in ("receive", "held", "lag", "begin", "prepare",
                                                "embed", "finish", "commit", "ack",
                                                "workers cpu")}
        other = stage["finish"] - stage["prepare"] - stage["commit"] - stage["ack"]
        rows.append([name, r["batches"], f"{r['mean_batch']:.1f}", f"{stage['receive']:.1f}",
                     f"{stage['held']:.1f}", f"{stage['lag']:.1f}", f"{stage['begin']:.1f}",
                     f"{stage['prepare'] - stage['embed']:.1f}", f"{stage['embed']:.1f}",
                     f"{stage['commit']:.1f}", f"{stage['ack']:.1f}", f"{other:.1f}",
                     f"{stage['workers cpu']:.1f}"])
    print(table(["configuration", "batches", "mean batch", "receive (incl. wait)",
                 "a batch in hand waits on receive", "lag query",
                 "read events + submit fetches", "wait for fetch + decode", "embed", "commit",
                 "ack", "other", "fetch + decode CPU (worker processes)"], rows))
    print("\nWall time of the consumer thread in each stage, summed over the batches, divided "
          "by the images (the warm-up left out), except the last column. The consumer is "
          "pipelined: while it embeds and commits a batch, its worker processes fetch (S3 GET) "
          "and decode the next one, so fetching and decoding cost the thread only the wait for "
          "results the model is not yet done without ('wait for fetch + decode': `_prepare` "
          "less the model call). Receive: the calls that returned messages, waiting included. "
          "'A batch in hand waits on receive': every receive made while a batch already begun "
          "was not finished yet (empty ones too); such a receive takes only what has arrived, "
          "without waiting. Lag query: the queue's backlog, asked every 5 s after a receive. Read "
          "events + submit fetches: the rest of `_begin` (the events' positions in the store, "
          "the fetches handed to the workers, and the collection's upkeep every minute). "
          "Other: the rest of "
          "`_finish` (the writer lock, the store's look-ups, dead letters). Last column: CPU "
          "time of the decoding processes (S3 GET, hash, decode, resize, pickling the pixels "
          "back), from /proc; they run beside the thread, on the same cores.")
    print("\n### The fake SQS: what moto's ReceiveMessage costs\n")
    print(table(["messages queued", *moto["receive_ms"]],
                [["ReceiveMessage (10 messages) ms, median of 5",
                  *(f"{v:.0f}" for v in moto["receive_ms"].values())]]))
    print("\nmoto scans its whole queue on every ReceiveMessage, in one Python process that also "
          "serves the PUTs and GETs: once a backlog builds up, the SQS rows above measure moto "
          "more than the consumer. Amazon SQS does not slow down with the queue's depth.")
    odd = [f"{describe(r)}: consumer stats {r['stats']}" for r in [*rates, *backlogs]
           if r["stats"]["failed"] or r["stats"]["dead_lettered"] or r["stats"]["retried"]
           or (r["kind"] == "rate" and r["found"] != r["events"])]
    if odd:
        print("\n### Problems\n")
        print("\n".join(f"- {line}" for line in odd))


if __name__ == "__main__":
    child = child_spec(sys.argv)
    if child is None:
        main()
    else:
        runs = {"index": run_index, "index-s3": run_index_s3, "rate": run_rate,
                "backlog": run_backlog, "moto": run_moto_probe}
        reply(runs[child["kind"]](child))
