"""One trace from producer to consumer, through the project's real OpenTelemetry Collector.

The test starts the Collector that ``sie up`` runs (ops/embedded/otelcol.py:
the shared pipeline plus the local overlay, spans written as OTLP JSON lines
to a file) on free ports, a tritonserver with ``--trace-config
mode=opentelemetry`` exporting to it, and a worker with ``otlp_endpoint`` set.
The test is the producer: it exports a real ``PRODUCER`` span per traced
event through the Collector and puts its ``traceparent`` on the record. Every
assertion reads the Collector's file, with the reader ``sie traces`` uses.

Triton 2.51 drops the propagated parent of some gRPC requests and starts a
new trace for them instead (about 1 request in 10, also with a bare
tritonclient loop and no engine: docs/observability.md). So the test accounts
for every Triton request exactly: each one continues its batch span or is
such a fresh root, batches are kept small so there are many of them, and at
least one must join its batch's trace.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind
from rich.console import Console
from typer.testing import CliRunner

from engine.settings import Settings
from observability.tracing import BATCH_SIZE, EVENT_ID, MODEL, inject_headers
from ops.cli import app
from ops.embedded import TritonProcess, free_port, start_triton
from ops.embedded.otelcol import CollectorProcess, start_collector
from ops.eventgen import generate, load_profiles
from ops.stack import copy_model_repository
from ops.trace_file import Span, find_trace, read_spans, trace_of
from ops.traces_cli import show_traces
from tests.integration.conftest import MODEL_REPOSITORY, StartWorker
from tests.integration.kafka import Msg, collect, produce

pytestmark = pytest.mark.integration

TRACED = 40
UNTRACED = 3  # no traceparent: the worker starts a new trace (SIE_TRACE_SAMPLE_RATIO is 1.0)
UNSAMPLED = 3  # traceparent with the sampled flag cleared: nothing may be exported for them
MALFORMED = 3
BATCH = 4  # small batches: many Triton requests, so Triton's occasional lost parent cannot hide all
KIND_SERVER, KIND_CLIENT, KIND_PRODUCER, KIND_CONSUMER = 2, 3, 4, 5
WORKER, PRODUCER = "sie-worker", "test-producer"
Record = tuple[bytes | None, bytes, list[tuple[str, bytes]]]


@pytest.fixture
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CollectorProcess]:
    """A Collector of the test's own: its file holds this test's spans only (0.2 s to start)."""
    process = start_collector(
        tmp_path_factory.mktemp("otelcol"), grpc_port=free_port(), http_port=free_port()
    )
    yield process
    process.stop()


@pytest.fixture
def traced_triton(
    collector: CollectorProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonProcess]:
    work_dir = tmp_path_factory.mktemp("traced-triton")
    process = start_triton(
        copy_model_repository(MODEL_REPOSITORY, work_dir),
        work_dir,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        otlp_endpoint=collector.traces_url,
    )
    yield process
    process.stop()


@pytest.fixture
def producer(collector: CollectorProcess) -> Iterator[TracerProvider]:
    """The test's own tracer provider: the producer's spans go through the Collector too."""
    provider = TracerProvider(resource=Resource.create({"service.name": PRODUCER}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=collector.traces_url)))
    yield provider
    provider.shutdown()


def _published(provider: TracerProvider) -> tuple[list[tuple[str, bytes]], str]:
    """A producer span, exported through the Collector: its trace headers and its span id."""
    with provider.get_tracer("tests.producer").start_as_current_span(
        "events publish", kind=SpanKind.PRODUCER
    ) as span:
        headers = [(k, v.encode()) for k, v in inject_headers(span).items()]
    return headers, f"{span.get_span_context().span_id:016x}"


def _records(provider: TracerProvider) -> tuple[list[Record], dict[str, str]]:
    """Records to publish, and event id -> the producer span id of each ("" for the untraced)."""
    events = list(generate(load_profiles(MODEL_REPOSITORY), TRACED + UNTRACED, seed=11, keys=8))
    records: list[Record] = []
    producer_span: dict[str, str] = {}
    for i, ev in enumerate(events):
        headers, producer_span[ev.id] = _published(provider) if i < TRACED else ([], "")
        records.append((ev.key, ev.value, headers))
    for n in range(MALFORMED):
        records.append((b"bad", f"not json {n}".encode(), _published(provider)[0]))
    return records, producer_span


def _wait_for_spans(path: Path, batches_expected: bool, timeout: float) -> list[Span]:
    """Spans in the Collector's file once every event span and a Triton request per batch arrived."""
    deadline = time.monotonic() + timeout
    while True:
        spans = read_spans(path)
        worker = [s for s in spans if s.service == WORKER]
        events = [s for s in worker if s.kind == KIND_CONSUMER]
        batches = [s for s in worker if s.kind == KIND_CLIENT]
        requests = _triton_requests([s for s in spans if s.service not in (WORKER, PRODUCER)])
        enough = len(events) >= TRACED + UNTRACED + MALFORMED and len(requests) >= len(batches)
        if (enough and (batches or not batches_expected)) or time.monotonic() > deadline:
            return spans
        time.sleep(0.5)


