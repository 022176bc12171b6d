"""Live ingestion from a queue (`lookalike consume`), against real servers: moto's S3 and SQS,
and a Tansu broker speaking the Kafka protocol (see cloud.py). At least once in delivery, once in
effect: redelivered, duplicated, late and out-of-order events leave every image indexed once."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import numpy as np
import pytest
from PIL import Image

import cloud
from conftest import TINY
from lookalike import Collection
from lookalike.queues import open_source
from lookalike.stream import Consumer, PoisonMessage, consume_in_thread, fetching, parse

HERE = Path(__file__).parent


def photo(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = (rng.random((48, 64, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def s3_event(op: str, bucket: str, key: str, sequencer: str | None = None) -> bytes:
    obj: dict[str, Any] = {"key": quote_plus(key), "size": 1, "eTag": "0"}
    if sequencer:
        obj["sequencer"] = sequencer
    name = "ObjectCreated:Put" if op == "upsert" else "ObjectRemoved:Delete"
    return json.dumps({"Records": [{"eventSource": "aws:s3", "eventName": name,
                                    "s3": {"bucket": {"name": bucket}, "object": obj}}]}).encode()


@dataclass
class Bus:
    """A queue of one kind, as a test sees it."""

    spec: str
    send: Callable[[list[bytes]], None]
    dead: Callable[[int], list[tuple[bytes, str]]]  # the first n dead letters, with reasons


@pytest.fixture
def aws(moto: cloud.MotoServer, monkeypatch: pytest.MonkeyPatch) -> cloud.MotoServer:
    for name, value in moto.env.items():
        monkeypatch.setenv(name, value)
    return moto


def _sqs_bus(moto: cloud.MotoServer) -> Bus:
    # A short visibility timeout: a message a killed consumer held comes back in seconds.
    url, dlq = moto.queue(visibility=4, max_receives=10)
    sqs = moto.client("sqs")

    def send(bodies: list[bytes]) -> None:
        for body in bodies:
            sqs.send_message(QueueUrl=url, MessageBody=body.decode())

    def dead(n: int) -> list[tuple[bytes, str]]:
        found: list[tuple[bytes, str]] = []
        deadline = time.monotonic() + 30
        while len(found) < n and time.monotonic() < deadline:
            for m in sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                         MessageAttributeNames=["All"]).get("Messages", []):
                reason = m.get("MessageAttributes", {}).get("lookalike-reason", {})
                found.append((m["Body"].encode(), reason.get("StringValue", "")))
        return found

    return Bus(f"sqs://{url}", send, dead)


def _kafka_bus(kafka: cloud.KafkaBroker) -> Bus:
    topic = kafka.topic()
    producer = kafka.producer()

    def send(bodies: list[bytes]) -> None:
        for body in bodies:
            producer.produce(topic, body)
        assert producer.flush(10) == 0

    def dead(n: int) -> list[tuple[bytes, str]]:
        return [(m.value(), dict(m.headers())["lookalike-reason"].decode())
                for m in kafka.read_all(f"{topic}.dlq", n)]

    spec = (f"kafka://{kafka.address}/{topic}?group=g-{uuid.uuid4().hex[:8]}"
            "&session.timeout.ms=6000&heartbeat.interval.ms=500")
    return Bus(spec, send, dead)


@pytest.fixture(params=["sqs", "kafka"])
def bus(request: pytest.FixtureRequest, aws: cloud.MotoServer) -> Bus:
    if request.param == "sqs":
        return _sqs_bus(aws)
    return _kafka_bus(request.getfixturevalue("kafka"))


@pytest.fixture
def col(tmp_path: Path) -> Iterator[Collection]:
    with Collection.create(tmp_path / "live.lookalike", model=TINY) as collection:
        yield collection


def drain(consumer: Consumer, done: Callable[[], bool], timeout: float = 60.0) -> None:
    """Step ``consumer`` until ``done()``, then once more while the queue stays quiet."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out: {consumer.stats.as_dict()}"
        consumer.step()


