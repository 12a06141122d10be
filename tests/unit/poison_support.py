"""Helpers of the issue-13 tests: their models, a pipeline with instant retries, a sink that checks sizes
as librdkafka does (the backend, sink and record builders are engine/testing.py's)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry

from engine.contract.context import DecodeContext
from engine.modelspec import ModelSpec, TensorSpec
from engine.pipeline import Pipeline
from engine.ports import PipelineParts
from engine.records import OutRecord
from engine.retry import CircuitBreaker, Retrier
from engine.settings import BatchSettings, LimitSettings, RetrySettings, TopicSettings
from engine.testing import InstantClock, RecordingSink, model_spec
from observability.metrics import create_metrics

TOPICS = TopicSettings(events="in", predictions="out", dlq="dlq")
F32 = np.dtype(np.float32)
SEQ = ModelSpec(
    name="seq",
    max_batch_size=64,
    inputs=(TensorSpec("sequence", F32, (-1,)),),
    outputs=(TensorSpec("probabilities", F32, (2,)),),
)
MODELS = {"m": model_spec("m", 3, max_batch=64), "seq": SEQ}


class LibrdkafkaSizedSink(RecordingSink):
    """A fake sink that refuses what librdkafka's own size check refuses (a real, unconnected producer)."""

    def __init__(self, max_bytes: int = 1_000_000) -> None:
        super().__init__()
        self.max_bytes = max_bytes
        self._producer = Producer(
            {"bootstrap.servers": "127.0.0.1:9", "log_level": 0, "message.max.bytes": max_bytes}
        )

    async def send(self, records: Sequence[OutRecord]) -> asyncio.Future[None]:
        for r in records:  # raises KafkaException(MSG_SIZE_TOO_LARGE) as KafkaSink's producer would
            self._producer.produce(r.topic, value=r.value, key=r.key, headers=list(r.headers) or None)
        self._producer.purge()
        return await super().send(records)

    def close_producer(self) -> None:
        self._producer.purge()
        self._producer.flush(0)


def pipeline(
    backend: Any,
    sink: Any,
    *,
    max_size: int = 4,
    in_flight: int = 2,
    limits: LimitSettings | None = None,
    **extra: Any,
) -> Pipeline:
    """A pipeline over ``MODELS`` (``m``: features [3], ``seq``: sequence [-1]) with instant retries."""
    clock = InstantClock()
    retry = RetrySettings(initial_backoff_s=0.001, failure_threshold=1000)
    parts = PipelineParts(
        decode_ctx=DecodeContext(MODELS, "m", limits or LimitSettings()),
        backend=backend,
        retrier=Retrier(retry, clock, CircuitBreaker(retry, clock)),
        sink=sink,
        topics=TOPICS,
        batch=BatchSettings(max_size=max_size, max_delay_ms=1, max_in_flight=in_flight),
        metrics=create_metrics(CollectorRegistry()),
        **extra,
    )
    return Pipeline(parts, clock)


def outcome_by_offset(sink: RecordingSink) -> dict[int, str]:
    """What became of each record: ``"prediction"`` (found by id ``e<n>``) or its dead letter's reason."""
    seen: dict[int, str] = {}
    for r in sink.on("out"):
        offset = int(orjson.loads(r.value or b"{}")["id"][1:])
        assert offset not in seen, f"record {offset} has two outputs"
        seen[offset] = "prediction"
    for r in sink.on("dlq"):
        h = dict(r.headers)
        offset = int(h["source.offset"])
        assert offset not in seen, f"record {offset} has two outputs"
        seen[offset] = h["error.reason"].decode()
    return seen