def _traceparent(msg: Msg) -> tuple[str, str, str]:
    _, trace_id, span_id, flags = msg.headers["traceparent"].decode().split("-")
    return trace_id, span_id, flags


def test_every_sampled_event_is_one_trace_from_producer_through_worker_and_triton_to_the_output(
    stack_settings: Settings,
    workers: StartWorker,
    collector: CollectorProcess,
    traced_triton: TritonProcess,
    producer: TracerProvider,
) -> None:
    settings = stack_settings.model_copy(
        update={
            "triton": stack_settings.triton.model_copy(
                update={"url": traced_triton.grpc_url, "http_url": traced_triton.http_url}
            ),
            "batch": stack_settings.batch.model_copy(update={"max_size": BATCH}),
            "otlp_endpoint": collector.traces_url,
        }
    )
    workers(settings)
    records, producer_span = _records(producer)
    t = settings.topics
    produce(settings.kafka.bootstrap_servers, t.events, records)
    out = collect(
        settings.kafka.bootstrap_servers,
        [t.predictions, t.dlq],
        done=lambda got: len(got[t.predictions]) >= len(producer_span) and len(got[t.dlq]) >= MALFORMED,
        timeout=120,
    )
    assert len(out[t.predictions]) == len(producer_span) and len(out[t.dlq]) == MALFORMED

    spans = _wait_for_spans(collector.traces_file, batches_expected=True, timeout=90)
    worker = [s for s in spans if s.service == WORKER]
    event_spans = {s.span_id: s for s in worker if s.kind == KIND_CONSUMER}
    batch_spans = {s.span_id: s for s in worker if s.kind == KIND_CLIENT}

    _check_no_broken_parent_links(spans)
    _check_event_spans_continue_producer_traces(spans, event_spans, out[t.predictions], producer_span)
    _check_dead_letters(spans, event_spans, out[t.dlq])
    _check_batch_spans(batch_spans, event_spans)
    _check_triton_spans_join_the_batch_traces(
        [s for s in spans if s.service not in (WORKER, PRODUCER)], batch_spans
    )
    _check_every_events_trace_is_complete(spans, event_spans, batch_spans)
    _check_sie_traces_draws_them(collector.traces_file, spans, producer_span)


def _check_no_broken_parent_links(spans: list[Span]) -> None:
    by_id = {s.span_id: s for s in spans}
    broken = [s for s in spans if s.parent_span_id and s.parent_span_id not in by_id]
    assert not broken, f"{len(broken)} spans name a parent never exported, e.g. {broken[0]}"
    for span in spans:
        if span.parent_span_id:
            assert by_id[span.parent_span_id].trace_id == span.trace_id, "a child in another trace"