def active(col: Collection) -> dict[str, int]:
    return {uri: r.id for uri, r in col.store.file_states().items() if r.status == "active"}


def put(aws: cloud.MotoServer, bucket: str, key: str, data: bytes) -> None:
    aws.client("s3").put_object(Bucket=bucket, Key=key, Body=data)


# -- the messages --------------------------------------------------------------------------

def test_messages_are_read_in_every_shape() -> None:
    plain = s3_event("upsert", "b", "a dir/x+y é.jpg", "0055AED6DCD90281E5")
    [event] = parse(plain)
    assert (event.op, event.uri) == ("upsert", "s3://b/a dir/x+y é.jpg")
    assert event.position == "0055AED6DCD90281E5".rjust(64, "0")
    sns = json.dumps({"Type": "Notification", "Message": plain.decode()}).encode()
    assert parse(sns) == [event]
    bridge = json.dumps({"source": "aws.s3", "detail-type": "Object Deleted", "detail": {
        "bucket": {"name": "b"}, "object": {"key": "k.jpg", "sequencer": "1f"}}}).encode()
    [gone] = parse(bridge)
    assert (gone.op, gone.uri, gone.position) == ("delete", "s3://b/k.jpg", "1F".rjust(64, "0"))
    assert parse(b'{"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"}') == []
    assert parse(s3_event("upsert", "b", "notes/readme.txt")) == []  # not an image name
    [op] = parse(b'{"op": "upsert", "uri": "/p/x.jpg", "metadata": {"a": 1}, "sequencer": 7}')
    assert (op.metadata, op.position) == ({"a": 1}, "7".rjust(64, "0"))
    # Shorter sequencers compare as the smaller numbers they are (left-padded, as S3 says).
    assert parse(s3_event("upsert", "b", "k.jpg", "FF"))[0].position < event.position  # type: ignore[operator]
    for bad in (b"not json", b"[1]", b'{"op": "move", "uri": "x"}', b'{"op": "upsert"}',
                b'{"hello": 1}', s3_event("upsert", "b", "k.jpg", "xyz"),
                b'{"op": "upsert", "uri": "x", "vector": [1, "a"], "fingerprint": "f"}'):
        with pytest.raises(PoisonMessage):
            parse(bad)


# -- S3 notifications through SQS ---------------------------------------------------------

def test_s3_notifications_keep_a_collection_in_step(aws: cloud.MotoServer,
                                                   col: Collection) -> None:
    bucket = aws.bucket()
    bus = _sqs_bus(aws)
    aws.notify(bucket, bus.spec.removeprefix("sqs://"))  # real notifications, and a TestEvent
    keys = ["in/a b.jpg", "in/plus+sign.jpg", "in/ünï.jpg", "in/gone.jpg"]
    for n, key in enumerate(keys):
        put(aws, bucket, key, photo(n))
    put(aws, bucket, "in/broken.jpg", b"not an image")
    aws.client("s3").delete_object(Bucket=bucket, Key="in/gone.jpg")
    consumer = Consumer(col, open_source(bus.spec), batch_size=4, wait=1.0, workers=1)
    expected = {f"s3://{bucket}/{k}" for k in keys[:3]}
    drain(consumer, lambda: set(active(col)) == expected and consumer.stats.failed == 1)
    [failed] = col.store.failures()
    assert failed.uri == f"s3://{bucket}/in/broken.jpg" and "not an image" in (failed.error or "")
    hit = col.search(photo(1), k=1)[0]
    assert hit.uri == f"s3://{bucket}/in/plus+sign.jpg" and hit.score > 0.99
    record = col.store.find_uri(f"s3://{bucket}/in/a b.jpg")
    assert record is not None and record.etag and record.size == len(photo(0))
    # An object overwritten and then deleted: the newer bytes, then nothing.
    put(aws, bucket, "in/a b.jpg", photo(10))
    drain(consumer, lambda: col.search(photo(10), k=1)[0].uri == f"s3://{bucket}/in/a b.jpg")
    aws.client("s3").delete_object(Bucket=bucket, Key="in/a b.jpg")
    drain(consumer, lambda: f"s3://{bucket}/in/a b.jpg" not in active(col))
    assert all(h.uri != f"s3://{bucket}/in/a b.jpg" for h in col.search(photo(10), k=5))
    assert consumer.stats.dead_lettered == 0
    assert col.verify().ok


