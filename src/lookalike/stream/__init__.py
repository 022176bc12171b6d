"""Live ingestion from a queue: the messages understood (:mod:`.events`) and the consumer that
applies them to a collection's delta index (:mod:`.consumer`)."""

from .consumer import Consumer, ConsumeStats, consume_in_thread
from .events import Event, PoisonMessage, parse

__all__ = ["ConsumeStats", "Consumer", "Event", "PoisonMessage", "consume_in_thread", "parse"]
