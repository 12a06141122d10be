"""Reading the Collector's OTLP JSON lines and drawing them (ops/trace_file.py, ops/trace_view.py).

The integration test (tests/integration/test_tracing_e2e.py) runs the same
code on what a real Collector wrote; these pin the logic on small inputs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console

from ops.trace_file import Span, find_trace, parse_request, read_spans, slowest, trace_of
from ops.trace_view import bar, span_rows, waterfall
from ops.traces_cli import show_traces

MS = 1_000_000
T0 = 1_700_000_000_000_000_000


def otlp_span(
    trace: str,
    span: str,
    parent: str = "",
    name: str = "s",
    start_ms: float = 0,
    end_ms: float = 1,
    **kw: Any,
) -> dict[str, Any]:
    """One span as the Collector's file exporter writes it."""
    attrs = [
        {"key": k, "value": {"intValue": str(v)} if isinstance(v, int) else {"stringValue": v}}
        for k, v in kw.get("attributes", {}).items()
    ]
    return {
        "traceId": trace * 32,
        "spanId": span * 16,
        "parentSpanId": parent * 16 if parent else "",
        "name": name,
        "kind": kw.get("kind", 1),
        "startTimeUnixNano": str(T0 + int(start_ms * MS)),
        "endTimeUnixNano": str(T0 + int(end_ms * MS)),
        "links": [{"traceId": t * 32, "spanId": s * 16} for t, s in kw.get("links", [])],
        "attributes": attrs,
        "status": {"code": 2} if kw.get("error") else {},
    }


def request(service: str, *spans: dict[str, Any]) -> dict[str, Any]:
    resource = {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]}
    return {"resourceSpans": [{"resource": resource, "scopeSpans": [{"scope": {}, "spans": list(spans)}]}]}


def two_events_one_batch() -> list[dict[str, Any]]:
    """Events a (first of the batch) and b; the batch span is a's child and links both; Triton under it."""
    worker = request(
        "sie-worker",
        otlp_span("a", "1", name="events process", end_ms=10, attributes={"sie.event.id": "ev-a"}),
        otlp_span(
            "b", "2", name="events process", start_ms=1, end_ms=12, attributes={"sie.event.id": "ev-b"}
        ),
        otlp_span(
            "a",
            "3",
            "1",
            "triton infer iris",
            2,
            8,
            kind=3,
            links=[("a", "1"), ("b", "2")],
            attributes={"sie.model": "iris", "sie.batch.size": 2},
        ),
    )
    triton = request("triton", otlp_span("a", "4", "3", "InferRequest", 3, 7, kind=2))
    return [worker, triton]


def write(path: Path, requests: list[dict[str, Any]], tail: str = "") -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in requests) + tail)
    return path


def test_spans_are_read_with_hex_ids_int_attributes_error_status_and_their_service() -> None:
    doc = request("svc", otlp_span("a", "1", "9", attributes={"sie.batch.size": 4}, error=True))
    (span,) = parse_request(doc)
    assert (span.service, span.trace_id, span.span_id, span.parent_span_id) == (
        "svc",
        "a" * 32,
        "1" * 16,
        "9" * 16,
    )
    assert span.attributes == {"sie.batch.size": 4} and span.error and span.duration_ms == 1.0


def test_a_half_written_last_line_and_rotated_backups_are_handled(tmp_path: Path) -> None:
    write(tmp_path / "traces-2026-01-01T00-00-00.000.jsonl", [request("old", otlp_span("c", "5"))])
    path = write(tmp_path / "traces.jsonl", two_events_one_batch(), tail='{"resourceSpans": [{"reso')
    spans = read_spans(path)
    assert len(spans) == 5 and spans[0].service == "old"


def test_an_events_trace_brings_in_the_batch_span_that_links_it_and_tritons_spans_under_that() -> None:
    spans = [s for r in two_events_one_batch() for s in parse_request(r)]
    trace = trace_of("b" * 32, spans)
    assert trace is not None
    assert {s.name for s in trace.spans} == {"events process", "triton infer iris", "InferRequest"}
    assert trace.linked == {"3" * 16, "4" * 16}
    rows = [(depth, s.name) for depth, s in span_rows(trace)]
    assert rows == [(0, "events process"), (1, "triton infer iris"), (2, "InferRequest")]


def test_a_trace_is_found_by_its_id_or_by_an_event_id_it_carried() -> None:
    spans = [s for r in two_events_one_batch() for s in parse_request(r)]
    by_id, by_event = find_trace("A" * 32, spans), find_trace("ev-b", spans)
    assert by_id is not None and by_id.trace_id == "a" * 32 and not by_id.linked
    assert by_event is not None and by_event.trace_id == "b" * 32
    assert find_trace("nope", spans) is None


def test_the_slowest_traces_come_first_and_old_ones_are_left_out() -> None:
    spans = [s for r in two_events_one_batch() for s in parse_request(r)]
    assert [t.trace_id for t in slowest(spans, top=5)] == ["b" * 32, "a" * 32]  # 11 ms before 10 ms
    assert [t.trace_id for t in slowest(spans, top=1)] == ["b" * 32]
    assert slowest(spans, since_ns=T0 + 2 * MS) == []


def test_a_bar_starts_where_its_span_starts_and_is_at_least_one_block_long() -> None:
    span = Span("s", "n", 1, "t", "i", "", T0 + 25 * MS, T0 + 50 * MS)
    assert bar(span, T0, 100 * MS, width=20) == " " * 5 + "█" * 5
    tiny = Span("s", "n", 1, "t", "i", "", T0 + 99 * MS, T0 + 99 * MS)
    assert bar(tiny, T0, 100 * MS, width=20) == " " * 19 + "█"


def test_the_waterfall_shows_model_batch_size_event_and_the_total_time(tmp_path: Path) -> None:
    spans = [s for r in two_events_one_batch() for s in parse_request(r)]
    trace = trace_of("a" * 32, spans)
    assert trace is not None
    console = Console(record=True, width=200)
    console.print(waterfall(trace))
    text = console.export_text()
    assert "model iris, batch 2" in text and "event ev-a" in text and "10.0 ms" in text


def test_sie_traces_says_what_is_missing_instead_of_drawing_nothing(tmp_path: Path) -> None:
    console = Console(record=True, width=200)
    assert show_traces(console, tmp_path / "none.jsonl") == 1
    path = write(tmp_path / "traces.jsonl", two_events_one_batch())
    assert show_traces(console, path, "ev-zzz") == 1
    assert show_traces(console, path, now_s=T0 / 1e9 + 3600) == 1  # an hour later: nothing recent
    text = console.export_text()
    assert "no spans in" in text and "no trace with id or event id 'ev-zzz'" in text and "--since" in text
    assert show_traces(console, path, now_s=T0 / 1e9 + 60) == 0
    assert "slowest traces" in console.export_text()
