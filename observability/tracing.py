"""Trace context through the engine: producer -> event span -> Triton call -> output record.

Only ``opentelemetry-api`` is used here; the SDK and the exporter are set up at
the entry point (:mod:`observability.otel_setup`). The pipeline calls a
:class:`engine.ports.PipelineTracing` at four points:

* ``received(record)``: an *event span* starts, its parent taken from the
  record's W3C ``traceparent`` header (no header: a new trace) - if the event
  is sampled (:class:`HeadSampler`: the ``traceparent``'s sampled flag, else
  ``SIE_TRACE_SAMPLE_RATIO``); an unsampled event gets no span at all;
* ``batch_headers(batch)`` / ``batch_done(...)``: each sampled event span
  gets its event's id (``sie.event.id``), and a *batch span* covers one
  Triton request. Its parent is the first event's span (so Triton's own spans,
  which continue the context injected into the request headers, join that
  event's trace) and it links to the span of every event it carries;
* ``outgoing(record, out)``: the event span's context replaces the
  ``traceparent``/``tracestate`` headers of the prediction or dead letter;
* ``finished(record, reason)``: the event span ends once the broker has
  acknowledged the record's prediction (``reason=None``) or dead letter.

:data:`engine.ports.NO_TRACING` does nothing and leaves headers unchanged.

Incoming trace headers are whatever a producer wrote. Before the W3C
propagator sees them, a ``traceparent`` over 512 characters and a
``tracestate`` over 1024 characters, of more than 32 members, or with a member
that is not ``key=value`` as W3C defines it are dropped (the propagator would
log the bad member verbatim: newlines, escape codes, 200 KB). Each drop is
reported by :class:`DroppedTraceHeaders`: escaped, bounded, at most one log
line a minute.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import replace
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from engine.ports import TRACE_HEADERS
from engine.records import Batch, Headers, OutRecord, RawRecord
from engine.safe_text import shown

log = logging.getLogger(__name__)

INSTRUMENTATION = "sie.engine"
EVENT_ID = "sie.event.id"  # on an event span once its event is decoded and batched
MODEL = "sie.model"  # on a batch span
BATCH_SIZE = "sie.batch.size"  # on a batch span: events in the Triton request
_PROPAGATOR = TraceContextTextMapPropagator()
MAX_TRACEPARENT_CHARS = 512  # version 00 is 55; later versions may append fields
MAX_TRACESTATE_CHARS = 1024  # W3C: propagate at least 512, may drop beyond
MAX_TRACESTATE_MEMBERS = 32  # W3C's limit
_KEY = r"(?:[a-z][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13})"
_VALUE = r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
_MEMBER = re.compile(f"{_KEY}={_VALUE}[ \t]*")  # as strict as the propagator: it logs what it rejects
_MEMBER_SEPARATOR = re.compile(r"[ \t]*,[ \t]*")


class DroppedTraceHeaders:
    """Reports trace headers dropped as invalid: one escaped, bounded warning a minute; counts the rest."""

    def __init__(self, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._next_at = float("-inf")
        self.unreported = 0  # drops since the last warning

    def report(self, name: str, value: bytes, why: str) -> None:
        """Header ``name`` holding ``value`` was dropped because of ``why``."""
        now = self._clock()
        if now < self._next_at:
            self.unreported += 1
            return
        more = f"; {self.unreported} more dropped since the last report" if self.unreported else ""
        log.warning("dropped an invalid %s header (%s): %s%s", name, why, shown(value), more)
        self._next_at, self.unreported = now + self._interval_s, 0


class TraceHeaderGetter(Getter[Headers]):
    """Reads Kafka headers ``((name, bytes), ...)`` for the W3C propagator, dropping invalid trace headers."""

    def __init__(self, dropped: DroppedTraceHeaders | None = None) -> None:
        self._dropped = dropped or DroppedTraceHeaders()

    def get(self, carrier: Headers, key: str) -> list[str] | None:
        """The values of header ``key``; None when absent or dropped as invalid."""
        raw = [v for k, v in carrier if k.lower() == key and v is not None]
        values = [v.decode("latin-1") for v in raw]
        why = _invalid(key, values) if values else None
        if why is not None:
            self._dropped.report(key, b",".join(raw), why)
            return None
        return values or None

    def keys(self, carrier: Headers) -> list[str]:
        """Every header name."""
        return [k for k, _ in carrier]


def _invalid(key: str, values: list[str]) -> str | None:
    """Why the values of trace header ``key`` must not reach the propagator, or None."""
    size = sum(len(v) for v in values)
    if key == "traceparent" and size > MAX_TRACEPARENT_CHARS:
        return f"{size} characters, over {MAX_TRACEPARENT_CHARS}"
    if key != "tracestate":
        return None
    if size > MAX_TRACESTATE_CHARS:
        return f"{size} characters, over {MAX_TRACESTATE_CHARS}"
    members = [m for v in values for m in _MEMBER_SEPARATOR.split(v) if m]
    if len(members) > MAX_TRACESTATE_MEMBERS:
        return f"{len(members)} members, over {MAX_TRACESTATE_MEMBERS}"
    if not all(_MEMBER.fullmatch(m) for m in members):
        return "not a list of W3C key=value members"
    return None


_GETTER = TraceHeaderGetter()


def extract_context(headers: Headers, getter: TraceHeaderGetter = _GETTER) -> Context:
    """The trace context in Kafka ``headers`` (an empty context when there is none)."""
    return _PROPAGATOR.extract(headers, getter=getter)


def inject_headers(span: Span) -> dict[str, str]:
    """``traceparent`` (and ``tracestate``) naming ``span``."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier


