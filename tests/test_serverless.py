"""The stateless extractor through its real entry points: objects in a real S3 server (moto), the
event notifications that server sends to a real SQS queue read back as Lambda would get them, the
Lambda handler called as the runtime calls it (no emulator exists), the Cloud Run functions served
by functions-framework's own app, messages published to real SQS and Kafka, and POST /embed on the
HTTP API.

Every vector is checked against what a collection of the same model computes for the same bytes,
every fingerprint against that collection's manifest, and the consumer's own parser reads the
messages: a message the consumer takes must say exactly what indexing the object would have
stored. The real model is used once; test-tiny (a model only this process knows) elsewhere.
"""

from __future__ import annotations

import io
import json
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from cloud import KafkaBroker, MotoServer, free_port
from conftest import TINY, LiveServer
from lookalike.collection import Collection
from lookalike.errors import ObjectStoreError
from lookalike.imaging import content_hash
from lookalike.serverless import Extractor, aws, outbox

ROOT = Path(__file__).resolve().parents[1]
CLOUD_RUN_SOURCE = ROOT / "deploy" / "cloudrun" / "main.py"


def image(seed: int, size: tuple[int, int] = (96, 64)) -> bytes:
    """A distinct small JPEG per seed (test-tiny tells them apart)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1] // 8, size[0] // 8, 3))
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).resize(size).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


NOT_AN_IMAGE = b"GIF89a but then nothing an image decoder could use" * 3


@pytest.fixture
def cloud(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoServer]:
    """moto, with this test's environment pointing lookalike at it and the test model chosen."""
    for name, value in moto.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LOOKALIKE_MODEL", TINY)
    monkeypatch.delenv("LOOKALIKE_PUBLISH", raising=False)
    yield moto
    outbox.close()


@pytest.fixture(scope="module")
def tiny_reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collection]:
    """An empty test-tiny collection: what indexing would compute, and its manifest."""
    with Collection.create(tmp_path_factory.mktemp("tiny") / "c.lookalike", model=TINY) as col:
        yield col


def put(cloud: MotoServer, bucket: str, key: str, data: bytes) -> str:
    cloud.client("s3").put_object(Bucket=bucket, Key=key, Body=data)
    return f"s3://{bucket}/{key}"


def lambda_batch(cloud: MotoServer, queue_url: str, expect: int) -> dict[str, Any]:
    """The SQS messages S3 sent to the queue, as an SQS event source mapping hands them to the
    function (at least ``expect`` of them)."""
    sqs = cloud.client("sqs")
    arn = sqs.get_queue_attributes(QueueUrl=queue_url,
                                   AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    found: list[dict[str, Any]] = []
    for _ in range(20):
        reply = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10,
                                    WaitTimeSeconds=1, AttributeNames=["All"])
        found += reply.get("Messages", [])
        if len(found) >= expect and not reply.get("Messages"):
            break
    assert len(found) >= expect, found
    return {"Records": [{
        "messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
        "attributes": m["Attributes"], "messageAttributes": {}, "md5OfBody": m["MD5OfBody"],
        "eventSource": "aws:sqs", "eventSourceARN": arn, "awsRegion": "us-east-1",
    } for m in found]}


def s3_notification(bucket: str, key: str, name: str = "ObjectCreated:Put",
                    sequencer: str | None = "0062E99A88DC407460") -> dict[str, Any]:
    """An S3 event notification as AWS documents it (the key URL-encoded as S3 does)."""
    from urllib.parse import quote_plus

    item: dict[str, Any] = {"key": quote_plus(key, safe="/"), "size": 1, "eTag": "x"}
    if sequencer:
        item["sequencer"] = sequencer
    return {"Records": [{"eventVersion": "2.1", "eventSource": "aws:s3",
                         "awsRegion": "us-east-1", "eventName": name,
                         "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": bucket},
                                "object": item}}]}


def sqs_record(body: dict[str, Any] | str) -> dict[str, Any]:
    return {"messageId": str(uuid.uuid4()), "receiptHandle": "h", "eventSource": "aws:sqs",
            "body": body if isinstance(body, str) else json.dumps(body)}


