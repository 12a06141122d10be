"""Trace context through the engine: producer -> event span -> Triton call -> output record.

Only ``opentelemetry-api`` is used here; the SDK and the exporter are set up at
the entry point (:mod:`observability.otel_setup`). The pipeline calls a
:class:`PipelineTracing` at four points:

* ``received(record)``: an *event span* starts, its parent taken from the
  record's W3C ``traceparent`` header (no header: a new trace);
* ``batch_headers(batch)`` / ``batch_done(...)``: a *batch span* covers one
  Triton request. Its parent is the first event's span (so Triton's own spans,
  which continue the context injected into the request headers, join that
  event's trace) and it links to the span of every event it carries;
* ``outgoing(record, out)``: the event span's context replaces the
  ``traceparent``/``tracestate`` headers of the prediction or dead letter;
* ``finished(record, reason)``: the event span ends once the broker has
  acknowledged the record's prediction (``reason=None``) or dead letter.

:data:`NO_TRACING` does nothing and leaves headers unchanged.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from engine.records import Batch, Headers, OutRecord, RawRecord

TRACE_HEADERS = frozenset({"traceparent", "tracestate"})
INSTRUMENTATION = "sie.engine"
_PROPAGATOR = TraceContextTextMapPropagator()


class PipelineTracing(Protocol):
    """The pipeline's tracing hooks (see the module docstring)."""

    def received(self, record: RawRecord) -> None:
        """A record was consumed: its event span starts."""

    def batch_headers(self, batch: Batch) -> dict[str, str] | None:
        """Start the batch's span; the headers to send with its Triton request."""

    def batch_done(self, batch: Batch, error: BaseException | None = None) -> None:
        """The batch's Triton call ended (``error`` when it failed fatally)."""

    def outgoing(self, record: RawRecord, out: OutRecord) -> OutRecord:
        """``out`` (produced for ``record``) carrying the record's span context."""

    def finished(self, record: RawRecord, reason: str | None = None) -> None:
        """The record's output was acknowledged: its event span ends."""


class NoTracing:
    """Tracing switched off: no spans, headers unchanged."""

    def received(self, record: RawRecord) -> None:
        """Nothing to do."""

    def batch_headers(self, batch: Batch) -> dict[str, str] | None:
        """No headers."""
        return None

    def batch_done(self, batch: Batch, error: BaseException | None = None) -> None:
        """Nothing to do."""

    def outgoing(self, record: RawRecord, out: OutRecord) -> OutRecord:
        """``out`` as it is."""
        return out

    def finished(self, record: RawRecord, reason: str | None = None) -> None:
        """Nothing to do."""


NO_TRACING: PipelineTracing = NoTracing()


class _HeaderGetter(Getter[Headers]):
    """Reads Kafka headers ``((name, bytes), ...)`` for the W3C propagator."""

    def get(self, carrier: Headers, key: str) -> list[str] | None:
        values = [v.decode("latin-1") for k, v in carrier if k.lower() == key and v is not None]
        return values or None

    def keys(self, carrier: Headers) -> list[str]:
        return [k for k, _ in carrier]


_GETTER = _HeaderGetter()


def extract_context(headers: Headers) -> Context:
    """The trace context in Kafka ``headers`` (an empty context when there is none)."""
    return _PROPAGATOR.extract(headers, getter=_GETTER)


def inject_headers(span: Span) -> dict[str, str]:
    """``traceparent`` (and ``tracestate``) naming ``span``."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier


class OtelTracing:
    """:class:`PipelineTracing` on an OpenTelemetry tracer (the global one by default)."""

    def __init__(self, tracer: Tracer | None = None) -> None:
        self._tracer = tracer or trace.get_tracer(INSTRUMENTATION)
        self._events: dict[int, Span] = {}  # id(record) -> its open event span
        self._batches: dict[int, Span] = {}  # id(batch) -> its open batch span

    @property
    def open_spans(self) -> int:
        """Event and batch spans started and not yet ended."""
        return len(self._events) + len(self._batches)

    def received(self, record: RawRecord) -> None:
        """Start the record's event span, continuing the producer's trace if any."""
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
        spans = [s for s in (self._events.get(id(e.record)) for e in batch.events) if s is not None]
        parent = trace.set_span_in_context(spans[0]) if spans else None
        span = self._tracer.start_span(
            f"triton infer {batch.model}",
            context=parent,
            kind=SpanKind.CLIENT,
            links=[Link(s.get_span_context()) for s in spans],
            attributes={
                "rpc.system": "grpc",
                "rpc.service": "inference.GRPCInferenceService",
                "rpc.method": "ModelInfer",
                "sie.model": batch.model,
                "sie.batch.size": len(batch),
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
