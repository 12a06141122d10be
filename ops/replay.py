"""Replay dead letters: republish their original bytes to the input topic after a fix.

A dead letter (engine/dlq.py) carries the original key, value and headers,
plus ``error.*`` and ``source.*`` headers. Replaying one produces the original
key and value unchanged, with the original headers (trace context included)
minus the DLQ's own, plus ``replayed.from`` naming the dead letter
(``topic:partition:offset``).

A dead letter goes back to the topic its ``source.topic`` names only when that
is one of the engine's input topics (else it is skipped, and counted with the
reason), unless a target topic is given. The DLQ is streamed, one record at a
time, up to the end offsets it had when the replay began: memory stays bounded,
``limit`` stops reading, and a replay never chases its own new dead letters.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from engine.dlq import (
    MESSAGE_HEADER,
    REASON_HEADER,
    SOURCE_OFFSET_HEADER,
    SOURCE_PARTITION_HEADER,
    SOURCE_TOPIC_HEADER,
)
from streams.kafka_tools import KafkaToolError
from streams.producer import new_producer, produce_waiting

log = logging.getLogger(__name__)

REPLAYED_FROM_HEADER = "replayed.from"
# Headers of a dead letter engine/dlq.py had to cut down to fit the DLQ: its original bytes are lost.
CUT_DOWN_HEADERS = frozenset({"error.value_truncated", "error.key_truncated", "error.headers_dropped"})
DLQ_HEADERS = CUT_DOWN_HEADERS | {
    REASON_HEADER,
    MESSAGE_HEADER,
    SOURCE_TOPIC_HEADER,
    SOURCE_PARTITION_HEADER,
    SOURCE_OFFSET_HEADER,
    REPLAYED_FROM_HEADER,
    "error.value_size",
    "error.key_size",
}
Headers = list[tuple[str, bytes]]


@dataclass
class ReplayReport:
    """What a replay did: dead letters read, chosen (by reason and target topic), skipped and why."""

    read: int = 0
    replayed: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)
    by_topic: Counter[str] = field(default_factory=Counter)
    skip_reasons: Counter[str] = field(default_factory=Counter)

    @property
    def chosen(self) -> int:
        """Dead letters chosen for replay (replayed unless it was a dry run)."""
        return sum(self.by_topic.values())

    @property
    def skipped(self) -> int:
        """Dead letters read but not chosen."""
        return sum(self.skip_reasons.values())


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


@dataclass(frozen=True)
class ReplayPlan:
    """Which dead letters go back, and where."""

    default_topic: str  # for dead letters without a source.topic header
    inputs: frozenset[str]  # topics a dead letter may go back to (without to_topic)
    to_topic: str | None = None  # every chosen dead letter goes here
    reasons: frozenset[str] = frozenset()  # only these error.reason values (empty: all)
    limit: int | None = None  # stop after choosing this many

    def target(self, record: DeadRecord) -> tuple[str | None, str]:
        """(the topic to replay ``record`` to, "") or (None, why it is skipped)."""
        if self.reasons and record.reason not in self.reasons:
            return None, f"error.reason {record.reason!r} not selected"
        if any(k in CUT_DOWN_HEADERS for k, _ in record.headers):
            return None, "cut down to fit the DLQ (original bytes lost)"
        if self.to_topic:
            return self.to_topic, ""
        source = record.header(SOURCE_TOPIC_HEADER) or self.default_topic
        if source not in self.inputs:
            return None, f"source.topic {source!r} is not an input topic"
        return source, ""

    def full(self, chosen: int) -> bool:
        """Whether ``chosen`` dead letters reach the limit."""
        return self.limit is not None and chosen >= self.limit


def open_consumer(config: Mapping[str, str], read_committed: bool = False) -> Consumer:
    """A consumer that joins no group and commits nothing; with ``read_committed`` it reads only
    records of committed transactions."""
    return Consumer(
        {
            **config,
            "isolation.level": "read_committed" if read_committed else "read_uncommitted",
            "group.id": f"sie-replay-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )


def end_offsets(consumer: Consumer, dlq_topic: str, timeout: float = 30.0) -> dict[int, int]:
    """The end offset of each non-empty partition of ``dlq_topic`` now."""
    metadata = consumer.list_topics(dlq_topic, timeout=timeout)
    topic_meta = metadata.topics.get(dlq_topic)
    if topic_meta is None or topic_meta.error is not None:
        raise KafkaToolError(f"topic {dlq_topic!r} not found")
    ends = {}
    for p in sorted(topic_meta.partitions):
        low, high = consumer.get_watermark_offsets(TopicPartition(dlq_topic, p), timeout=timeout)
        if high > low:
            ends[p] = high
    return ends


def dead_letters(
    consumer: Consumer, dlq_topic: str, *, idle_timeout: float = 5.0, timeout: float = 30.0
) -> Iterator[DeadRecord]:
    """The records of ``dlq_topic`` below its end offsets of now, one at a time (offset order per partition).

    A partition is done at its end offset. Records of aborted transactions and
    control markers take offsets no consumer sees, so a partition that never
    shows its last offset is given up after ``idle_timeout`` s without a record.
    """
    remaining = end_offsets(consumer, dlq_topic, timeout)
    consumer.assign([TopicPartition(dlq_topic, p, OFFSET_BEGINNING) for p in remaining])
    last = time.monotonic()
    while remaining and time.monotonic() - last < idle_timeout:
        msg = consumer.poll(0.2)
        if msg is None or msg.error():
            continue
        record = _dead_record(msg)
        if record.offset >= remaining.get(record.partition, -1):
            continue  # a record written after the replay began
        last = time.monotonic()
        if record.offset + 1 >= remaining[record.partition]:
            del remaining[record.partition]
            consumer.pause([TopicPartition(dlq_topic, record.partition)])
        yield record
    if remaining:
        log.warning("partitions %s quiet for %.0fs before their end offset", sorted(remaining), idle_timeout)


def _header_bytes(value: str | bytes | None) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value or b"")


def _dead_record(msg: Message) -> DeadRecord:
    raw = msg.headers() or []
    headers = [(str(k), _header_bytes(v)) for k, v in (raw.items() if isinstance(raw, dict) else raw)]
    return DeadRecord(
        str(msg.topic()), int(msg.partition() or 0), int(msg.offset() or 0), msg.key(), msg.value(), headers
    )


class Publisher:
    """Produces replayed records; :meth:`close` raises unless the broker acknowledged all."""

    def __init__(self, config: Mapping[str, str]) -> None:
        self._producer = new_producer(
            config, overrides={"acks": "all", "linger.ms": 5, "enable.idempotence": False}
        )
        self._errors: list[Any] = []

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._errors.append(err)

    def send(self, topic: str, record: DeadRecord) -> None:
        """Produce ``record``'s original key and value to ``topic``, with its replay headers."""
        headers: list[tuple[str, str | bytes | None]] = [(k, v) for k, v in record.replay_headers()]
        produce_waiting(self._producer, topic, record.value, record.key, headers, self._on_delivery)
        self._producer.poll(0)

    def close(self, timeout: float = 60.0) -> None:
        """Wait for every delivery; raises if any failed or is still pending."""
        if self._producer.flush(timeout) or self._errors:
            raise KafkaToolError(f"replay not acknowledged by the broker: {self._errors[:3]}")