def assert_consumer_reads(messages: list[dict[str, Any]]) -> None:
    """The consumer's own parser takes every message as the change it says."""
    from lookalike.stream.events import parse

    for message in messages:
        [event] = parse(outbox.encode(message))
        assert (event.op, event.uri, event.error) == (message["op"], message["uri"],
                                                      message.get("error"))
        if "vector" in message:
            assert event.vector is not None
            assert np.array_equal(event.vector, np.asarray(message["vector"], np.float32))


def by_uri(messages: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["uri"]: m for m in messages}


def assert_vector_of(message: dict[str, Any], reference: Collection, data: bytes) -> None:
    """The message's vector is exactly (as float32) what the collection computes for ``data``."""
    expected = reference.embed([data])[0]
    vector = np.asarray(message["vector"], np.float32)
    np.testing.assert_allclose(vector, expected, rtol=0, atol=1e-6)
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    assert message["model"] == reference.model_name
    assert message["fingerprint"] == reference.manifest.model.fingerprint
    assert message["content_hash"] == content_hash(data)


# -- the extractor ---------------------------------------------------------------------------


def test_the_real_model_gives_the_vector_and_fingerprint_its_collection_records(
        cloud: MotoServer, tmp_path: Path) -> None:
    data = image(1, (320, 240))
    bucket = cloud.bucket()
    uri = put(cloud, bucket, "cats/real.jpg", data)
    extractor = Extractor("efficientnet-lite0-gem")
    message = extractor.embed_uri(uri, metadata={"album": "2024"})
    with Collection.create(tmp_path / "real.lookalike", model="efficientnet-lite0-gem") as col:
        assert col.manifest.model.fingerprint == extractor.fingerprint
        assert message is not None and len(message["vector"]) == col.dim
        assert_vector_of(message, col, data)
    head = cloud.client("s3").head_object(Bucket=bucket, Key="cats/real.jpg")
    assert message["etag"] == head["ETag"].strip('"') and message["size"] == len(data)
    assert (message["width"], message["height"]) == (320, 240)
    assert message["op"] == "upsert" and message["metadata"] == {"album": "2024"}
    assert "sequencer" not in message and "error" not in message
    assert message["mtime_ns"] > 0 and message["mtime_ns"] % 1000 == 0
    direct = extractor.embed_bytes(data)
    assert np.array_equal(np.asarray(message["vector"], np.float32), direct.vector)
    assert set(direct.timings_ms) == {"decode", "embed"}


def test_a_batch_embeds_in_one_model_call_and_matches_one_by_one(
        cloud: MotoServer, tiny_reference: Collection) -> None:
    bucket = cloud.bucket()
    images = {put(cloud, bucket, f"b/{i}.jpg", image(10 + i)): image(10 + i) for i in range(5)}
    gone = f"s3://{bucket}/never-put.jpg"
    extractor = Extractor(batch_size=3)
    calls: list[int] = []
    real = extractor.embedder.embed_pixels
    extractor.embedder.embed_pixels = lambda pixels: calls.append(len(pixels)) or real(pixels)
    found = extractor.embed_uris([*list(images)[:2], gone, *list(images)[2:]])
    assert calls == [2, 3]  # batch_size objects at a time, each batch's images in one call
    assert [x.uri for x in found] == [*list(images)[:2], gone, *list(images)[2:]]
    assert found[2].message is None and found[2].failure is None  # gone: skipped
    for extracted in found[:2] + found[3:]:
        assert extracted.message is not None
        assert_vector_of(extracted.message, tiny_reference, images[extracted.uri])


