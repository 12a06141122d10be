"""Helpers of the issue-13 tests: a scriptable backend, a sink that checks sizes as librdkafka does."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import orjson
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry

from engine.codec import DecodeContext
from engine.modelspec import ModelSpec, TensorSpec
from engine.pipeline import Pipeline
from engine.ports import PipelineParts
from engine.records import Completion, InferenceResult, OutRecord, RawRecord, SourceRef
from engine.retry import CircuitBreaker, Retrier
from engine.settings import BatchSettings, LimitSettings, RetrySettings, TopicSettings
from observability.metrics import create_metrics
from tests.unit.fakes import FakeSink, spec

TOPICS = TopicSettings(events="in", predictions="out", dlq="dlq")
F32 = np.dtype(np.float32)
SEQ = ModelSpec(
    name="seq",
    max_batch_size=64,
    inputs=(TensorSpec("sequence", F32, (-1,)),),
    outputs=(TensorSpec("probabilities", F32, (2,)),),
)
MODELS = {"m": spec("m", 3, max_batch=64), "seq": SEQ}

# What a scripted backend call does: returns outputs for the batch, or raises.
Behaviour = Callable[[np.ndarray], Mapping[str, np.ndarray]]


def sums(x: np.ndarray) -> dict[str, np.ndarray]:
    """The default answer: each row's sum and its negation."""
    s = x.reshape(len(x), -1).sum(axis=1, keepdims=True)
    return {"probabilities": np.hstack([s, -s]).astype(np.float32)}


class ScriptedBackend:
    """Runs ``script`` (one behaviour per call, then :func:`sums`); records each call's input shape."""

    def __init__(self, script: Sequence[Behaviour] = ()) -> None:
        self.script = list(script)
        self.shapes: list[tuple[str, tuple[int, ...]]] = []

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        headers: Mapping[str, str] | None = None,
        version: str = "",
    ) -> InferenceResult:
        (x,) = inputs.values()
        self.shapes.append((model, x.shape))
        behaviour = self.script.pop(0) if self.script else sums
        await asyncio.sleep(0)
        return InferenceResult(model=model, model_version="1", outputs=behaviour(x))

    async def model_specs(self) -> dict[str, ModelSpec]:
        return dict(MODELS)

    async def is_ready(self) -> bool:
        return True

    async def close(self) -> None:
        return None


class LibrdkafkaSizedSink(FakeSink):
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


class _InstantClock:
    """Real loop time, but retry sleeps are instant."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Any:
        return asyncio.get_running_loop().call_later(delay, callback)

    async def sleep(self, delay: float) -> None:
        await asyncio.sleep(0)


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
    clock = _InstantClock()
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


def event(offset: int, features: list[float] | None = None, model: str = "m") -> bytes:
    """A valid event ``e<offset>`` (``features`` default ``[offset, 1, 0]``)."""
    doc = {"id": f"e{offset}", "model": model, "features": features or [offset, 1, 0]}
    return orjson.dumps(doc)


def records(
    values: Sequence[bytes | None],
    acked: list[int] | None = None,
    headers: tuple[tuple[str, bytes], ...] = (),
    *,
    keys: Sequence[bytes | None] | None = None,
    header_sets: Sequence[tuple[tuple[str, bytes], ...]] | None = None,
) -> list[RawRecord]:
    """One record per value at offsets 0, 1, ... (key ``k<offset>`` and ``headers`` unless given per
    record); each has its own completion, which notes its offset in ``acked``."""
    out = []
    for offset, value in enumerate(values):
        done = Completion(1, (lambda o=offset: acked.append(o)) if acked is not None else (lambda: None))
        source = SourceRef("in", 0, offset, 1_700_000_000_000)
        key = keys[offset] if keys is not None else f"k{offset}".encode()
        hdrs = header_sets[offset] if header_sets is not None else headers
        out.append(RawRecord(key, value, hdrs, source, 0.0, done))
    return out


def outcome_by_offset(sink: FakeSink) -> dict[int, str]:
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
