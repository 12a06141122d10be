"""Where a newly assigned partition starts: its committed offset, asked until the coordinator
answers (``shared/notes/broker-freeze.md``).

An OffsetFetch answered with a request-level error (NOT_COORDINATOR while the coordinator moves
after a broker freeze; UNSTABLE_OFFSET_COMMIT while a transaction holds the offset) raises here
and is asked again: it is never read as "nothing committed". Only a per-partition "nothing
committed" starts the partition at ``auto.offset.reset``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from engine.backoff import next_delay
from streams.consumer_types import TPKey

log = logging.getLogger(__name__)

RETRY_MAX_S = 2.0


def start_offsets(
    consumer: Any, partitions: list[TopicPartition], reset: int, closing: threading.Event
) -> dict[TPKey, int]:
    """The offset each of ``partitions`` starts at; ``reset``: ``OFFSET_BEGINNING`` or
    ``OFFSET_END`` for a partition nothing was committed for. Raises once ``closing`` is set."""
    delay = 0.1
    while True:
        try:
            answers = consumer.committed(partitions, timeout=10)
            errors = [a for a in answers if a.error is not None]
            if not errors:
                return {(a.topic, a.partition): _start_of(consumer, a, reset) for a in answers}
            log.warning("committed offsets not known yet (%s); asking again", errors[0].error)
        except KafkaException as err:  # request-level errors: NOT_COORDINATOR, timeouts
            log.warning("committed offsets not known yet (%s); asking again", err.args[0])
        if closing.is_set():
            raise KafkaException(KafkaError(KafkaError._DESTROY, "closing while assigning"))
        time.sleep(delay)
        delay = next_delay(delay, 2.0, RETRY_MAX_S)


def _start_of(consumer: Any, answer: TopicPartition, reset: int) -> int:
    if answer.offset >= 0:
        return int(answer.offset)
    low, high = consumer.get_watermark_offsets(TopicPartition(answer.topic, answer.partition), timeout=10)
    return int(low if reset == OFFSET_BEGINNING else high)