def test_a_bad_image_is_a_message_with_its_error_and_an_object_too_big_is_too(
        cloud: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = cloud.bucket()
    bad = Extractor().embed_uri(put(cloud, bucket, "bad.jpg", NOT_AN_IMAGE))
    assert bad is not None and bad["error"] and "vector" not in bad and "width" not in bad
    assert bad["content_hash"] == content_hash(NOT_AN_IMAGE) and bad["size"] == len(NOT_AN_IMAGE)
    monkeypatch.setenv("LOOKALIKE_MAX_FILE_BYTES", "100")
    big = Extractor().embed_uri(put(cloud, bucket, "big.jpg", image(2)))
    assert big is not None and "LOOKALIKE_MAX_FILE_BYTES" in big["error"]


# -- AWS Lambda --------------------------------------------------------------------------------


def test_s3_notifications_through_sqs_become_messages(
        cloud: MotoServer, tiny_reference: Collection) -> None:
    bucket = cloud.bucket()
    queue, _ = cloud.queue()
    cloud.notify(bucket, queue)  # S3 first sends an s3:TestEvent: ignored below
    good = {"photos/a b+c (1).jpg": image(3), "photos/ü/d.jpeg": image(4)}
    for key, data in good.items():
        put(cloud, bucket, key, data)
    put(cloud, bucket, "photos/broken.png", NOT_AN_IMAGE)
    put(cloud, bucket, "photos/notes.txt", b"not an image, not indexed")
    put(cloud, bucket, "photos/old.jpg", image(5))
    cloud.client("s3").delete_object(Bucket=bucket, Key="photos/old.jpg")

    event = lambda_batch(cloud, queue, expect=7)
    answer = aws.handler(event, None)
    assert answer["batchItemFailures"] == []
    assert_consumer_reads(answer["messages"])
    messages = by_uri(answer["messages"])
    uri = f"s3://{bucket}/photos/"
    assert set(messages) == {uri + "a b+c (1).jpg", uri + "ü/d.jpeg", uri + "broken.png",
                             uri + "old.jpg"}  # keys URL-decoded; notes.txt left out
    for key, data in good.items():
        assert_vector_of(messages[f"s3://{bucket}/{key}"], tiny_reference, data)
    assert "error" in messages[uri + "broken.png"]
    # old.jpg was gone when its created event was handled: only its delete is said
    assert messages[uri + "old.jpg"] == {"op": "delete", "uri": uri + "old.jpg"}


def test_a_direct_s3_event_and_the_sns_envelope(
        cloud: MotoServer, tiny_reference: Collection) -> None:
    bucket = cloud.bucket()
    data = image(6)
    put(cloud, bucket, "x/café 1+1.jpg", data)
    direct = aws.handler(s3_notification(bucket, "x/café 1+1.jpg"), None)
    [message] = direct["messages"]
    assert message["uri"] == f"s3://{bucket}/x/café 1+1.jpg"
    assert message["sequencer"] == "0062E99A88DC407460"
    assert_vector_of(message, tiny_reference, data)

    wrapped = sqs_record({"Type": "Notification", "MessageId": "m", "TopicArn": "arn:t",
                          "Message": json.dumps(s3_notification(bucket, "x/café 1+1.jpg"))})
    answer = aws.handler({"Records": [wrapped]}, None)
    assert answer["batchItemFailures"] == [] and answer["messages"] == [message]

    removed = aws.handler(s3_notification(bucket, "x/café 1+1.jpg",
                                          "ObjectRemoved:DeleteMarkerCreated", "0A"), None)
    assert removed == {"messages": [{"op": "delete", "uri": message["uri"], "sequencer": "0A"}]}
    tagged = s3_notification(bucket, "x/café 1+1.jpg", "ObjectTagging:Put")
    assert aws.handler(tagged, None) == {"messages": []}  # says nothing about the image
    test_event = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": bucket}
    assert aws.handler(test_event, None) == {"messages": []}
    assert aws.handler(s3_notification(bucket, "x/missing.jpg"), None) == {"messages": []}


def test_failures_that_may_pass_are_retried_and_nothing_else_is(
        cloud: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = cloud.bucket()
    put(cloud, bucket, "ok.jpg", image(7))
    records = [sqs_record(s3_notification(bucket, "ok.jpg")),
               sqs_record({"Service": "Amazon S3", "Event": "s3:TestEvent"}),
               sqs_record(s3_notification(bucket, "missing.jpg")),
               sqs_record("this is not JSON")]
    answer = aws.handler({"Records": records}, None)
    # a body that is not an S3 notification cannot pass on retry, but is never dropped: it is
    # delivered again until the queue's redrive policy moves it to the dead-letter queue
    assert answer["batchItemFailures"] == [{"itemIdentifier": records[3]["messageId"]}]
    assert [m["uri"] for m in answer["messages"]] == [f"s3://{bucket}/ok.jpg"]

    monkeypatch.setenv("LOOKALIKE_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # down
    answer = aws.handler({"Records": records[:3]}, None)
    assert answer == {"batchItemFailures": [{"itemIdentifier": records[0]["messageId"]},
                                            {"itemIdentifier": records[2]["messageId"]}],
                      "messages": []}
    with pytest.raises(ObjectStoreError) as raised:
        aws.handler(s3_notification(bucket, "ok.jpg"), None)
    assert raised.value.transient


def test_messages_are_published_to_sqs_and_a_failed_publish_is_retried(
        cloud: MotoServer, monkeypatch: pytest.MonkeyPatch, tiny_reference: Collection) -> None:
    bucket = cloud.bucket()
    data = image(8)
    put(cloud, bucket, "p.jpg", data)
    out, _ = cloud.queue(dlq=False)
    monkeypatch.setenv("LOOKALIKE_PUBLISH", f"sqs://{out}")
    records = [sqs_record(s3_notification(bucket, "p.jpg")),
               sqs_record(s3_notification(bucket, "p.jpg", "ObjectRemoved:Delete", "0B"))]
    assert aws.handler({"Records": records}, None) == {"batchItemFailures": []}
    reply = cloud.client("sqs").receive_message(QueueUrl=out, MaxNumberOfMessages=10,
                                                WaitTimeSeconds=1)
    published = [json.loads(m["Body"]) for m in reply["Messages"]]
    assert sorted(m["op"] for m in published) == ["delete", "upsert"]
    assert_vector_of(next(m for m in published if m["op"] == "upsert"), tiny_reference, data)

    monkeypatch.setenv("LOOKALIKE_PUBLISH", f"sqs://no-such-queue-{uuid.uuid4().hex[:6]}")
    answer = aws.handler({"Records": records}, None)
    assert answer == {"batchItemFailures": [{"itemIdentifier": r["messageId"]} for r in records]}


# -- Cloud Run (functions-framework) ----------------------------------------------------------


def cloud_event(event_type: str, bucket: str, name: str, generation: int = 1700000000123456,
                ) -> tuple[dict[str, str], bytes]:
    """A Cloud Storage CloudEvent as Eventarc delivers it over HTTP (binary content mode)."""
    headers = {"ce-id": uuid.uuid4().hex, "ce-specversion": "1.0", "ce-type": event_type,
               "ce-source": f"//storage.googleapis.com/projects/_/buckets/{bucket}",
               "ce-subject": f"objects/{name}", "ce-time": "2026-01-01T00:00:00Z",
               "Content-Type": "application/json"}
    data = {"kind": "storage#object", "bucket": bucket, "name": name,
            "generation": str(generation), "metageneration": "1", "etag": "CMCbpZ+7s4IDEAE=",
            "size": "1", "contentType": "image/jpeg"}
    return headers, json.dumps(data).encode()


FINALIZED = "google.cloud.storage.object.v1.finalized"
DELETED = "google.cloud.storage.object.v1.deleted"


@pytest.fixture
def function_client(cloud: MotoServer) -> Callable[[str, str], Any]:
    """A test client of functions-framework's own app for a target of the Cloud Run recipe."""
    import functions_framework

    def client(target: str, signature_type: str) -> Any:
        app = functions_framework.create_app(target, str(CLOUD_RUN_SOURCE), signature_type)
        return app.test_client()

    return client


def test_cloud_run_function_answers_a_storage_event_with_its_message(
        cloud: MotoServer, function_client: Callable[[str, str], Any],
        tiny_reference: Collection, capsys: pytest.CaptureFixture[str]) -> None:
    bucket = cloud.bucket()
    data = image(9)
    put(cloud, bucket, "gcs/a b.jpg", data)
    http = function_client("on_storage_request", "http")
    response = http.post("/", headers=(event := cloud_event(FINALIZED, bucket, "gcs/a b.jpg"))[0],
                         data=event[1])
    assert response.status_code == 200, response.text
    [message] = response.get_json()["messages"]
    assert message["uri"] == f"s3://{bucket}/gcs/a b.jpg"
    assert message["sequencer"] == f"{1700000000123456:016X}"
    assert_vector_of(message, tiny_reference, data)

    events = function_client("on_storage_event", "cloudevent")
    capsys.readouterr()
    response = events.post("/", headers=event[0], data=event[1])
    assert response.status_code == 200 and response.text == "OK"
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == [message]

    # a delete of a name that exists again is an overwrite's: dropped; of a gone one: passed on
    overwritten = http.post("/", headers=(e := cloud_event(DELETED, bucket, "gcs/a b.jpg"))[0],
                            data=e[1])
    assert overwritten.get_json() == {"messages": []}
    gone = http.post("/", headers=(e := cloud_event(DELETED, bucket, "gcs/gone.jpg", 5))[0],
                     data=e[1])
    assert gone.get_json() == {"messages": [{"op": "delete", "uri": f"s3://{bucket}/gcs/gone.jpg",
                                             "sequencer": f"{5:016X}"}]}
    assert_consumer_reads([message, *gone.get_json()["messages"]])


def test_cloud_run_function_fails_while_the_store_is_down_and_publishes_to_kafka(
        cloud: MotoServer, kafka: KafkaBroker, function_client: Callable[[str, str], Any],
        monkeypatch: pytest.MonkeyPatch, tiny_reference: Collection) -> None:
    bucket = cloud.bucket()
    data = image(11)
    put(cloud, bucket, "k.jpg", data)
    headers, body = cloud_event(FINALIZED, bucket, "k.jpg")
    events = function_client("on_storage_event", "cloudevent")
    with monkeypatch.context() as down:
        down.setenv("LOOKALIKE_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
        assert events.post("/", headers=headers, data=body).status_code == 500  # Eventarc retries
    try:
        topic = kafka.topic()
        monkeypatch.setenv("LOOKALIKE_PUBLISH", f"kafka://{kafka.address}/{topic}")
        assert events.post("/", headers=headers, data=body).status_code == 200
        [record] = kafka.read_all(topic, expect=1)
        assert record.key() == f"s3://{bucket}/k.jpg".encode()
        assert_vector_of(json.loads(record.value()), tiny_reference, data)
    finally:
        outbox.close()


def test_the_container_recipes_name_entry_points_that_load() -> None:
    import functions_framework
    from awslambdaric.bootstrap import _get_handler  # how the Lambda runtime finds a handler

    lambda_recipe = (ROOT / "deploy" / "lambda" / "Dockerfile").read_text()
    handler = re.search(r'^CMD \["([^"]+)"\]', lambda_recipe, re.M)
    assert handler and _get_handler(handler.group(1)) is aws.handler
    cloud_run_recipe = (ROOT / "deploy" / "cloudrun" / "Dockerfile").read_text()
    target = re.search(r"--target=(\w+)", cloud_run_recipe)
    signature = re.search(r"--signature-type=(\w+)", cloud_run_recipe)
    assert target and signature and "COPY deploy/cloudrun/main.py" in cloud_run_recipe
    functions_framework.create_app(target.group(1), str(CLOUD_RUN_SOURCE), signature.group(1))


# -- POST /embed -------------------------------------------------------------------------------


def test_post_embed_answers_the_vector_the_collection_stores(
        tiny_reference: Collection, tmp_path: Path,
        start_server: Callable[..., LiveServer]) -> None:
    path = tmp_path / "served.lookalike"
    Collection.create(path, model=TINY).close()
    server = start_server(path)
    data = image(12, (200, 100))
    for response in (httpx.post(f"{server.url}/embed", content=data),
                     httpx.post(f"{server.url}/embed", files={"file": ("x.png", data)})):
        assert response.status_code == 200, response.text
        body = response.json()
        assert_vector_of(body, tiny_reference, data)
        assert (body["width"], body["height"]) == (200, 100)
        assert set(body["took_ms"]) == {"read", "decode", "embed", "total"}
    for bad in (NOT_AN_IMAGE, b"\xff\xd8\xff\xe0" + bytes(200)):  # not an image; a broken JPEG
        refused = httpx.post(f"{server.url}/embed", content=bad)
        searched = httpx.post(f"{server.url}/search/visual", content=bad)
        assert refused.status_code == searched.status_code and refused.status_code in (415, 422)
        assert refused.json()["error"]["code"] == searched.json()["error"]["code"]
    missing = httpx.post(f"{server.url}/embed", content=b"")
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "missing_file"
