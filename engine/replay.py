"""Replay dead letters: republish their original bytes to the input topic after a fix.

A dead letter (streams/dlq.py) carries the original key, value and headers,
plus ``error.*`` and ``source.*`` headers. Replaying one produces the original
key and value unchanged, with the original headers (trace context included)
minus the DLQ's own, plus ``replayed.from`` naming the dead letter
(``topic:partition:offset``). The whole DLQ is read before anything is
republished, so a replay never chases its own new dead letters.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

from streams.dlq import (
    MESSAGE_HEADER,
    REASON_HEADER,
    SOURCE_OFFSET_HEADER,
    SOURCE_PARTITION_HEADER,
    SOURCE_TOPIC_HEADER,
)

log = logging.getLogger(__name__)

REPLAYED_FROM_HEADER = "replayed.from"
DLQ_HEADERS = frozenset(
    {
        REASON_HEADER,
        MESSAGE_HEADER,
        SOURCE_TOPIC_HEADER,
        SOURCE_PARTITION_HEADER,
        SOURCE_OFFSET_HEADER,
        REPLAYED_FROM_HEADER,
    }
)
Headers = list[tuple[str, bytes]]


@dataclass
class ReplayReport:
    """What a replay did."""

    read: int = 0
    replayed: int = 0
    skipped: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)
    by_topic: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class DeadRecord:
    """One record read from the DLQ."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers

    def header(self, name: str) -> str | None:
        """The last value of header ``name`` as text."""
        for k, v in reversed(self.headers):
            if k == name:
                return v.decode("utf-8", "replace")
        return None

    @property
    def reason(self) -> str:
        """Its ``error.reason`` ("" when missing)."""
        return self.header(REASON_HEADER) or ""

    def replay_headers(self) -> Headers:
        """The original headers, without the DLQ's own, plus ``replayed.from``."""
        kept = [(k, v) for k, v in self.headers if k not in DLQ_HEADERS]
        return kept + [(REPLAYED_FROM_HEADER, f"{self.topic}:{self.partition}:{self.offset}".encode())]


def read_dead_letters(
    config: Mapping[str, str], dlq_topic: str, *, idle_timeout: float = 5.0, timeout: float = 30.0
) -> list[DeadRecord]:
    """Every record of ``dlq_topic``, read until it is quiet (no group is joined)."""
    consumer = Consumer(
        {
            **config,
            "group.id": f"sie-replay-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    try:
        metadata = consumer.list_topics(dlq_topic, timeout=timeout)
        topic_meta = metadata.topics.get(dlq_topic)
        if topic_meta is None or topic_meta.error is not None:
            raise KafkaException(f"topic {dlq_topic!r} not found")
        ends = {}
        for p in sorted(topic_meta.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(dlq_topic, p), timeout=timeout)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(dlq_topic, p, OFFSET_BEGINNING) for p in topic_meta.partitions])
        return _read_until(consumer, ends, idle_timeout)
    finally:
        consumer.close()


def _read_until(
    consumer: Consumer, ends: dict[int, int], idle_timeout: float, settle: float = 1.0
) -> list[DeadRecord]:
    """Read until every partition reached its end offset and ``settle`` s passed without a record.

    End offsets only shorten the wait: records of aborted transactions and
    control markers take offsets no consumer sees, so reading goes on until
    the topic is quiet.
    """
    out: list[DeadRecord] = []
    remaining = dict(ends)
    last = time.monotonic()
    while time.monotonic() - last < (idle_timeout if remaining else settle):
        for msg in consumer.consume(500, 0.2):
            if msg.error():
                continue
            last = time.monotonic()
            record = _dead_record(msg)
            out.append(record)
            if record.offset + 1 >= remaining.get(record.partition, 0):
                remaining.pop(record.partition, None)
    if remaining:
        log.warning("partitions %s quiet for %.0fs before their end offset", sorted(remaining), idle_timeout)
    return sorted(out, key=lambda r: (r.partition, r.offset))


def _dead_record(msg: Any) -> DeadRecord:
    headers = [(str(k), bytes(v or b"")) for k, v in msg.headers() or []]
    return DeadRecord(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(), headers)


def select(
    records: list[DeadRecord], reasons: Collection[str] | None = None, limit: int | None = None
) -> list[DeadRecord]:
    """The records with one of ``reasons`` (all when None), at most ``limit`` of them."""
    chosen = [r for r in records if not reasons or r.reason in reasons]
    return chosen if limit is None else chosen[:limit]


def republish(
    config: Mapping[str, str],
    records: list[DeadRecord],
    target: Callable[[DeadRecord], str],
    *,
    timeout: float = 60.0,
) -> Counter[str]:
    """Produce each record's original key and value to ``target(record)``; raises unless all are acked."""
    producer = Producer({**config, "acks": "all", "linger.ms": 5, "enable.idempotence": False})
    errors: list[Any] = []
    topics: Counter[str] = Counter()

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(err)

    for record in records:
        topic = target(record)
        headers: list[tuple[str, str | bytes | None]] = [(k, v) for k, v in record.replay_headers()]
        while True:
            try:
                producer.produce(
                    topic,
                    value=record.value,
                    key=record.key,
                    headers=headers,
                    on_delivery=on_delivery,
                )
                break
            except BufferError:
                producer.poll(0.05)
        topics[topic] += 1
        producer.poll(0)
    if producer.flush(timeout) or errors:
        raise KafkaException(f"replay not acknowledged by the broker: {errors[:3]}")
    return topics


def replay(
    config: Mapping[str, str],
    dlq_topic: str,
    default_topic: str,
    *,
    reasons: Collection[str] | None = None,
    limit: int | None = None,
    to_topic: str | None = None,
    dry_run: bool = False,
    idle_timeout: float = 5.0,
) -> ReplayReport:
    """Read ``dlq_topic`` and republish the selected dead letters.

    Each goes to ``to_topic`` if given, else to the topic it came from
    (``source.topic`` header), else to ``default_topic``.
    """
    records = read_dead_letters(config, dlq_topic, idle_timeout=idle_timeout)
    chosen = select(records, reasons, limit)

    def target(record: DeadRecord) -> str:
        return to_topic or record.header(SOURCE_TOPIC_HEADER) or default_topic

    report = ReplayReport(read=len(records), skipped=len(records) - len(chosen))
    report.by_reason.update(r.reason for r in chosen)
    if dry_run:
        report.by_topic.update(target(r) for r in chosen)
        return report
    report.by_topic = republish(config, chosen, target)
    report.replayed = len(chosen)
    return report
