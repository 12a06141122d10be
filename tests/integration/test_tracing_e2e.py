"""One trace from producer to consumer: a real worker and a real Triton exporting to a test receiver.

The test stands up an OTLP/HTTP receiver, starts its own tritonserver with
``--trace-config mode=opentelemetry`` pointing at it, and a worker with
``otlp_endpoint`` set. Events carry a producer's ``traceparent``; the test
then follows each trace through the worker's event span, the batch span of
its Triton call, Triton's own spans and the output record's headers.

Triton 2.51 drops the propagated parent of some gRPC requests and starts a
new trace for them instead (about 1 request in 10, also with a bare
tritonclient loop and no engine: see docs/observability.md). So the test
accounts for every Triton request exactly: each one continues its batch span
or is such a fresh root, batches are kept small so there are many of them,
and at least one must join its batch's trace.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from engine.settings import Settings
from ops.embedded import TritonProcess, free_port, start_triton
from ops.eventgen import generate, load_profiles
from ops.stack import copy_model_repository
from tests.integration.conftest import MODEL_REPOSITORY, StartWorker
from tests.integration.kafka import Msg, collect, produce
from tests.integration.otlp_receiver import OtlpReceiver, ReceivedSpan

pytestmark = pytest.mark.integration

TRACED = 40
UNTRACED = 3
MALFORMED = 3
BATCH = 4  # small batches: many Triton requests, so Triton's occasional lost parent cannot hide all
KIND_SERVER, KIND_CLIENT, KIND_CONSUMER = 2, 3, 5
WORKER_SERVICE = "sie-worker"


def producer_context(i: int) -> tuple[str, str]:
    """The (trace id, span id) the producer of the ``i``-th event put in its traceparent."""
    return f"{0xC0FFEE00 + i:032x}", f"{0xBEEF0000 + i:016x}"


def traceparent(i: int) -> bytes:
    trace_id, span_id = producer_context(i)
    return f"00-{trace_id}-{span_id}-01".encode()


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


@pytest.fixture(scope="module")
def traced_triton(
    receiver: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonProcess]:
    work_dir = tmp_path_factory.mktemp("traced-triton")
    process = start_triton(
        copy_model_repository(MODEL_REPOSITORY, work_dir),
        work_dir,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        otlp_endpoint=receiver.url,
    )
    yield process
    process.stop()


def _records() -> tuple[list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]], dict[str, int]]:
    """Records to publish, and the event id -> producer index of the traced ones (-1: untraced)."""
    events = list(generate(load_profiles(MODEL_REPOSITORY), TRACED + UNTRACED, seed=11, keys=8))
    records: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]] = []
    index: dict[str, int] = {}
    for i, ev in enumerate(events):
        traced = i < TRACED
        records.append((ev.key, ev.value, [("traceparent", traceparent(i))] if traced else []))
        index[ev.id] = i if traced else -1
    for n in range(MALFORMED):
        records.append((b"bad", f"not json {n}".encode(), [("traceparent", traceparent(1000 + n))]))
    return records, index


def _wait_for_spans(receiver: OtlpReceiver, timeout: float) -> list[ReceivedSpan]:
    """Wait until every event's span and a Triton span for every batch span have arrived."""
    deadline = time.monotonic() + timeout
    while True:
        spans = receiver.snapshot()
        worker = [s for s in spans if s.service == WORKER_SERVICE]
        events = [s for s in worker if s.kind == KIND_CONSUMER]
        batches = [s for s in worker if s.kind == KIND_CLIENT]
        requests = _triton_requests([s for s in spans if s.service != WORKER_SERVICE])
        if len(events) >= TRACED + UNTRACED + MALFORMED and batches and len(requests) >= len(batches):
            return spans
        if time.monotonic() > deadline:
            return spans
        time.sleep(0.5)


def _traceparent(msg: Msg) -> tuple[str, str]:
    _, trace_id, span_id, _ = msg.headers["traceparent"].decode().split("-")
    return trace_id, span_id


