"""confluent-kafka helpers for integration tests: produce records, read topics back."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

Header = tuple[str, bytes]


@dataclass(frozen=True)
class Msg:
    """A consumed record, detached from librdkafka."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    timestamp_ms: int


def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes | None, Sequence[Header]]],
    client_config: Mapping[str, str] | None = None,
) -> int:
    """Produce ``(key, value, headers)`` records in order; raises unless all are acked."""
    conf = {"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": False}
    producer = Producer(conf | dict(client_config or {}))
    errors: list[object] = []
    sent = 0

    def on_delivery(err: object, _msg: object) -> None:
        if err is not None:
            errors.append(err)

    for key, value, headers in records:
        while True:
            try:
                producer.produce(topic, value=value, key=key, headers=list(headers), on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
        sent += 1
    if producer.flush(60) or errors:
        raise KafkaException(f"produce to {topic} failed: {errors[:3]}")
    return sent


def collect(
    bootstrap: str,
    topics: Sequence[str],
    done: Callable[[dict[str, list[Msg]]], bool],
    timeout: float,
    settle: float = 0.0,
    client_config: Mapping[str, str] | None = None,
) -> dict[str, list[Msg]]:
    """Read ``topics`` from the beginning until ``done(messages)``, then ``settle`` seconds more.

    Partitions are assigned directly (no group join). Returns what was read even
    on timeout, so the test's assertions say what was missing.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"it-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
            # Should looking the start up fail (a broker just back from a freeze), librdkafka resets
            # to this: with its default (latest) a reader once read nothing for 300 s.
            "auto.offset.reset": "earliest",
        }
        | dict(client_config or {})
    )
    metadata = consumer.list_topics(timeout=10)
    consumer.assign(
        [
            TopicPartition(t, p, OFFSET_BEGINNING)
            for t in topics
            for p in sorted(metadata.topics[t].partitions)
        ]
    )
    out: dict[str, list[Msg]] = {t: [] for t in topics}
    deadline = time.monotonic() + timeout
    settle_until: float | None = None
    try:
        while time.monotonic() < (settle_until or deadline):
            for msg in consumer.consume(500, 0.2):
                if msg.error():
                    continue
                out[msg.topic()].append(
                    Msg(
                        topic=msg.topic(),
                        partition=msg.partition(),
                        offset=msg.offset(),
                        key=msg.key(),
                        value=msg.value(),
                        headers={k: v or b"" for k, v in (msg.headers() or [])},
                        timestamp_ms=msg.timestamp()[1],
                    )
                )
            if settle_until is None and done(out):
                settle_until = time.monotonic() + settle
    finally:
        consumer.close()
    return out