def test_an_object_deleted_before_its_event_is_consumed_is_skipped(
        aws: cloud.MotoServer, col: Collection) -> None:
    bucket = aws.bucket()
    bus = _sqs_bus(aws)
    put(aws, bucket, "late.jpg", photo(3))
    aws.client("s3").delete_object(Bucket=bucket, Key="late.jpg")
    bus.send([s3_event("upsert", bucket, "late.jpg")])
    consumer = Consumer(col, open_source(bus.spec), wait=1.0, workers=0)
    drain(consumer, lambda: consumer.stats.skipped == 1)
    assert active(col) == {} and col.store.failures() == []
    assert consumer.stats.dead_lettered == consumer.stats.retried == 0


# -- both queues ---------------------------------------------------------------------------

def test_duplicates_and_out_of_order_events_apply_once(bus: Bus, aws: cloud.MotoServer,
                                                       col: Collection) -> None:
    bucket = aws.bucket()
    for n in range(3):
        put(aws, bucket, f"k{n}.jpg", photo(20 + n))
    # k0: created, then the same event delivered twice more. k1: its delete (later sequencer)
    # arrives before its create. k2: created, then an older create arrives late.
    bus.send([s3_event("upsert", bucket, "k0.jpg", "0A"),
              s3_event("upsert", bucket, "k0.jpg", "0A"),
              s3_event("delete", bucket, "k1.jpg", "0C"),
              s3_event("upsert", bucket, "k2.jpg", "0E")])
    consumer = Consumer(col, open_source(bus.spec), batch_size=2, wait=1.0, workers=0)
    drain(consumer, lambda: consumer.stats.messages >= 4)
    first = active(col)
    assert set(first) == {f"s3://{bucket}/k0.jpg", f"s3://{bucket}/k2.jpg"}
    bus.send([s3_event("upsert", bucket, "k1.jpg", "0B"),
              s3_event("upsert", bucket, "k2.jpg", "0D"),
              s3_event("upsert", bucket, "k0.jpg", "0A")])
    drain(consumer, lambda: consumer.stats.messages >= 7)
    assert active(col) == first  # same ids: nothing re-written
    assert col.store.counts() == {"active": 2, "failed": 0, "removed": 0}
    # A newer event for k1 brings it in; a delete without a sequencer takes k0 out.
    bus.send([s3_event("upsert", bucket, "k1.jpg", "0F"),
              json.dumps({"op": "delete", "uri": f"s3://{bucket}/k0.jpg"}).encode()])
    drain(consumer, lambda: consumer.stats.messages >= 9)
    assert set(active(col)) == {f"s3://{bucket}/k1.jpg", f"s3://{bucket}/k2.jpg"}
    assert consumer.stats.stale >= 3 and consumer.stats.dead_lettered == 0