def _check_event_spans_continue_producer_traces(
    spans: list[Span], event_spans: dict[str, Span], predictions: list[Msg], producer_span: dict[str, str]
) -> None:
    producers = {s.span_id: s for s in spans if s.service == PRODUCER}
    assert all(s.kind == KIND_PRODUCER for s in producers.values())
    for msg in predictions:
        trace_id, span_id, _ = _traceparent(msg)
        event_id = json.loads(msg.value or b"")["id"]
        span = event_spans.get(span_id)
        assert span is not None, f"prediction names span {span_id}, which the worker never exported"
        assert span.trace_id == trace_id and span.attributes[EVENT_ID] == event_id
        parent = producer_span[event_id]
        if not parent:
            assert span.parent_span_id == "", "event without a traceparent: a new trace"
        else:
            assert span.parent_span_id == parent and producers[parent].trace_id == trace_id


def _check_dead_letters(spans: list[Span], event_spans: dict[str, Span], dead: list[Msg]) -> None:
    producers = {s.span_id: s for s in spans if s.service == PRODUCER}
    for msg in dead:
        trace_id, span_id, _ = _traceparent(msg)
        span = event_spans[span_id]
        assert span.error and span.attributes.get("sie.dead_letter.reason") == "invalid_json"
        assert span.trace_id == trace_id and producers[span.parent_span_id].trace_id == trace_id


def _check_batch_spans(batch_spans: dict[str, Span], event_spans: dict[str, Span]) -> None:
    linked: list[str] = []
    for batch in batch_spans.values():
        parent = event_spans.get(batch.parent_span_id)
        assert parent is not None and parent.trace_id == batch.trace_id, "batch span outside its events"
        links = [span_id for _, span_id in batch.links]
        assert parent.span_id in links and set(links) <= set(event_spans)
        assert batch.attributes[BATCH_SIZE] == len(links) and batch.attributes[MODEL] in batch.name
        linked += links
    predicted = {s.span_id for s in event_spans.values() if not s.error}
    assert sorted(linked) == sorted(predicted), "every predicted event linked from exactly one batch"


def _triton_requests(triton_spans: list[Span]) -> list[Span]:
    """Triton's top span of each request: the ones whose parent is not another Triton span."""
    own = {s.span_id for s in triton_spans}
    return [s for s in triton_spans if s.parent_span_id not in own]


def _check_triton_spans_join_the_batch_traces(triton_spans: list[Span], batch_spans: dict[str, Span]) -> None:
    assert triton_spans, "Triton exported no spans"
    requests = _triton_requests(triton_spans)
    joined = [r for r in requests if r.parent_span_id]
    lost = [r for r in requests if not r.parent_span_id]  # Triton dropped the traceparent we sent
    for root in requests:
        assert root.kind == KIND_SERVER and root.name == "InferRequest"
    for root in joined:
        batch = batch_spans.get(root.parent_span_id)
        assert batch is not None, f"Triton span {root.name} continues {root.parent_span_id}, no batch span"
        assert root.trace_id == batch.trace_id
    continued = [r.parent_span_id for r in joined]
    assert len(continued) == len(set(continued)), "one Triton request per batch (no retries here)"
    assert len(requests) == len(batch_spans), "every batch made exactly one Triton request"
    assert len(joined) >= 1, f"no Triton request joined its batch trace ({len(lost)} lost their parent)"
    assert {s.name for s in triton_spans} >= {"InferRequest", "compute"}


def _check_every_events_trace_is_complete(
    spans: list[Span], event_spans: dict[str, Span], batch_spans: dict[str, Span]
) -> None:
    """Each traced event's trace as ``sie traces`` gathers it: producer, event, its batch, Triton's spans.

    Except the events of a batch whose Triton request lost its parent (Triton 2.51): counted exactly,
    one such batch for every Triton request that started a trace of its own.
    """
    joined = {s.parent_span_id for s in spans if s.name == "InferRequest" and s.parent_span_id}
    lost_roots = [s for s in spans if s.name == "InferRequest" and not s.parent_span_id]
    lost_batches = set(batch_spans) - joined
    assert len(lost_batches) == len(lost_roots)
    carried_by = {sid: b for b in batch_spans.values() for _, sid in b.links}
    traced = [s for s in event_spans.values() if s.parent_span_id and not s.error]
    assert len(traced) == TRACED
    for event in traced:
        trace = trace_of(event.trace_id, spans)
        assert trace is not None
        names = {s.name for s in trace.spans}
        assert {"events publish", event.name, carried_by[event.span_id].name} <= names
        if carried_by[event.span_id].span_id not in lost_batches:
            assert {"InferRequest", "compute"} <= names, f"trace {event.trace_id} has no Triton spans"


