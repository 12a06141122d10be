"""The pipeline with a fake backend and sink: splitting, DLQ, retries, acks, backpressure."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from prometheus_client import CollectorRegistry

from engine.contract.context import DecodeContext
from engine.errors import BackendUnavailable, InferenceFailed
from engine.pipeline import Pipeline
from engine.ports import PipelineParts
from engine.records import Completion
from engine.retry import CircuitBreaker, Retrier
from engine.settings import BatchSettings, LimitSettings, RetrySettings, TopicSettings
from engine.testing import InstantClock, RecordingSink, ScriptedBackend, model_spec, raw_record
from observability.metrics import create_metrics

TOPICS = TopicSettings(events="in", predictions="out", dlq="dlq")


def _pipeline(
    backend: ScriptedBackend, sink: RecordingSink, max_size: int = 4, in_flight: int = 2
) -> Pipeline:
    clock = InstantClock()
    retry = RetrySettings(initial_backoff_s=0.001, failure_threshold=100)
    parts = PipelineParts(
        decode_ctx=DecodeContext({"m": model_spec("m", 3, max_batch=64)}, "m", LimitSettings()),
        backend=backend,
        retrier=Retrier(retry, clock, CircuitBreaker(retry, clock)),
        sink=sink,
        topics=TOPICS,
        batch=BatchSettings(max_size=max_size, max_delay_ms=1, max_in_flight=in_flight),
        metrics=create_metrics(CollectorRegistry()),
    )
    return Pipeline(parts, clock)


def _chunk(n: int, start: int = 0, bad: set[int] = frozenset(), acked: list[int] | None = None):  # type: ignore[assignment]
    done = Completion(n, lambda: acked.append(start) if acked is not None else None)
    out = []
    for i in range(start, start + n):
        value = b"{oops" if i in bad else orjson.dumps({"id": f"e{i}", "features": [i, 1, 0]})
        out.append(
            raw_record(
                value,
                offset=i,
                key=f"k{i % 3}".encode(),
                completion=done,
                headers=(("traceparent", b"00-abc-def-01"), ("other", b"x")),
            )
        )
    return out


async def test_every_event_gets_one_prediction_in_order() -> None:
    backend, sink = ScriptedBackend(), RecordingSink()
    p = _pipeline(backend, sink)
    await p.start()
    await p.submit(_chunk(10))
    assert await p.drain(5)
    out = [orjson.loads(r.value) for r in sink.on("out")]
    assert [d["id"] for d in out] == [f"e{i}" for i in range(10)]
    assert out[3]["outputs"]["probabilities"] == [4.0, -4.0]
    assert out[0]["model_version"] == "1" and set(out[0]["timing_ms"]) == {"queue", "inference", "total"}
    assert [r.key for r in sink.on("out")][:3] == [b"k0", b"k1", b"k2"]
    assert sink.on("out")[0].headers == (("traceparent", b"00-abc-def-01"),)
    assert all(call.rows <= 4 for call in backend.calls)
    await p.stop()


async def test_malformed_events_go_to_dlq_and_the_rest_are_predicted() -> None:
    sink = RecordingSink()
    p = _pipeline(ScriptedBackend(), sink)
    await p.start()
    await p.submit(_chunk(6, bad={2, 4}))
    assert await p.drain(5)
    dlq = sink.on("dlq")
    assert [r.value for r in dlq] == [b"{oops", b"{oops"]
    headers = dict(dlq[0].headers)
    assert headers["error.reason"] == b"invalid_json"
    assert headers["source.offset"] == b"2" and headers["source.topic"] == b"events"
    assert len(sink.on("out")) == 4
    await p.stop()


async def test_offsets_are_released_only_after_the_broker_acknowledges() -> None:
    sink = RecordingSink()
    sink.hold = True
    acked: list[int] = []
    p = _pipeline(ScriptedBackend(), sink)
    await p.start()
    await p.submit(_chunk(5, acked=acked))
    p._batcher.flush_all()
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(sink.sent) == 5 and acked == []
    sink.release()
    assert await p.drain(5)
    assert acked == [0]
    await p.stop()


async def test_retryable_failure_is_retried_not_dead_lettered() -> None:
    backend, sink = ScriptedBackend(), RecordingSink()
    backend.fail_next(BackendUnavailable("UNAVAILABLE: down"), BackendUnavailable("UNAVAILABLE: down"))
    p = _pipeline(backend, sink)
    await p.start()
    await p.submit(_chunk(3))
    assert await p.drain(5)
    assert sink.on("dlq") == [] and len(sink.on("out")) == 3
    assert len(backend.calls) == 3
    await p.stop()


async def test_fatal_failure_dead_letters_the_batch_as_inference_error() -> None:
    backend, sink = ScriptedBackend(), RecordingSink()
    backend.fail_next(InferenceFailed("INVALID_ARGUMENT: bad"))
    p = _pipeline(backend, sink, max_size=2)
    await p.start()
    await p.submit(_chunk(4))
    assert await p.drain(5)
    reasons = [dict(r.headers)["error.reason"] for r in sink.on("dlq")]
    assert reasons == [b"inference_error", b"inference_error"]
    assert [orjson.loads(r.value)["id"] for r in sink.on("out")] == ["e2", "e3"]
    await p.stop()


async def test_submit_blocks_when_batches_are_outstanding() -> None:
    backend, sink = ScriptedBackend(), RecordingSink()
    backend.gate = asyncio.Event()
    p = _pipeline(backend, sink, max_size=1, in_flight=1)
    await p.start()
    blocked = asyncio.create_task(p.submit(_chunk(3)))
    await asyncio.sleep(0.05)
    assert not blocked.done()
    assert len(backend.calls) == 1  # one request in flight, the others wait
    backend.gate.set()
    await asyncio.wait_for(blocked, 5)
    assert await p.drain(5)
    assert len(sink.on("out")) == 3
    await p.stop()


@pytest.mark.parametrize("n", [1, 9])
async def test_drain_flushes_open_batches(n: int) -> None:
    sink = RecordingSink()
    p = _pipeline(ScriptedBackend(), sink, max_size=100)
    await p.start()
    await p.submit(_chunk(n))
    assert await p.drain(5)
    assert p.undelivered == 0 and len(sink.on("out")) == n
    await p.stop()
