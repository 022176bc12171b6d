"""Amazon SQS (boto3): ``sqs://QUEUE_URL_OR_NAME[?dlq=NAME]``.

A received message stays invisible to other consumers for the queue's visibility timeout;
deleting it is the acknowledgement. A message to retry is made visible again after a back-off
that grows with its deliveries. Once the queue's redrive policy counts ``maxReceiveCount``
deliveries, SQS moves the message to the dead-letter queue itself; a message the consumer gives up
on sooner is sent there with its reason as the ``lookalike-reason`` attribute, then deleted.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import parse_qsl

from ..errors import MissingDependencyError, QueueError, UsageError
from . import REASON, Message

ENDPOINT_ENV = "LOOKALIKE_SQS_ENDPOINT_URL"
_BATCH = 10  # SQS's limit on messages per receive, send and delete call


def client() -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise MissingDependencyError("boto3", "Amazon SQS queues",
                                     "pip install 'lookalike[s3]'") from None
    config = Config(connect_timeout=5, read_timeout=30,
                    retries={"max_attempts": 4, "mode": "standard"})
    return boto3.session.Session().client(
        "sqs", endpoint_url=os.environ.get(ENDPOINT_ENV) or None, config=config)


def parse(spec: str) -> tuple[str, dict[str, str]]:
    """The queue URL or name in ``spec``, and its parameters."""
    rest = spec.split("://", 1)[1]
    where, _, query = rest.rpartition("?") if "?" in rest else (rest, "", "")
    params = dict(parse_qsl(query))
    unknown = set(params) - {"dlq"}
    if not where or unknown:
        raise UsageError(f"Invalid SQS queue {spec!r}: expected sqs://QUEUE_URL_OR_NAME"
                         "[?dlq=NAME]" + (f" (unknown {', '.join(sorted(unknown))})"
                                          if unknown else ""))
    return where, params


class _Queue:
    def __init__(self, spec: str) -> None:
        where, self._params = parse(spec)
        self.name = spec
        self._sqs = client()
        self.url = self._resolve(where)

    def _resolve(self, where: str) -> str:
        if where.startswith(("http://", "https://")):
            return where
        with translated(where):
            return str(self._sqs.get_queue_url(QueueName=where)["QueueUrl"])

    def close(self) -> None:
        self._sqs.close()


class SqsSource(_Queue):
    """Consumes an SQS queue (see the module docstring)."""

    ordered = False

    def __init__(self, spec: str) -> None:
        super().__init__(spec)
        self.dlq_url = self._dead_letter_queue()

    def _dead_letter_queue(self) -> str:
        if "dlq" in self._params:
            try:
                return self._resolve(self._params["dlq"])
            except UsageError as exc:
                raise UsageError(f"The dead-letter queue named by ?dlq= does not exist: {exc}"
                                 ) from None
        with translated(self.url):
            found = self._sqs.get_queue_attributes(QueueUrl=self.url,
                                                   AttributeNames=["RedrivePolicy"])
        policy = found.get("Attributes", {}).get("RedrivePolicy")
        if not policy:
            raise UsageError(
                f"The SQS queue {self.url} has no dead-letter queue, so a message that keeps "
                "failing would come back for ever: give it a redrive policy, or name one with "
                f"{self.name.split('?')[0]}?dlq=NAME.")
        return self._resolve(json.loads(policy)["deadLetterTargetArn"].rsplit(":", 1)[1])

    def receive(self, max_messages: int, wait: float) -> list[Message]:
        found: list[Message] = []
        while len(found) < max_messages:
            with translated(self.url):
                reply = self._sqs.receive_message(
                    QueueUrl=self.url, MaxNumberOfMessages=min(_BATCH, max_messages - len(found)),
                    WaitTimeSeconds=0 if found else max(0, min(20, int(wait))),
                    MessageSystemAttributeNames=["ApproximateReceiveCount"])
            got = reply.get("Messages", [])
            found += (Message(m["Body"].encode(), m["MessageId"],
                              int(m.get("Attributes", {}).get("ApproximateReceiveCount", 1)),
                              m["ReceiptHandle"]) for m in got)
            if len(got) < _BATCH:
                break
        return found

    def settle(self, done: Sequence[Message], retry: Sequence[Message]) -> None:
        for start in range(0, len(done), _BATCH):
            chunk = done[start:start + _BATCH]
            with translated(self.url):
                # One that fails to delete comes again and is found already applied.
                self._sqs.delete_message_batch(QueueUrl=self.url, Entries=[
                    {"Id": str(n), "ReceiptHandle": m.handle} for n, m in enumerate(chunk)])
        for start in range(0, len(retry), _BATCH):
            chunk = retry[start:start + _BATCH]
            with translated(self.url):
                self._sqs.change_message_visibility_batch(QueueUrl=self.url, Entries=[
                    {"Id": str(n), "ReceiptHandle": m.handle,
                     "VisibilityTimeout": min(2 ** m.attempts, 300)}
                    for n, m in enumerate(chunk)])

    def dead_letter(self, message: Message, reason: str) -> None:
        with translated(self.dlq_url):
            self._sqs.send_message(QueueUrl=self.dlq_url, MessageBody=message.body.decode(),
                                   MessageAttributes={
                                       REASON: {"DataType": "String",
                                                "StringValue": reason[:1000] or "-"},
                                       "lookalike-source": {"DataType": "String",
                                                            "StringValue": self.url}})

    def lag(self) -> int | None:
        with translated(self.url):
            found = self._sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=[
                "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])
        values = found.get("Attributes", {})
        return sum(int(v) for v in values.values())


class SqsPublisher(_Queue):
    """Sends messages to an SQS queue."""

    def publish(self, bodies: Sequence[bytes], keys: Sequence[str] | None = None) -> None:
        del keys  # SQS standard queues have no keys
        for start in range(0, len(bodies), _BATCH):
            chunk = bodies[start:start + _BATCH]
            with translated(self.url):
                reply = self._sqs.send_message_batch(QueueUrl=self.url, Entries=[
                    {"Id": uuid.uuid4().hex, "MessageBody": b.decode()} for b in chunk])
            if reply.get("Failed"):
                failed = reply["Failed"][0]
                raise QueueError(f"SQS refused {len(reply['Failed'])} message(s) for {self.url}: "
                                 f"{failed.get('Code')}: {failed.get('Message')}")


@contextlib.contextmanager
def translated(where: str) -> Iterator[None]:
    """Turns what boto3 raises about the queue ``where`` into a QueueError saying what to do."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        if "NonExistentQueue" in code or code == "QueueDoesNotExist":
            raise UsageError(f"No SQS queue {where}: check its name or URL, region and "
                             f"{ENDPOINT_ENV}.") from None
        raise QueueError(f"SQS refused a request for {where} ({code}: "
                         f"{error.get('Message', '')})") from None
    except NoCredentialsError:
        raise QueueError(f"No AWS credentials for SQS queue {where}: set AWS_ACCESS_KEY_ID "
                         "and AWS_SECRET_ACCESS_KEY (or a profile, or a role).") from None
    except BotoCoreError as exc:
        raise QueueError(f"Cannot reach SQS for {where}: {exc}. Is it running, and is "
                         f"{ENDPOINT_ENV} right?") from None