def _check_sie_traces_draws_them(path: Path, spans: list[Span], producer_span: dict[str, str]) -> None:
    """``sie traces`` on this output: an event's waterfall has its producer, worker and Triton spans."""
    joined = [s for s in spans if s.name == "InferRequest" and s.parent_span_id]
    batch = next(s for s in spans if s.span_id == joined[0].parent_span_id)
    event = next(s for s in spans if s.span_id == batch.parent_span_id)
    event_id = str(event.attributes[EVENT_ID])
    trace = find_trace(event_id, spans)
    assert trace is not None and trace.trace_id == event.trace_id
    assert {s.service for s in trace.spans} >= {PRODUCER, WORKER, "triton"}
    console = Console(record=True, width=200)
    assert show_traces(console, path, event_id) == 0
    drawn = console.export_text()
    for text in (event.trace_id, "events publish", "triton infer", "InferRequest", "compute", "█"):
        assert text in drawn
    assert f"model {batch.attributes[MODEL]}, batch {batch.attributes[BATCH_SIZE]}" in drawn

    second = next(e for e, p in producer_span.items() if p and e != event_id)  # another event's trace
    wide = {"COLUMNS": "200"}
    result = CliRunner().invoke(app, ["traces", "--file", str(path), "--top", "2"], env=wide)
    assert result.exit_code == 0, result.output
    assert "slowest traces" in result.output and result.output.count("trace ") >= 2
    result = CliRunner().invoke(app, ["traces", second, "--file", str(path)], env=wide)
    assert result.exit_code == 0 and "triton infer" in result.output, "its batch's span, through a link"


def test_unsampled_events_export_nothing_and_keep_the_producers_traceparent(
    stack_settings: Settings, workers: StartWorker, collector: CollectorProcess, producer: TracerProvider
) -> None:
    """Events whose ``traceparent`` has the sampled flag cleared: no span, headers passed on unchanged.

    A last, sampled event shows the worker's export path works: once its span
    is in the Collector's file, nothing of the unsampled ones came before it.
    (Triton is the untraced one here: Triton's own ``rate`` ignores the flag.)
    """
    settings = stack_settings.model_copy(update={"otlp_endpoint": collector.traces_url})
    events = list(generate(load_profiles(MODEL_REPOSITORY), UNSAMPLED + 1, seed=12, keys=8))
    unsampled = {f"{random.getrandbits(128):032x}" for _ in range(UNSAMPLED)}
    records: list[Record] = [
        (ev.key, ev.value, [("traceparent", f"00-{trace_id}-{random.getrandbits(64):016x}-00".encode())])
        for ev, trace_id in zip(events[:UNSAMPLED], sorted(unsampled), strict=True)
    ]
    workers(settings)
    headers, sentinel = _published(producer)
    records.append((events[-1].key, events[-1].value, headers))
    t = settings.topics
    produce(settings.kafka.bootstrap_servers, t.events, records)
    out = collect(
        settings.kafka.bootstrap_servers,
        [t.predictions],
        lambda got: len(got[t.predictions]) >= len(records),
        120,
    )
    assert len(out[t.predictions]) == len(records)
    kept = {_traceparent(m)[0]: _traceparent(m)[2] for m in out[t.predictions]}
    assert all(kept.get(trace_id) == "00" for trace_id in unsampled), "the producer's header is passed on"

    deadline = time.monotonic() + 60
    while not any(s.parent_span_id == sentinel for s in read_spans(collector.traces_file)):
        assert time.monotonic() < deadline, "the sampled sentinel event's span never reached the Collector"
        time.sleep(0.5)
    spans = read_spans(collector.traces_file)
    assert not [s for s in spans if s.trace_id in unsampled], "an unsampled event was exported"
    mine = [s for s in spans if s.attributes.get("messaging.destination.name") == t.events]
    assert len(mine) == 1 and mine[0].parent_span_id == sentinel, "one event span: the sentinel's"
