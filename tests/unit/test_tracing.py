"""Spans of the pipeline, recorded by the SDK's in-memory exporter: parents, links, headers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

from engine.contract.context import DecodeContext
from engine.errors import InferenceFailed
from engine.pipeline import Pipeline
from engine.ports import PipelineParts
from engine.records import Completion, Headers, OutRecord, RawRecord
from engine.retry import CircuitBreaker, Retrier
from engine.settings import BatchSettings, LimitSettings, RetrySettings, TopicSettings
from engine.testing import ManualClock, RecordingSink, ScriptedBackend, model_spec, raw_record
from observability.metrics import create_metrics
from observability.tracing import (
    DroppedTraceHeaders,
    HeadSampler,
    OtelTracing,
    TraceHeaderGetter,
    extract_context,
    otlp_traces_url,
    sampled_flag,
)

TOPICS = TopicSettings(events="in", predictions="out", dlq="dlq")
TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
PARENT_ID = 0xB7AD6B7169203331


def traceparent(trace_id: int = TRACE_ID, span_id: int = PARENT_ID) -> bytes:
    return f"00-{trace_id:032x}-{span_id:016x}-01".encode()


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracing(exporter: InMemorySpanExporter) -> OtelTracing:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return OtelTracing(provider.get_tracer("test"))


def _pipeline(
    backend: ScriptedBackend, sink: RecordingSink, tracing: OtelTracing, max_size: int = 8
) -> Pipeline:
    clock = ManualClock()
    retry = RetrySettings()
    parts = PipelineParts(
        decode_ctx=DecodeContext({"m": model_spec("m", 3, max_batch=64)}, "m", LimitSettings()),
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
        raw_record(
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
        _pipeline(ScriptedBackend(), RecordingSink(), tracing),
        _records(1, [(("traceparent", traceparent()),)]),
    )
    (event,) = _by_kind(exporter.get_finished_spans(), SpanKind.CONSUMER)
    assert event.parent is not None and event.parent.is_remote
    assert event.parent.trace_id == TRACE_ID and event.parent.span_id == PARENT_ID
    assert event.context.trace_id == TRACE_ID
    assert event.attributes is not None and event.attributes["messaging.destination.name"] == "events"


async def test_event_without_traceparent_starts_a_new_trace(
    exporter: InMemorySpanExporter, tracing: OtelTracing
) -> None:
    await _run(_pipeline(ScriptedBackend(), RecordingSink(), tracing), _records(2, [(), (("other", b"x"),)]))
    events = _by_kind(exporter.get_finished_spans(), SpanKind.CONSUMER)
    assert len(events) == 2
    assert all(e.parent is None for e in events)
    assert events[0].context.trace_id != events[1].context.trace_id


async def test_batch_span_is_child_of_first_event_and_links_every_event_span(
    exporter: InMemorySpanExporter, tracing: OtelTracing
) -> None:
    headers = [(("traceparent", traceparent(TRACE_ID + i, PARENT_ID + i)),) for i in range(3)]
    await _run(_pipeline(ScriptedBackend(), RecordingSink(), tracing, max_size=3), _records(3, headers))
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
    backend = ScriptedBackend()
    await _run(
        _pipeline(backend, RecordingSink(), tracing), _records(2, [(("traceparent", traceparent()),)] * 2)
    )
    (batch,) = _by_kind(exporter.get_finished_spans(), SpanKind.CLIENT)
    assert [c.headers for c in backend.calls] == [{"traceparent": _traceparent_of(batch)}]


async def test_prediction_headers_carry_the_event_span_context(
    exporter: InMemorySpanExporter, tracing: OtelTracing
) -> None:
    sink = RecordingSink()
    headers = (("traceparent", traceparent()), ("tracestate", b"vendor=1"), ("other", b"x"))
    await _run(_pipeline(ScriptedBackend(), sink, tracing), _records(1, [headers]))
    (event,) = _by_kind(exporter.get_finished_spans(), SpanKind.CONSUMER)
    (out,) = sink.on("out")
    assert _header(out, "traceparent") == _traceparent_of(event)
    assert _header(out, "tracestate") == "vendor=1"
    assert [k for k, _ in out.headers if k == "other"] == []


async def test_dead_letter_span_ends_with_its_reason_and_dlq_headers_carry_its_context(
    exporter: InMemorySpanExporter, tracing: OtelTracing
) -> None:
    sink = RecordingSink()
    headers = [(("traceparent", traceparent(TRACE_ID + i)), ("other", b"x")) for i in range(2)]
    await _run(_pipeline(ScriptedBackend(), sink, tracing), _records(2, headers, bad=frozenset({1})))
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
    sink = RecordingSink()
    sink.hold = True
    pipeline = _pipeline(ScriptedBackend(), sink, tracing, max_size=2)
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
    backend = ScriptedBackend()
    backend.fail_next(InferenceFailed("INVALID_ARGUMENT: boom"))
    sink = RecordingSink()
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


# ------------------------------------------------------- untrusted trace headers

EVIL = "a=1,\n\x1b[31mFAKE LOG LINE\r\u202e" + "x" * 200_000


def _log_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def _assert_safe(lines: list[str]) -> None:
    for line in lines:
        assert line.isprintable(), line[:300]  # no newline, no escape code
        assert len(line) <= 400, line[:300]


@pytest.mark.parametrize(
    "headers",
    [
        (("traceparent", traceparent()), ("tracestate", EVIL.encode("utf-8"))),
        (("traceparent", traceparent()), ("tracestate", b"ok=1,\nevil\x1b[2J=2")),
        (("traceparent", traceparent() + b"-" + EVIL.encode("utf-8")),),
        (("traceparent", EVIL.encode("utf-8")), ("tracestate", EVIL.encode("utf-8"))),
    ],
)
async def test_invalid_trace_headers_reach_the_log_escaped_and_bounded(
    exporter: InMemorySpanExporter,
    tracing: OtelTracing,
    caplog: pytest.LogCaptureFixture,
    headers: Headers,
) -> None:
    caplog.set_level(logging.DEBUG)
    sink = RecordingSink()
    await _run(_pipeline(ScriptedBackend(), sink, tracing), _records(1, [headers]))
    _assert_safe(_log_lines(caplog))
    (out,) = sink.on("out") + sink.on("dlq")  # a dead letter when the headers are over their limit
    assert [k for k, _ in out.headers if k == "tracestate"] == []  # the invalid state is not passed on


def test_a_dropped_tracestate_is_reported_once_a_minute_escaped_and_cut_to_200_characters(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    getter = TraceHeaderGetter(DroppedTraceHeaders(clock=lambda: now[0]))
    headers = (("traceparent", traceparent()), ("tracestate", EVIL.encode("utf-8")))
    caplog.set_level(logging.DEBUG)
    for t in (0.0, 1.0, 59.0, 61.0):
        now[0] = t
        context = extract_context(headers, getter)
        span_context = trace.get_current_span(context).get_span_context()
        assert span_context.trace_id == TRACE_ID and len(span_context.trace_state) == 0
    lines = _log_lines(caplog)
    _assert_safe(lines)
    assert len(lines) == 2 and lines[1].endswith("; 2 more dropped since the last report")
    assert "'a=1,\\n\\x1b[31mFAKE LOG LINE\\r\\u202exxx" in lines[0]
    shown_value = lines[0].split(": ", 1)[1]
    assert len(shown_value.rsplit("'...(+", 1)[0]) <= 1 + 200  # the opening quote, then 200 characters


@pytest.mark.parametrize(
    "state",
    [
        "vendor=1",
        "a=1,b=2",
        "a=1 , b=2",
        "tenant@vendor=x y",
        ",a=1,,",
        ",".join(f"k{i}=v" for i in range(32)),
    ],
)
def test_a_valid_tracestate_is_kept(state: str, caplog: pytest.LogCaptureFixture) -> None:
    context = extract_context((("traceparent", traceparent()), ("tracestate", state.encode())))
    span_context = trace.get_current_span(context).get_span_context()
    assert len(span_context.trace_state) == len([m for m in state.split(",") if m.strip()])
    assert not caplog.records


@pytest.mark.parametrize(
    "state",
    [" a=1", "A=1", "a=", "a=1\n", "a=" + "v" * 300, ",".join(f"k{i}=v" for i in range(33)), "a=\u00e9"],
)
def test_a_tracestate_the_propagator_would_reject_is_dropped_before_it_can_log_it(
    state: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    context = extract_context((("traceparent", traceparent()), ("tracestate", state.encode("utf-8"))))
    span_context = trace.get_current_span(context).get_span_context()
    assert span_context.trace_id == TRACE_ID and len(span_context.trace_state) == 0
    assert [r.name for r in caplog.records if r.name.startswith("opentelemetry")] == []


@settings(deadline=None, database=None, max_examples=300)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.sampled_from(["traceparent", "tracestate", "TraceState", "x"]), st.binary()),
            st.just(("traceparent", traceparent())),
        ),
        max_size=4,
    )
)
def test_trace_headers_of_arbitrary_bytes_never_raise_nor_log_raw_text(
    headers: list[tuple[str, bytes]],
) -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.DEBUG)
    try:
        extract_context(tuple(headers), TraceHeaderGetter(DroppedTraceHeaders()))
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    _assert_safe([r.getMessage() for r in records])


def _sampled_tracing(exporter: InMemorySpanExporter, ratio: float, draws: list[float]) -> OtelTracing:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return OtelTracing(provider.get_tracer("test"), HeadSampler(ratio, iter(draws).__next__))


def unsampled(trace_id: int = TRACE_ID, span_id: int = PARENT_ID) -> bytes:
    return f"00-{trace_id:032x}-{span_id:016x}-00".encode()


async def test_an_unsampled_traceparent_gets_no_span_and_its_prediction_keeps_the_producers_headers(
    exporter: InMemorySpanExporter,
) -> None:
    sink, backend = RecordingSink(), ScriptedBackend()
    tracing = _sampled_tracing(exporter, 1.0, [])
    await _run(_pipeline(backend, sink, tracing), _records(2, [(("traceparent", unsampled()),)] * 2))
    assert exporter.get_finished_spans() == ()
    assert [c.headers for c in backend.calls] == [None]  # Triton is not asked to trace either
    assert [_header(out, "traceparent") for out in sink.on("out")] == [unsampled().decode()] * 2
    assert tracing.open_spans == 0


async def test_a_sampled_traceparent_is_traced_whatever_the_ratio(exporter: InMemorySpanExporter) -> None:
    tracing = _sampled_tracing(exporter, 0.0, [])
    await _run(
        _pipeline(ScriptedBackend(), RecordingSink(), tracing),
        _records(1, [(("traceparent", traceparent()),)]),
    )
    (event,) = _by_kind(exporter.get_finished_spans(), SpanKind.CONSUMER)
    assert event.context.trace_id == TRACE_ID


async def test_events_without_traceparent_are_sampled_at_the_configured_ratio(
    exporter: InMemorySpanExporter,
) -> None:
    tracing = _sampled_tracing(exporter, 0.25, [0.1, 0.9, 0.3, 0.2])  # draws below 0.25 are sampled
    sink = RecordingSink()
    await _run(_pipeline(ScriptedBackend(), sink, tracing), _records(4, [()] * 4))
    events = _by_kind(exporter.get_finished_spans(), SpanKind.CONSUMER)
    assert sorted(e.attributes["messaging.kafka.message.offset"] for e in events) == [0, 3]  # type: ignore[index]
    traced = [out for out in sink.on("out") if any(k == "traceparent" for k, _ in out.headers)]
    assert len(traced) == 2


@pytest.mark.parametrize(
    ("value", "flag"),
    [
        (traceparent(), True),
        (unsampled(), False),
        (b"00-abc", None),
        (traceparent()[:-2] + b"zz", None),
        (b"x" * 55, None),
    ],
)
def test_the_sampled_flag_is_read_from_a_valid_traceparent_only(value: bytes, flag: bool | None) -> None:
    assert sampled_flag((("traceparent", value),)) is flag
    assert sampled_flag(()) is None