def test_poison_and_foreign_vectors_go_to_dead_letters(bus: Bus, aws: cloud.MotoServer,
                                                       col: Collection) -> None:
    bucket = aws.bucket()
    put(aws, bucket, "good.jpg", photo(30))
    foreign = {"op": "upsert", "uri": f"s3://{bucket}/x.jpg", "vector": [0.125] * col.dim,
               "fingerprint": "some-other-model:graph1", "content_hash": "00"}
    mine = {**foreign, "uri": f"s3://{bucket}/mine.jpg", "fingerprint":
            col.manifest.model.fingerprint, "content_hash": "ab" * 16, "size": 5,
            "metadata": {"sku": "A-1"}}
    bus.send([b"{not json", json.dumps(foreign).encode(), s3_event("upsert", bucket, "good.jpg"),
              json.dumps(mine).encode()])
    consumer = Consumer(col, open_source(bus.spec), wait=1.0, workers=0)
    drain(consumer, lambda: consumer.stats.messages >= 4)
    assert set(active(col)) == {f"s3://{bucket}/good.jpg", f"s3://{bucket}/mine.jpg"}
    image_id = active(col)[f"s3://{bucket}/mine.jpg"]
    assert col.details(image_id).metadata == {"sku": "A-1"}
    np.testing.assert_allclose(col.store.vector(image_id), np.full(col.dim, col.dim ** -0.5),
                               rtol=1e-6)
    letters = dict(bus.dead(2))
    assert "not JSON" in letters[b"{not json"]
    assert "some-other-model" in letters[json.dumps(foreign).encode()]
    assert consumer.stats.dead_lettered == 2


def denied_for(monkeypatch: pytest.MonkeyPatch, uri: str, times: int) -> dict[str, int]:
    """Make reading ``uri`` fail as access denied does, ``times`` times: what moto cannot
    produce (it checks no permissions). The consumer's fetching runs in threads here."""
    real, left = fetching.fetch, {"left": times}

    def flaky(fetched: str, *args: Any) -> fetching.Fetched:
        if fetched == uri and left["left"]:
            left["left"] -= 1
            return fetching.Fetched(retry=f"{uri}: access denied (AccessDenied)")
        return real(fetched, *args)

    monkeypatch.setattr(fetching, "fetch", flaky)
    return left