def sampled_flag(headers: Headers) -> bool | None:
    """The ``sampled`` flag of a record's W3C ``traceparent``; None when it has no valid one.

    Read straight from the header (``00-<trace id>-<parent id>-<flags>``), without the
    propagator, so that deciding costs no objects.
    """
    value = None
    for k, v in headers:
        if k == "traceparent":
            value = v
    if value is None or len(value) < 55 or value[2:3] != b"-" or value[52:53] != b"-":
        return None
    try:
        return bool(int(value[53:55], 16) & 1)
    except ValueError:
        return None


class HeadSampler:
    """Which events get spans: the producer's decision when its ``traceparent`` says, else ``ratio``.

    An unsampled event costs no span object; its prediction keeps the producer's trace headers.
    """

    def __init__(self, ratio: float = 1.0, draw: Callable[[], float] = random.random) -> None:
        self.ratio = ratio
        self._draw = draw

    def sampled(self, record: RawRecord) -> bool:
        """Whether ``record`` gets an event span."""
        flag = sampled_flag(record.headers) if record.headers else None
        if flag is not None:
            return flag
        return self.ratio >= 1.0 or self._draw() < self.ratio


class OtelTracing:
    """:class:`PipelineTracing` on an OpenTelemetry tracer (the global one by default), head-sampled."""

    def __init__(self, tracer: Tracer | None = None, sampler: HeadSampler | None = None) -> None:
        self._tracer = tracer or trace.get_tracer(INSTRUMENTATION)
        self._sampler = sampler or HeadSampler()
        self._events: dict[int, Span] = {}  # id(record) -> its open event span
        self._batches: dict[int, Span] = {}  # id(batch) -> its open batch span

    @property
    def open_spans(self) -> int:
        """Event and batch spans started and not yet ended."""
        return len(self._events) + len(self._batches)

    def received(self, record: RawRecord) -> None:
        """Start the record's event span, continuing the producer's trace if any (if sampled)."""
        if not self._sampler.sampled(record):
            return
        src = record.source
        span = self._tracer.start_span(
            f"{src.topic} process",
            context=extract_context(record.headers),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation": "process",
                "messaging.destination.name": src.topic,
                "messaging.kafka.destination.partition": src.partition,
                "messaging.kafka.message.offset": src.offset,
            },
        )
        self._events[id(record)] = span

    def batch_headers(self, batch: Batch) -> dict[str, str] | None:
        """Start the batch span (child of the first event's span, linked to all of them)."""
        spans = []
        for event in batch.events:
            span = self._events.get(id(event.record))
            if span is not None:
                span.set_attribute(EVENT_ID, event.id)  # `sie traces <event id>` finds the trace by it
                spans.append(span)
        if not spans:  # no sampled event in the batch: no span, and Triton is not asked to trace
            return None
        parent = trace.set_span_in_context(spans[0])
        span = self._tracer.start_span(
            f"triton infer {batch.model}",
            context=parent,
            kind=SpanKind.CLIENT,
            links=[Link(s.get_span_context()) for s in spans],
            attributes={
                "rpc.system": "grpc",
                "rpc.service": "inference.GRPCInferenceService",
                "rpc.method": "ModelInfer",
                MODEL: batch.model,
                BATCH_SIZE: len(batch),
            },
        )
        self._batches[id(batch)] = span
        return inject_headers(span)

    def batch_done(self, batch: Batch, error: BaseException | None = None) -> None:
        """End the batch span, recording a fatal error."""
        span = self._batches.pop(id(batch), None)
        if span is None:
            return
        if error is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        span.end()

    def outgoing(self, record: RawRecord, out: OutRecord) -> OutRecord:
        """``out`` with its trace headers replaced by the record's event span context."""
        span = self._events.get(id(record))
        if span is None:
            return out
        kept = tuple((k, v) for k, v in out.headers if k not in TRACE_HEADERS)
        headers = kept + tuple((k, v.encode()) for k, v in inject_headers(span).items())
        return replace(out, headers=headers)

    def finished(self, record: RawRecord, reason: str | None = None) -> None:
        """End the record's event span; a dead letter's reason marks it as an error."""
        span = self._events.pop(id(record), None)
        if span is None:
            return
        if reason is not None:
            span.set_attribute("sie.dead_letter.reason", reason)
            span.set_status(Status(StatusCode.ERROR, reason))
        span.end()


def otlp_traces_url(endpoint: str) -> str:
    """An OTLP/HTTP traces URL: ``http://host:4318`` becomes ``http://host:4318/v1/traces``."""
    parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    path = parts.path if parts.path not in ("", "/") else "/v1/traces"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))
