"""The one place a Kafka producer is created and records are handed to it.

``new_producer(config, tuning=..., overrides=...)``: librdkafka properties from ``tuning`` (defaults
the connection ``config`` may override), then ``config`` (connection and security, e.g.
``KafkaSettings.confluent_config()``), then ``overrides`` (what the caller's delivery guarantees
need whatever the config says). Tests swap :data:`Producer` here for a fake.

``produce_waiting`` (threads and command-line tools) and ``produce_waiting_async`` (the event loop)
hand one record to a producer, waiting while its local queue is full (``produce`` raising
``BufferError``) instead of dropping the record: the sink, ``sie produce``, ``sie replay`` and the
load generator all produce through them. Any other error ``produce`` raises reaches the caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import Producer

Headers = list[tuple[str, str | bytes | None]] | dict[str, str | bytes | None] | None
OnDelivery = Callable[[Any, Any], None] | None


def new_producer(
    config: Mapping[str, Any],
    *,
    tuning: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Producer:
    """A confluent_kafka producer on ``{**tuning, **config, **overrides}``."""
    return Producer({**(tuning or {}), **config, **(overrides or {})})


def produce_waiting(
    producer: Producer,
    topic: str,
    value: bytes | None,
    key: bytes | None = None,
    headers: Headers = None,
    on_delivery: OnDelivery = None,
    *,
    poll_s: float = 0.05,
) -> None:
    """``producer.produce(...)``; while the local queue is full, serve deliveries (``poll(poll_s)``,
    blocking) and try again."""
    while True:
        try:
            producer.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(poll_s)


async def produce_waiting_async(
    producer: Producer,
    topic: str,
    value: bytes | None,
    key: bytes | None = None,
    headers: Headers = None,
    on_delivery: OnDelivery = None,
    *,
    pause_s: float = 0.005,
) -> None:
    """:func:`produce_waiting` for the event loop: while the local queue is full, serve deliveries
    without blocking (``poll(0)``) and sleep ``pause_s`` before trying again."""
    while True:
        try:
            producer.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(0)
            await asyncio.sleep(pause_s)