def replay(
    config: Mapping[str, str],
    dlq_topic: str,
    default_topic: str,
    *,
    inputs: Collection[str] = (),
    reasons: Collection[str] | None = None,
    limit: int | None = None,
    to_topic: str | None = None,
    dry_run: bool = False,
    idle_timeout: float = 5.0,
    read_committed: bool = False,
) -> ReplayReport:
    """Stream ``dlq_topic`` and republish the chosen dead letters.

    Each goes to ``to_topic`` if given, else to the topic it came from
    (``source.topic``, ``default_topic`` when missing) if that is
    ``default_topic`` or one of ``inputs``; others are skipped. Reading stops
    once ``limit`` dead letters were chosen. With ``read_committed``, dead letters of aborted
    transactions (exactly-once workers) are not read.
    """
    plan = ReplayPlan(
        default_topic, frozenset(inputs) | {default_topic}, to_topic, frozenset(reasons or ()), limit
    )
    publisher = None if dry_run else Publisher(config)
    report = ReplayReport()
    consumer = open_consumer(config, read_committed)
    try:
        _run(plan, dead_letters(consumer, dlq_topic, idle_timeout=idle_timeout), publisher, report)
    finally:
        consumer.close()
        if publisher is not None:
            publisher.close()
    report.replayed = 0 if dry_run else report.chosen
    return report


def _run(
    plan: ReplayPlan, records: Iterator[DeadRecord], publisher: Publisher | None, report: ReplayReport
) -> None:
    """Route each record of ``records`` by ``plan`` until the limit; counts into ``report``."""
    while not plan.full(report.chosen):
        record = next(records, None)
        if record is None:
            return
        report.read += 1
        topic, why = plan.target(record)
        if topic is None:
            report.skip_reasons[why] += 1
            continue
        report.by_reason[record.reason] += 1
        report.by_topic[topic] += 1
        if publisher is not None:
            publisher.send(topic, record)
