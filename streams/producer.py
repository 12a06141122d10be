"""The one place a Kafka producer is created (sink, kafka tools, replay, load generator).

``new_producer(config, tuning=..., overrides=...)``: librdkafka properties from ``tuning`` (defaults
the connection ``config`` may override), then ``config`` (connection and security, e.g.
``KafkaSettings.confluent_config()``), then ``overrides`` (what the caller's delivery guarantees
need whatever the config says). Tests swap :data:`Producer` here for a fake.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from confluent_kafka import Producer


def new_producer(
    config: Mapping[str, Any],
    *,
    tuning: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Producer:
    """A confluent_kafka producer on ``{**tuning, **config, **overrides}``."""
    return Producer({**(tuning or {}), **config, **(overrides or {})})
