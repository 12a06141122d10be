"""The Faust app, and batch delivery of its input topics to the pipeline.

Faust runs the worker's lifecycle; the project's driver (:mod:`streams.driver`, ``rdkafka://``)
runs the consumer group on librdkafka. Consumed records do not go through Faust's per-event
streams: the driver hands each fetched batch to :func:`batch_handler`, which turns librdkafka's
messages into :class:`~engine.records.RawRecord` values and submits them to the pipeline in
chunks. Each partition's part of a chunk shares a :class:`~engine.records.Completion`; when every
record in it has its prediction or dead letter acknowledged by the broker, the chunk is done and
the partition's committable position moves past it (``engine/positions.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, Protocol, cast

from engine.records import Completion, RawRecord, SourceRef
from engine.routing import input_topics
from engine.settings import Settings
from streams.consumer_types import Batch, TPKey
from streams.driver import BatchHandler, Completer, EngineApp, EngineConsumer

log = logging.getLogger(__name__)

Submit = Callable[[Sequence[RawRecord]], Awaitable[None]]


class DeliveryConsumer(Protocol):
    """The consumer as batch delivery sees it: :class:`~streams.driver.EngineConsumer`, or a fake
    in unit tests."""

    def hand_out(self, tp: TPKey, messages: Sequence[Any]) -> tuple[Completer, Sequence[Any]] | None:
        """``messages`` of ``tp`` go to the pipeline now: what to call when they are all answered
        and the messages to submit (none handed out before), or None to skip them (the partition
        is being revoked)."""

    async def admit(self) -> None:
        """Wait while hand-outs are stopped (exactly-once: a transaction is being committed)."""


def create_app(settings: Settings) -> EngineApp:
    """A Faust app on the project's librdkafka driver (the app id is the consumer group)."""
    kafka = settings.kafka
    hosts = ";".join(f"rdkafka://{h.strip()}" for h in kafka.bootstrap_servers.split(","))
    app = EngineApp(
        kafka.group_id,
        broker=hosts,
        broker_commit_interval=(
            kafka.transaction_interval_s
            if kafka.processing_guarantee == "exactly_once"
            else kafka.commit_interval_s
        ),
        topic_disable_leader=True,
        topic_allow_declare=False,
        web_enabled=False,
        value_serializer="raw",
        key_serializer="raw",
        datadir=str(settings.data_dir / "faust"),
        loghandlers=[],
    )
    app.kafka = kafka
    app.client_id = settings.worker_name
    return app


def to_raw(messages: Sequence[Any], completion: Completion, now: float) -> list[RawRecord]:
    """Pipeline records for librdkafka messages (confluent_kafka ``Message``) of one partition,
    sharing one completion."""
    if not messages:
        return []
    topic, partition = messages[0].topic(), messages[0].partition()
    out = []
    for m in messages:
        headers = m.headers()
        kind, stamp = m.timestamp()
        source = SourceRef(topic, partition, m.offset(), stamp if kind and stamp > 0 else None)
        out.append(
            RawRecord(m.key(), m.value(), _headers(headers) if headers else (), source, now, completion)
        )
    return out


def _headers(raw: Sequence[tuple[Any, Any]]) -> tuple[tuple[str, bytes], ...]:
    """librdkafka's headers as ``((str, bytes), ...)``; a null value becomes ``b""``."""
    headers = tuple(raw)
    for k, v in headers:  # (str, bytes) pairs; convert only when one is not
        if type(v) is not bytes or type(k) is not str:
            return tuple((str(k), bytes(v or b"")) for k, v in headers)
    return headers


def batch_handler(
    consumer_of: Callable[[], DeliveryConsumer], get_submit: Callable[[], Awaitable[Submit]], chunk: int
) -> BatchHandler:
    """The handler the driver calls with each fetched batch (``consumer_of()`` is read at each
    batch: Faust creates the consumer when the app starts).

    The batch goes to the pipeline in chunks of at most ``chunk`` records, so the pipeline's
    backpressure (``submit`` waits while it is full) bounds what a worker holds whatever the
    fetch size. A chunk's records are noted as handed out right before it is submitted; a
    partition being revoked meanwhile is skipped (its records are never answered or committed
    here, and its next owner reads them).
    """

    async def handle(batch: Batch) -> None:
        submit = await get_submit()
        consumer = consumer_of()
        now = time.monotonic()
        for part in chunked(batch, chunk):
            await consumer.admit()
            records: list[RawRecord] = []
            for tp, msgs in part:
                handed = consumer.hand_out(tp, msgs)
                if handed is not None:
                    done, fresh = handed
                    records.extend(to_raw(fresh, Completion(len(fresh), done), now))
            if records:
                # A stop cancels the fetch loop, often here, while the pipeline is full. A chunk
                # handed out must then reach the pipeline whole (the stop waits for exactly
                # those records); the chunks after it are never handed out, so never committed.
                await asyncio.shield(submit(records))

    return handle


def chunked(batch: Batch, size: int) -> Iterator[Batch]:
    """``batch`` in order, in parts of at most ``size`` records; a partition may span parts."""
    part: Batch = []
    n = 0
    for tp, recs in batch:
        start = 0
        while start < len(recs):
            take = recs[start : start + size - n]
            part.append((tp, take))
            n += len(take)
            start += len(take)
            if n == size:
                yield part
                part, n = [], 0
    if part:
        yield part


def add_batch_consumer(
    app: EngineApp,
    settings: Settings,
    get_submit: Callable[[], Awaitable[Submit]],
) -> None:
    """Subscribe the input topics and deliver their records to the pipeline in batches.

    ``get_submit`` builds the pipeline (once) and returns its entry; it is also
    called when the app starts, so the worker is ready before the first event.
    """
    topics = input_topics(settings)  # the events topic, then routing.topic_models' topics
    app.topics.add(app.topic(*topics, key_type=bytes, value_type=bytes, internal=False))
    app.batch_handler = batch_handler(
        lambda: cast(EngineConsumer, app.consumer), get_submit, max(settings.batch.max_size, 1)
    )

    async def build_pipeline() -> None:
        await get_submit()

    app.task(build_pipeline)
