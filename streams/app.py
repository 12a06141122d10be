"""The Faust app, and batch delivery of its input topics to the pipeline.

Faust runs the consumer group, rebalances, offset commits and the worker's
lifecycle. Consumed records do not go through Faust's per-event streams: the
app's consumer hands each fetched batch to :func:`add_batch_consumer`'s
handler (see :mod:`streams.transport` for why), which turns aiokafka's records
into :class:`~engine.records.RawRecord` values and submits them to the
pipeline in chunks. Each partition's part of a chunk shares a
:class:`~engine.records.Completion`; when every record in it has its
prediction or dead letter acknowledged by the broker, its offsets are
acknowledged to Faust, which then commits up to the highest offset below which
every record is acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from functools import partial
from typing import Any, cast

import faust
from faust.types import TP

from engine.records import Completion, RawRecord, SourceRef
from engine.routing import input_topics
from engine.settings import KafkaSettings, Settings
from streams.transport import BatchHandler, DeliveryConsumer, EngineApp, EngineConsumer, FetchedBatch

log = logging.getLogger(__name__)

Submit = Callable[[Sequence[RawRecord]], Awaitable[None]]


def faust_credentials(kafka: KafkaSettings) -> Any:
    """Faust/aiokafka credentials for the configured security protocol, or None."""
    protocol = kafka.security_protocol
    context: ssl.SSLContext | None = None
    if protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=str(kafka.ssl_cafile) if kafka.ssl_cafile else None)
        if kafka.ssl_certfile:
            context.load_cert_chain(
                str(kafka.ssl_certfile),
                str(kafka.ssl_keyfile) if kafka.ssl_keyfile else None,
                kafka.ssl_key_password.get_secret_value() if kafka.ssl_key_password else None,
            )
    if protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password.get_secret_value() if kafka.sasl_password else None,
            ssl_context=context,
            mechanism=kafka.sasl_mechanism or "PLAIN",
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def create_app(settings: Settings) -> EngineApp:
    """A Faust app configured from ``settings`` (the app id is the consumer group)."""
    kafka = settings.kafka
    hosts = ";".join(f"kafka://{h.strip()}" for h in kafka.bootstrap_servers.split(","))
    app = EngineApp(
        kafka.group_id,
        broker=hosts,
        broker_credentials=faust_credentials(kafka),
        broker_session_timeout=kafka.session_timeout_s,
        broker_heartbeat_interval=kafka.heartbeat_interval_s,
        broker_commit_interval=kafka.commit_interval_s,
        broker_max_poll_records=kafka.max_poll_records,
        consumer_auto_offset_reset=kafka.auto_offset_reset,
        topic_disable_leader=True,
        topic_allow_declare=False,
        web_enabled=False,
        value_serializer="raw",
        key_serializer="raw",
        datadir=str(settings.data_dir / "faust"),
        loghandlers=[],
    )
    app.fetch_max_wait_ms = kafka.fetch_max_wait_ms
    return app


def to_raw(records: Sequence[Any], completion: Completion, now: float) -> list[RawRecord]:
    """Pipeline records for aiokafka ``ConsumerRecord`` values sharing one completion."""
    out = []
    for r in records:
        headers = _headers(r.headers) if r.headers else ()
        stamp = r.timestamp if r.timestamp and r.timestamp > 0 else None
        source = SourceRef(r.topic, r.partition, r.offset, stamp)
        out.append(RawRecord(r.key, r.value, headers, source, now, completion))
    return out


def _headers(raw: Sequence[tuple[Any, Any]]) -> tuple[tuple[str, bytes], ...]:
    """aiokafka's headers as ``((str, bytes), ...)``; a null value becomes ``b""``."""
    headers = tuple(raw)
    for k, v in headers:  # aiokafka gives (str, bytes) pairs; convert only when one is not
        if type(v) is not bytes or type(k) is not str:
            return tuple((str(k), bytes(v or b"")) for k, v in headers)
    return headers


def batch_handler(
    consumer_of: Callable[[], DeliveryConsumer], get_submit: Callable[[], Awaitable[Submit]], chunk: int
) -> BatchHandler:
    """The handler :class:`EngineApp`'s consumer (``consumer_of()``, read at each batch: Faust
    creates it when the app starts) calls with each fetched batch.

    The batch goes to the pipeline in chunks of at most ``chunk`` records, so
    the pipeline's backpressure (``submit`` waits while it is full) bounds what
    a worker holds whatever the fetch size.
    """

    async def handle(batch: FetchedBatch) -> None:
        submit = await get_submit()
        consumer = consumer_of()
        now = time.monotonic()
        for part in chunked(batch, chunk):
            records: list[RawRecord] = []
            for tp, recs in part:
                done = partial(consumer.ack_offsets, tp, [r.offset for r in recs])
                records.extend(to_raw(recs, Completion(len(recs), done), now))
            consumer.hand_out(len(records))
            # A rebalance or a stop cancels the consumer's fetch task, often here, while the
            # pipeline is full. A chunk counted as in hand must then reach the pipeline whole (its
            # offsets are acked when its records are done, and the revoke waits for exactly
            # those); the chunks after it are never handed out, so are never acked or committed,
            # and are read again by whoever owns the partition next.
            await asyncio.shield(submit(records))

    return handle


def chunked(batch: FetchedBatch, size: int) -> Iterator[FetchedBatch]:
    """``batch`` in order, in parts of at most ``size`` records; a partition may span parts."""
    part: list[tuple[TP, Sequence[Any]]] = []
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