def test_a_failure_that_may_pass_is_retried_then_dead_lettered(
        bus: Bus, aws: cloud.MotoServer, col: Collection,
        monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = aws.bucket()
    put(aws, bucket, "far.jpg", photo(40))
    denied_for(monkeypatch, f"s3://{bucket}/far.jpg", 10)
    mine = {"op": "upsert", "uri": "s3://elsewhere/near.jpg", "content_hash": "cd" * 16,
            "vector": [1.0] + [0.0] * (col.dim - 1), "fingerprint": col.manifest.model.fingerprint}
    bus.send([s3_event("upsert", bucket, "far.jpg"), json.dumps(mine).encode()])
    consumer = Consumer(col, open_source(bus.spec), wait=1.0, max_attempts=2, workers=0)
    drain(consumer, lambda: consumer.stats.dead_lettered == 1)
    assert set(active(col)) == {"s3://elsewhere/near.jpg"}  # the stream went on
    [(body, reason)] = bus.dead(1)
    assert b"far.jpg" in body and "failed 2 times" in reason and "AccessDenied" in reason
    assert consumer.stats.retried >= 1


def test_an_object_store_outage_pauses_consuming_and_dead_letters_nothing(
        bus: Bus, aws: cloud.MotoServer, col: Collection,
        monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = aws.bucket()
    put(aws, bucket, "later.jpg", photo(41))
    bus.send([s3_event("upsert", bucket, "later.jpg")])
    # The object store is down (nothing listens there); the queue is not.
    monkeypatch.setenv("LOOKALIKE_S3_ENDPOINT_URL", f"http://127.0.0.1:{cloud.free_port()}")
    consumer = Consumer(col, open_source(bus.spec), wait=0.5, max_attempts=2, workers=0)
    thread, stop = consume_in_thread(consumer)
    try:
        deadline = time.monotonic() + 30
        while "cannot reach the object store" not in (consumer.stats.last_error or ""):
            assert time.monotonic() < deadline and thread.is_alive(), consumer.stats.as_dict()
            time.sleep(0.2)
        time.sleep(3.0)  # down for longer than max_attempts deliveries would take
        assert consumer.stats.dead_lettered == 0 and active(col) == {}
        monkeypatch.setenv("LOOKALIKE_S3_ENDPOINT_URL", aws.url)  # back
        while set(active(col)) != {f"s3://{bucket}/later.jpg"}:
            assert time.monotonic() < deadline + 30, consumer.stats.as_dict()
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join(30)
    assert consumer.stats.dead_lettered == 0 and col.store.counts()["active"] == 1


def test_local_paths_are_read_only_under_the_folders_allowed(
        aws: cloud.MotoServer, col: Collection, tmp_path: Path) -> None:
    allowed = tmp_path / "shared"
    allowed.mkdir()
    (allowed / "ok.jpg").write_bytes(photo(42))
    (tmp_path / "secret.jpg").write_bytes(photo(43))
    (allowed / "link.jpg").symlink_to(tmp_path / "secret.jpg")  # out of the folder
    bus = _sqs_bus(aws)
    named = [str(allowed / "ok.jpg"), str(tmp_path / "secret.jpg"), str(allowed / "link.jpg"),
             f"{allowed}/../secret.jpg", "relative/x.jpg"]
    bus.send([json.dumps({"op": "upsert", "uri": uri}).encode() for uri in named])
    consumer = Consumer(col, open_source(bus.spec), wait=1.0, workers=0, allow_paths=[allowed])
    drain(consumer, lambda: consumer.stats.messages >= len(named))
    assert set(active(col)) == {str(allowed / "ok.jpg")}
    letters = bus.dead(4)
    assert len(letters) == 4 and all("--allow-path" in reason for _, reason in letters)
    # Without --allow-path no local file is read at all.
    other = _sqs_bus(aws)
    other.send([json.dumps({"op": "upsert", "uri": str(allowed / "ok.jpg")}).encode()])
    closed = Consumer(col, open_source(other.spec), wait=1.0, workers=0)
    drain(closed, lambda: closed.stats.dead_lettered == 1)


def test_a_retry_on_kafka_keeps_the_order_of_what_follows(
        kafka: cloud.KafkaBroker, aws: cloud.MotoServer, col: Collection,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """While a batch is committed the next one is already received: when the first must be
    retried, the partition is rewound and the second, received too early, is not applied."""
    bucket = aws.bucket()
    uris = [f"s3://{bucket}/r{n}.jpg" for n in range(4)]
    for n in range(4):
        put(aws, bucket, f"r{n}.jpg", photo(60 + n))
    failures = denied_for(monkeypatch, uris[1], 2)
    bus = _kafka_bus(kafka)
    op = {"op": "delete", "uri": uris[1]}  # no sequencer: arrival order decides
    bus.send([s3_event("upsert", bucket, "r0.jpg"), s3_event("upsert", bucket, "r1.jpg"),
              b"{poison", s3_event("upsert", bucket, "r2.jpg"), json.dumps(op).encode(),
              s3_event("upsert", bucket, "r3.jpg")])
    consumer = Consumer(col, open_source(bus.spec), batch_size=1, wait=0.5, workers=0)
    thread, stop = consume_in_thread(consumer)
    try:
        deadline = time.monotonic() + 60
        while set(active(col)) != {uris[0], uris[2], uris[3]} or failures["left"]:
            assert time.monotonic() < deadline, (active(col), consumer.stats.as_dict())
            time.sleep(0.2)
        time.sleep(1.0)  # and it stays so
    finally:
        stop.set()
        thread.join(30)
    assert set(active(col)) == {uris[0], uris[2], uris[3]}
    # The poison message, received ahead and dropped with its batch, is dead-lettered once.
    assert consumer.stats.retried == 2 and consumer.stats.dead_lettered == 1
    assert col.store.counts()["active"] == 3 and col.verify().ok


def test_the_consumer_compacts_in_another_process_and_goes_on(
        aws: cloud.MotoServer, tmp_path: Path, sample_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOKALIKE_COMPACT_MIN_DELTA", "2")
    monkeypatch.setenv("LOOKALIKE_COMPACT_DELTA_FRACTION", "0")
    bucket = aws.bucket()
    bus = _sqs_bus(aws)
    photos = sorted(sample_dir.glob("*.jpg"))[:3]
    for path in photos:
        put(aws, bucket, path.name, path.read_bytes())
    bus.send([s3_event("upsert", bucket, p.name) for p in photos])
    # The default model: the compaction runs in a `lookalike compact` process.
    with Collection.create(tmp_path / "compacted.lookalike") as col:
        consumer = Consumer(col, open_source(bus.spec), wait=0.5, workers=0,
                            upkeep_seconds=0.0)
        thread, stop = consume_in_thread(consumer)
        try:
            deadline = time.monotonic() + 60
            # The compaction ran in a process of its own, which the consumer saw end (the
            # files show the new main index a moment before the consumer's next poll does).
            while not (consumer._compaction.completed >= 1 and col.info().main_vectors == 3
                       and col.info().delta_vectors == 0):
                assert time.monotonic() < deadline and thread.is_alive(), col.info()
                time.sleep(0.2)
        finally:
            stop.set()
            thread.join(30)
        hit = col.search(photos[0], k=1)[0]
        assert hit.uri == f"s3://{bucket}/{photos[0].name}" and col.verify().ok


# -- crashes -------------------------------------------------------------------------------

def _crash(col: Collection, spec: str, when: str, env: dict[str, str]) -> str:
    run = subprocess.run([sys.executable, str(HERE / "crashing_consumer.py"), str(col.path), spec,
                          when], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **env})
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
    return run.stdout


@pytest.mark.parametrize(("bus", "when"), [
    ("sqs", "before-commit"), ("sqs", "after-commit"), ("kafka", "after-commit"),
    pytest.param("kafka", "before-commit", marks=pytest.mark.slow),
], indirect=["bus"])
def test_kill_9_at_either_side_of_the_commit_loses_and_repeats_nothing(
        bus: Bus, aws: cloud.MotoServer, col: Collection, when: str) -> None:
    bucket = aws.bucket()
    keys = [f"c{n}.jpg" for n in range(5)]
    for n, key in enumerate(keys):
        put(aws, bucket, key, photo(50 + n))
    bus.send([s3_event("upsert", bucket, k) for k in keys])
    out = _crash(col, bus.spec, when, aws.env)
    col.indexes.committed()
    assert ("COMMITTED" in out) == (when == "after-commit")
    assert len(active(col)) == (5 if when == "after-commit" else 0)
    committed = active(col)
    # The batch comes again (SQS: after its visibility timeout; Kafka: from the last committed
    # offset, once the dead member's session has timed out).
    consumer = Consumer(col, open_source(bus.spec), wait=1.0, workers=0)
    drain(consumer, lambda: consumer.stats.messages >= 5)
    assert set(active(col)) == {f"s3://{bucket}/{k}" for k in keys}
    if committed:
        assert active(col) == committed  # redelivered, found unchanged: the same rows
        assert consumer.stats.unchanged == 5
    assert col.store.counts() == {"active": 5, "failed": 0, "removed": 0}
    assert col.verify().ok


# -- the command ---------------------------------------------------------------------------

def test_consume_command_stops_cleanly_on_sigterm(aws: cloud.MotoServer, tmp_path: Path,
                                                  sample_dir: Path) -> None:
    bucket = aws.bucket()
    bus = _sqs_bus(aws)
    folder = tmp_path / "real.lookalike"
    Collection.create(folder).close()  # the default model: a subprocess cannot load test-tiny
    photos = sorted(sample_dir.glob("*.jpg"))[:3]
    for path in photos:
        put(aws, bucket, path.name, path.read_bytes())
        bus.send([s3_event("upsert", bucket, path.name)])
    process = subprocess.Popen(
        [sys.executable, "-m", "lookalike", "consume", bus.spec, "-c", str(folder), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **aws.env})
    try:
        deadline = time.monotonic() + 120
        while True:
            with Collection.open(folder) as reader:
                if reader.info().images == len(photos):
                    break
            assert time.monotonic() < deadline and process.poll() is None, process.stderr
            time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, err
    report = json.loads(out)
    assert report["added"] == len(photos) and report["dead_lettered"] == 0
    sqs = aws.client("sqs")
    attributes = sqs.get_queue_attributes(QueueUrl=bus.spec.removeprefix("sqs://"),
                                          AttributeNames=["All"])["Attributes"]
    assert attributes["ApproximateNumberOfMessages"] == "0"
    assert attributes["ApproximateNumberOfMessagesNotVisible"] == "0"  # all acknowledged
    with Collection.open(folder) as reader:
        hit = reader.search(photos[1], k=1)[0]
        assert hit.uri == f"s3://{bucket}/{photos[1].name}" and reader.verify().ok


def test_queue_errors_say_what_to_do(aws: cloud.MotoServer, kafka: cloud.KafkaBroker) -> None:
    from lookalike.errors import QueueError, UsageError

    url, _ = aws.queue(dlq=False)
    with pytest.raises(UsageError, match="no dead-letter queue"):
        open_source(f"sqs://{url}")
    with pytest.raises(UsageError, match="No SQS queue"):
        open_source("sqs://no-such-queue")
    with pytest.raises(UsageError, match="needs a consumer group"):
        open_source(f"kafka://{kafka.address}/topic")
    with pytest.raises(UsageError, match="No Kafka topic"):
        open_source(f"kafka://{kafka.address}/absent?group=g")
    with pytest.raises(QueueError, match="Cannot reach Kafka"):
        open_source(f"kafka://127.0.0.1:{cloud.free_port()}/t?group=g", wait=2.0)
    with pytest.raises(UsageError, match="Unknown queue"):
        open_source("amqp://x/y")


def test_serve_consume_serves_and_consumes_in_one_process(aws: cloud.MotoServer, tmp_path: Path,
                                                          sample_dir: Path) -> None:
    import httpx

    from test_cli_serve import serve, stop

    bucket = aws.bucket()
    name = f"late-{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "served.lookalike"
    Collection.create(folder).close()
    # The queue does not exist yet: the server serves, and says why it does not consume.
    process, url = serve(folder, "--consume", f"sqs://{name}", "--batch-size", "8",
                         env=aws.env)
    try:
        consumer = httpx.get(f"{url}/stats").json()["consumer"]
        while not consumer["error"]:
            consumer = httpx.get(f"{url}/stats").json()["consumer"]
        assert not consumer["running"] and "No SQS queue" in consumer["error"]
        queue_url, _ = aws.queue(name, visibility=4, max_receives=10)
        aws.notify(bucket, queue_url)
        photo_path = sorted(sample_dir.glob("*.jpg"))[2]
        started = time.monotonic()
        put(aws, bucket, "new/upload.jpg", photo_path.read_bytes())
        while True:  # the upload becomes searchable through the same server
            hits = httpx.post(f"{url}/search/visual?k=1", content=photo_path.read_bytes(),
                              timeout=30).json()["results"]
            if hits and hits[0]["uri"] == f"s3://{bucket}/new/upload.jpg":
                break
            assert time.monotonic() - started < 60, httpx.get(f"{url}/stats").json()
            time.sleep(0.2)
        image_id = hits[0]["image_id"]
        assert httpx.get(f"{url}/images/{image_id}/file").content == photo_path.read_bytes()
        consumer = httpx.get(f"{url}/stats").json()["consumer"]
        assert consumer["added"] == 1 and consumer["running"] and consumer["error"] is None
    finally:
        stop(process)
