"""Spans of the pipeline, recorded by the SDK's in-memory exporter: parents, links, headers."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

from engine.errors import InferenceFailed
from engine.pipeline import Pipeline, PipelineParts
from engine.records import Completion, Headers, InferenceResult, OutRecord, RawRecord
from engine.retry import CircuitBreaker, Retrier
from engine.settings import BatchSettings, LimitSettings, RetrySettings, TopicSettings
from observability.metrics import create_metrics
from observability.tracing import OtelTracing, otlp_traces_url
from streams.codec import DecodeContext
from tests.unit.fakes import FakeBackend, FakeSink, ManualClock, raw, spec

TOPICS = TopicSettings(events="in", predictions="out", dlq="dlq")
TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
PARENT_ID = 0xB7AD6B7169203331


def traceparent(trace_id: int = TRACE_ID, span_id: int = PARENT_ID) -> bytes:
    return f"00-{trace_id:032x}-{span_id:016x}-01".encode()


class HeaderBackend(FakeBackend):
    """A fake backend that remembers the headers of each request."""

    def __init__(self) -> None:
        super().__init__()
        self.headers: list[Mapping[str, str] | None] = []

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> InferenceResult:
        self.headers.append(headers)
        return await super().infer(model, inputs, headers=headers, **kwargs)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracing(exporter: InMemorySpanExporter) -> OtelTracing:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return OtelTracing(provider.get_tracer("test"))


def _pipeline(backend: FakeBackend, sink: FakeSink, tracing: OtelTracing, max_size: int = 8) -> Pipeline:
    clock = ManualClock()
    retry = RetrySettings()
    parts = PipelineParts(
        decode_ctx=DecodeContext({"m": spec("m", 3, max_batch=64)}, "m", LimitSettings()),
        backend=backend,
        retrier=Retrier(retry, clock, CircuitBreaker(retry, clock)),
        sink=sink,
        topics=TOPICS,
        batch=BatchSettings(max_size=max_size, max_delay_ms=1, max_in_flight=2),
        metrics=create_metrics(CollectorRegistry()),
        tracing=tracing,
    )
    return Pipeline(parts, clock)


def _records(n: int, headers: Sequence[Headers], bad: frozenset[int] = frozenset()) -> list[RawRecord]:
    done = Completion(n, lambda: None)
    return [
        raw(
            b"{oops" if i in bad else orjson.dumps({"id": f"e{i}", "features": [i, 1, 0]}),
            offset=i,
            completion=done,
            headers=headers[i],
        )
        for i in range(n)
    ]


async def _run(pipeline: Pipeline, records: list[RawRecord]) -> None:
    await pipeline.start()
    await pipeline.submit(records)
    assert await pipeline.drain(5)
    await pipeline.stop()


def _by_kind(spans: tuple[ReadableSpan, ...], kind: SpanKind) -> list[ReadableSpan]:
    return [s for s in spans if s.kind is kind]


def _header(out: OutRecord, name: str) -> str:
    values = [v.decode() for k, v in out.headers if k == name]
    assert len(values) == 1, out.headers
    return values[0]


def _traceparent_of(span: ReadableSpan) -> str:
    ctx = span.get_span_context()
    assert ctx is not None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-01"


async def test_event_span_is_child_of_incoming_traceparent(
    exporter: InMemorySpanExporter, tracing: OtelTracing
) -> None:
    await _run(
        _pipeline(HeaderBackend(), FakeSink(), tracing), _records(1, [(("traceparent", traceparent()),)])
    )
    (event,) = _by_kind(exporter.get_finished_spans(), SpanKind.CONSUMER)
    assert event.parent is not None and event.parent.is_remote
    assert event.parent.trace_id == TRACE_ID and event.parent.span_id == PARENT_ID
    assert event.context.trace_id == TRACE_ID
    assert event.attributes is not None and event.attributes["messaging.destination.name"] == "events"


async def test_event_without_traceparent_starts_a_new_trace(
    exporter: InMemorySpanExporter, tracing: OtelTracing
) -> None:
    await _run(_pipeline(HeaderBackend(), FakeSink(), tracing), _records(2, [(), (("other", b"x"),)]))
    events = _by_kind(exporter.get_finished_spans(), SpanKind.CONSUMER)
    assert len(events) == 2
    assert all(e.parent is None for e in events)
    assert events[0].context.trace_id != events[1].context.trace_id


async def test_batch_span_is_child_of_first_event_and_links_every_event_span(
    exporter: InMemorySpanExporter, tracing: OtelTracing
) -> None:
    headers = [(("traceparent", traceparent(TRACE_ID + i, PARENT_ID + i)),) for i in range(3)]
    await _run(_pipeline(HeaderBackend(), FakeSink(), tracing, max_size=3), _records(3, headers))
    spans = exporter.get_finished_spans()
    events = sorted(_by_kind(spans, SpanKind.CONSUMER), key=lambda s: s.context.trace_id)
    (batch,) = _by_kind(spans, SpanKind.CLIENT)
    assert batch.parent is not None and batch.parent.span_id == events[0].context.span_id
    assert batch.context.trace_id == events[0].context.trace_id
    assert [link.context.span_id for link in batch.links] == [e.context.span_id for e in events]
    assert batch.attributes is not None and batch.attributes["sie.batch.size"] == 3


async def test_triton_request_headers_carry_the_batch_span_context(
    exporter: InMemorySpanExporter, tracing: OtelTracing
) -> None:
    backend = HeaderBackend()
    await _run(_pipeline(backend, FakeSink(), tracing), _records(2, [(("traceparent", traceparent()),)] * 2))
    (batch,) = _by_kind(exporter.get_finished_spans(), SpanKind.CLIENT)
    assert backend.headers == [{"traceparent": _traceparent_of(batch)}]


async def test_prediction_headers_carry_the_event_span_context(
    exporter: InMemorySpanExporter, tracing: OtelTracing
) -> None:
    sink = FakeSink()
    headers = (("traceparent", traceparent()), ("tracestate", b"vendor=1"), ("other", b"x"))
    await _run(_pipeline(HeaderBackend(), sink, tracing), _records(1, [headers]))
    (event,) = _by_kind(exporter.get_finished_spans(), SpanKind.CONSUMER)
    (out,) = sink.on("out")
    assert _header(out, "traceparent") == _traceparent_of(event)
    assert _header(out, "tracestate") == "vendor=1"
    assert [k for k, _ in out.headers if k == "other"] == []


async def test_dead_letter_span_ends_with_its_reason_and_dlq_headers_carry_its_context(
    exporter: InMemorySpanExporter, tracing: OtelTracing
) -> None:
    sink = FakeSink()
    headers = [(("traceparent", traceparent(TRACE_ID + i)), ("other", b"x")) for i in range(2)]
    await _run(_pipeline(HeaderBackend(), sink, tracing), _records(2, headers, bad=frozenset({1})))
    events = {s.context.trace_id: s for s in _by_kind(exporter.get_finished_spans(), SpanKind.CONSUMER)}
    bad = events[TRACE_ID + 1]
    assert bad.status.status_code is StatusCode.ERROR
    assert bad.attributes is not None and bad.attributes["sie.dead_letter.reason"] == "invalid_json"
    assert events[TRACE_ID].status.status_code is StatusCode.UNSET
    (letter,) = sink.on("dlq")
    assert _header(letter, "traceparent") == _traceparent_of(bad)
    assert _header(letter, "other") == "x" and _header(letter, "error.reason") == "invalid_json"


async def test_event_span_ends_only_when_the_broker_acknowledges_the_prediction(
    exporter: InMemorySpanExporter, tracing: OtelTracing
) -> None:
    sink = FakeSink()
    sink.hold = True
    pipeline = _pipeline(HeaderBackend(), sink, tracing, max_size=2)
    await pipeline.start()
    await pipeline.submit(_records(2, [(("traceparent", traceparent()),)] * 2))  # a full batch
    for _ in range(50):
        if sink.pending:
            break
        await asyncio.sleep(0)
    assert len(sink.on("out")) == 2
    assert _by_kind(exporter.get_finished_spans(), SpanKind.CONSUMER) == []
    sink.release()
    assert await pipeline.drain(5)
    assert len(_by_kind(exporter.get_finished_spans(), SpanKind.CONSUMER)) == 2
    assert tracing.open_spans == 0
    await pipeline.stop()


async def test_fatal_triton_error_marks_batch_span_and_ends_event_spans_as_dead_letters(
    exporter: InMemorySpanExporter, tracing: OtelTracing
) -> None:
    backend = HeaderBackend()
    backend.errors.append(InferenceFailed("INVALID_ARGUMENT: boom"))
    sink = FakeSink()
    await _run(_pipeline(backend, sink, tracing), _records(2, [(("traceparent", traceparent()),)] * 2))
    spans = exporter.get_finished_spans()
    (batch,) = _by_kind(spans, SpanKind.CLIENT)
    assert batch.status.status_code is StatusCode.ERROR
    assert [e.name for e in batch.events] == ["exception"]
    events = _by_kind(spans, SpanKind.CONSUMER)
    assert len(events) == 2 and all(e.status.status_code is StatusCode.ERROR for e in events)
    assert len(sink.on("dlq")) == 2 and tracing.open_spans == 0


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://collector:4318", "http://collector:4318/v1/traces"),
        ("http://collector:4318/", "http://collector:4318/v1/traces"),
        ("collector:4318", "http://collector:4318/v1/traces"),
        ("https://otel.example/v1/traces", "https://otel.example/v1/traces"),
        ("http://jaeger:4318/custom/path", "http://jaeger:4318/custom/path"),
    ],
)
def test_otlp_endpoint_without_a_path_gets_the_traces_path(given: str, expected: str) -> None:
    assert otlp_traces_url(given) == expected
