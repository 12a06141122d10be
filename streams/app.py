"""The Faust app and its agent: consume input records, hand chunks to the pipeline.

The agent pulls chunks with ``take_events`` (size and deadline), turns each
Faust event into a :class:`~engine.records.RawRecord` and holds an extra
reference on its message, so Faust does not commit its offset when the chunk
is yielded. The pipeline releases that reference (``event.ack()``) once the
record's prediction or dead letter is acknowledged by the broker; Faust then
commits up to the highest offset below which every record is acknowledged.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import faust
from faust.types import EventT

from engine.records import Completion, RawRecord, SourceRef
from engine.routing import input_topics
from engine.settings import KafkaSettings, Settings
from streams.transport import EngineApp

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


def create_app(settings: Settings) -> faust.App:
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
        stream_buffer_maxsize=max(4 * settings.batch.max_size, 4096),
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


def to_raw(events: Sequence[EventT], completion: Completion, now: float) -> list[RawRecord]:
    """Records for a chunk of Faust events; each holds a reference until delivered."""
    records = []
    for event in events:
        msg = event.message
        msg.incref()
        raw_headers: Any = msg.headers.items() if isinstance(msg.headers, dict) else (msg.headers or ())
        records.append(
            RawRecord(
                key=msg.key,
                value=msg.value,
                headers=tuple((str(k), bytes(v or b"")) for k, v in raw_headers),
                source=SourceRef(
                    topic=msg.topic,
                    partition=msg.partition,
                    offset=msg.offset,
                    timestamp_ms=int(msg.timestamp * 1000) if msg.timestamp else None,
                ),
                received_at=now,
                completion=completion,
            )
        )
    return records


def _acker(events: Sequence[EventT]) -> Callable[[], None]:
    def ack_all() -> None:
        for event in events:
            event.ack()

    return ack_all


def add_inference_agent(
    app: faust.App,
    settings: Settings,
    get_submit: Callable[[], Awaitable[Submit]],
) -> None:
    """Register the agent reading the input topic; ``get_submit`` yields the pipeline's entry."""
    topics = input_topics(settings)  # the events topic, then routing.topic_models' topics
    topic = app.topic(*topics, key_type=bytes, value_type=bytes, internal=False)
    chunk = max(settings.batch.max_size, 1)
    # With adaptive batching the pipeline's batcher owns the deadline: hand chunks over at once.
    within = 0.001 if settings.batch.adaptive else max(settings.batch.max_delay_ms / 1000.0, 0.001)

    async def infer(stream: Any) -> None:
        submit = await get_submit()
        async for events in stream.take_events(chunk, within=within):
            records = to_raw(events, Completion(len(events), _acker(events)), time.monotonic())
            await submit(records)

    app.agent(topic, name="inference", concurrency=1)(infer)
