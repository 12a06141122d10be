"""Spans from the Collector's file output: OTLP JSON, one export request per line.

The Collector that ``sie up`` and the trace tests start (ops/embedded/otelcol.py)
writes every span it receives to ``traces.jsonl``, rotating it into
``traces-<time>.jsonl`` backups. This module reads them back into
:class:`Span` objects and picks traces: the slowest recent ones, or one by its
trace id or by the id of an event it carried (``sie.event.id``).

An event span other than the first of its micro-batch is not the parent of
the batch's ``triton infer`` span: that span, a child of the batch's first
event, *links* to it. :func:`trace_of` therefore adds every batch span that
links into the trace, with its descendants (Triton's spans), so an event's
picture shows the Triton request that carried it.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from observability.tracing import EVENT_ID

STATUS_ERROR = 2  # OTLP's Status.code for an error


@dataclass(frozen=True)
class Span:
    """One span as the Collector wrote it (ids in hex, times in Unix nanoseconds)."""

    service: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    start_ns: int
    end_ns: int
    links: tuple[tuple[str, str], ...] = ()  # (trace id, span id)
    attributes: dict[str, Any] = field(default_factory=dict)
    error: bool = False

    @property
    def duration_ms(self) -> float:
        """How long it lasted."""
        return (self.end_ns - self.start_ns) / 1e6


@dataclass(frozen=True)
class Trace:
    """The spans of one trace, plus the batch spans (and their subtrees) that link into it."""

    trace_id: str
    spans: tuple[Span, ...]
    linked: frozenset[str] = frozenset()  # span ids brought in through a link

    @property
    def start_ns(self) -> int:
        """When its earliest span started."""
        return min(s.start_ns for s in self.spans)

    @property
    def end_ns(self) -> int:
        """When its latest span ended."""
        return max(s.end_ns for s in self.spans)

    @property
    def duration_ms(self) -> float:
        """From the earliest start to the latest end."""
        return (self.end_ns - self.start_ns) / 1e6


def _value(node: dict[str, Any]) -> Any:
    """An OTLP JSON ``AnyValue``: ``{"intValue": "4"}`` -> 4."""
    for key, value in node.items():
        if key == "intValue":
            return int(value)
        if key == "arrayValue":
            return [_value(v) for v in value.get("values", [])]
        return value
    return None


def _attributes(items: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return {a["key"]: _value(a.get("value", {})) for a in items}


def parse_request(doc: dict[str, Any]) -> Iterator[Span]:
    """The spans of one OTLP JSON ``ExportTraceServiceRequest``."""
    for resource_spans in doc.get("resourceSpans", []):
        resource = _attributes(resource_spans.get("resource", {}).get("attributes", []))
        service = str(resource.get("service.name", ""))
        for scope_spans in resource_spans.get("scopeSpans", []):
            for s in scope_spans.get("spans", []):
                yield Span(
                    service=service,
                    name=s.get("name", ""),
                    kind=int(s.get("kind", 0)),
                    trace_id=s.get("traceId", ""),
                    span_id=s.get("spanId", ""),
                    parent_span_id=s.get("parentSpanId", ""),
                    start_ns=int(s.get("startTimeUnixNano", 0)),
                    end_ns=int(s.get("endTimeUnixNano", 0)),
                    links=tuple((lk.get("traceId", ""), lk.get("spanId", "")) for lk in s.get("links", [])),
                    attributes=_attributes(s.get("attributes", [])),
                    error=int(s.get("status", {}).get("code", 0)) == STATUS_ERROR,
                )


def trace_files(path: Path) -> list[Path]:
    """``path`` and its rotated backups (``<stem>-<time><suffix>``), oldest first."""
    backups = [p for p in path.parent.glob(f"{path.stem}-*{path.suffix}") if p.is_file()]
    return sorted(backups, key=lambda p: p.stat().st_mtime) + ([path] if path.is_file() else [])


def read_spans(path: Path) -> list[Span]:
    """Every span in ``path`` and its backups; a line being written (not whole JSON yet) is skipped."""
    spans: list[Span] = []
    for file in trace_files(path):
        with file.open("rb") as fh:
            for line in fh:
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue
                spans.extend(parse_request(doc))
    return spans


def group_traces(spans: Iterable[Span]) -> dict[str, list[Span]]:
    """Spans by trace id."""
    out: dict[str, list[Span]] = defaultdict(list)
    for span in spans:
        out[span.trace_id].append(span)
    return out


def trace_of(trace_id: str, spans: list[Span]) -> Trace | None:
    """One trace with the batch spans linking into it and their descendants; None if unknown."""
    own = [s for s in spans if s.trace_id == trace_id]
    if not own:
        return None
    ids = {s.span_id for s in own}
    linked = [s for s in spans if s.trace_id != trace_id and any(sid in ids for _, sid in s.links)]
    children = defaultdict(list)
    for span in spans:
        children[span.parent_span_id].append(span)
    extra: list[Span] = []
    todo = list(linked)
    while todo:
        span = todo.pop()
        if span.span_id in ids:
            continue
        ids.add(span.span_id)
        extra.append(span)
        todo.extend(children.get(span.span_id, []))
    return Trace(trace_id, tuple(own + extra), frozenset(s.span_id for s in extra))


def find_trace(key: str, spans: list[Span]) -> Trace | None:
    """The trace whose id is ``key``, else the one whose event span carried event id ``key``."""
    key = key.strip()
    if any(s.trace_id == key.lower() for s in spans):
        return trace_of(key.lower(), spans)
    for span in spans:
        if str(span.attributes.get(EVENT_ID, "")) == key:
            return trace_of(span.trace_id, spans)
    return None


def slowest(spans: list[Span], top: int = 5, since_ns: int = 0, service: str = "sie-worker") -> list[Trace]:
    """The ``top`` traces holding a ``service`` span that started at or after ``since_ns``, slowest first.

    A trace's time runs from its earliest span's start to its latest span's end
    (its own spans only: a shared batch span does not make every event slow).
    """
    chosen = [
        (trace_id, own)
        for trace_id, own in group_traces(spans).items()
        if any(s.service == service for s in own) and min(s.start_ns for s in own) >= since_ns
    ]
    chosen.sort(key=lambda item: _extent_ns(item[1]), reverse=True)
    return [t for t in (trace_of(trace_id, spans) for trace_id, _ in chosen[:top]) if t is not None]


def _extent_ns(spans: list[Span]) -> int:
    return max(s.end_ns for s in spans) - min(s.start_ns for s in spans)