def test_one_trace_runs_from_producer_through_worker_and_triton_to_the_output(
    stack_settings: Settings,
    workers: StartWorker,
    receiver: OtlpReceiver,
    traced_triton: TritonProcess,
) -> None:
    settings = stack_settings.model_copy(
        update={
            "triton": stack_settings.triton.model_copy(
                update={"url": traced_triton.grpc_url, "http_url": traced_triton.http_url}
            ),
            "batch": stack_settings.batch.model_copy(update={"max_size": BATCH}),
            "otlp_endpoint": receiver.url,
        }
    )
    records, index = _records()
    workers(settings)
    t = settings.topics
    produce(settings.kafka.bootstrap_servers, t.events, records)
    out = collect(
        settings.kafka.bootstrap_servers,
        [t.predictions, t.dlq],
        done=lambda got: len(got[t.predictions]) >= len(index) and len(got[t.dlq]) >= MALFORMED,
        timeout=120,
    )
    assert len(out[t.predictions]) == len(index) and len(out[t.dlq]) == MALFORMED

    spans = _wait_for_spans(receiver, timeout=90)
    assert not receiver.errors, receiver.errors
    worker = [s for s in spans if s.service == WORKER_SERVICE]
    event_spans = {s.span_id: s for s in worker if s.kind == KIND_CONSUMER}
    batch_spans = {s.span_id: s for s in worker if s.kind == KIND_CLIENT}

    _check_event_spans_continue_producer_traces(event_spans, out[t.predictions], out[t.dlq], index)
    _check_batch_spans(batch_spans, event_spans)
    _check_triton_spans_join_the_batch_traces([s for s in spans if s.service != WORKER_SERVICE], batch_spans)


def _check_event_spans_continue_producer_traces(
    event_spans: dict[str, ReceivedSpan], predictions: list[Msg], dead: list[Msg], index: dict[str, int]
) -> None:
    by_parent = {(s.trace_id, s.parent_span_id): s for s in event_spans.values()}
    for msg in predictions:
        trace_id, span_id = _traceparent(msg)
        span = event_spans.get(span_id)
        assert span is not None, f"prediction names span {span_id}, which the worker never exported"
        i = index[json.loads(msg.value or b"")["id"]]
        if i < 0:
            assert span.parent_span_id == "" and span.trace_id == trace_id, "untraced event: a new trace"
        else:
            assert by_parent[producer_context(i)] is span, "event span is not the producer span's child"
            assert trace_id == producer_context(i)[0]
    for msg in dead:
        trace_id, span_id = _traceparent(msg)
        span = event_spans[span_id]
        assert span.attributes.get("sie.dead_letter.reason") == "invalid_json"
        assert (span.trace_id, span.parent_span_id) in {producer_context(1000 + n) for n in range(MALFORMED)}
        assert trace_id == span.trace_id


def _check_batch_spans(batch_spans: dict[str, ReceivedSpan], event_spans: dict[str, ReceivedSpan]) -> None:
    linked: set[str] = set()
    for batch in batch_spans.values():
        parent = event_spans.get(batch.parent_span_id)
        assert parent is not None and parent.trace_id == batch.trace_id, "batch span outside its events"
        links = {span_id for _, span_id in batch.links}
        assert parent.span_id in links and links <= set(event_spans)
        assert batch.attributes["sie.batch.size"] == len(links)
        linked |= links
    predicted = {s.span_id for s in event_spans.values() if "sie.dead_letter.reason" not in s.attributes}
    assert linked == predicted, "every predicted event is linked from the batch that carried it"


def _triton_requests(triton_spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    """Triton's top span of each request: the ones whose parent is not another Triton span."""
    own = {s.span_id for s in triton_spans}
    return [s for s in triton_spans if s.parent_span_id not in own]


def _check_triton_spans_join_the_batch_traces(
    triton_spans: list[ReceivedSpan], batch_spans: dict[str, ReceivedSpan]
) -> None:
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
    by_id = {s.span_id: s for s in triton_spans}
    for span in triton_spans:
        top = span
        while top.parent_span_id in by_id:
            top = by_id[top.parent_span_id]
        assert span.trace_id == top.trace_id
    assert {s.name for s in triton_spans} >= {"InferRequest", "compute"}


def test_receiver_decodes_json_with_hex_ids_like_tritons_exporter() -> None:
    from tests.integration.otlp_receiver import parse_request, spans_of

    body = json.dumps(
        {
            "resourceSpans": [
                {
                    "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "t"}}]},
                    "scopeSpans": [
                        {
                            "spans": [
                                {
                                    "traceId": "0af7651916cd43dd8448eb211c80319c",
                                    "spanId": "b7ad6b7169203331",
                                    "name": "x",
                                    "kind": 2,
                                }
                            ]
                        }
                    ],
                }
            ]
        }
    ).encode()
    (span,) = spans_of(parse_request(body, "application/json"))
    assert (span.service, span.trace_id, span.span_id) == (
        "t",
        "0af7651916cd43dd8448eb211c80319c",
        "b7ad6b7169203331",
    )
