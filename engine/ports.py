"""Every interface the core needs from the outside, as Protocols (see docs/architecture.md).

The core (``engine/``) depends only on these; the adapters implement them:

* :class:`InferenceBackend`: ``inference.triton.TritonBackend`` (and, for the benchmark's
  pass-through bound, ``inference.passthrough_backend.PassThroughBackend``);
* :class:`Sink`: ``streams.sink.KafkaSink``;
* :class:`ModelHooks`: ``models.hooks.ModelObserver`` (:data:`NO_MODEL_HOOKS` by default);
* :class:`PipelineTracing`: ``observability.tracing.OtelTracing`` (:data:`NO_TRACING` by default);
* :class:`PipelineMetrics`: ``observability.metrics.EngineMetrics``, with
  :data:`ObserveMany` (``observability.metrics.observe_many``; :func:`observe_each` by default).

:class:`PipelineParts` bundles them (with the decode context, the retrier and the settings the
pipeline reads) for :class:`engine.pipeline.Pipeline` and :class:`engine.outcomes.Outcomes`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from engine.contract.context import DecodeContext
from engine.modelspec import ModelSpec
from engine.records import Batch, InferenceResult, OutRecord, RawRecord
from engine.retry import Retrier
from engine.settings import BatchSettings, TopicSettings


class InferenceBackend(Protocol):
    """Something that runs a batch through a model."""

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        headers: Mapping[str, str] | None = None,
        version: str = "",
    ) -> InferenceResult:
        """Run one batch (on ``version``, else the backend's choice); raises RetryableError or FatalError."""

    async def model_specs(self) -> dict[str, ModelSpec]:
        """Specs of every model that is ready to serve."""

    async def model_versions(self) -> dict[str, list[str]]:
        """Ready versions per model."""

    async def is_ready(self) -> bool:
        """Whether the server answers and is ready."""

    async def close(self) -> None:
        """Release connections."""


class Sink(Protocol):
    """Where output records go."""

    async def send(self, records: Sequence[OutRecord]) -> asyncio.Future[None]:
        """Queue ``records``; the returned future resolves when all are acknowledged."""

    async def close(self) -> None:
        """Flush what is queued and stop."""


class ModelHooks(Protocol):
    """Calls from the pipeline; implementations must not raise or block."""

    def on_dispatch(self, batch: Batch) -> None:
        """A batch was sent to the backend."""

    def on_delivered(self, batch: Batch, result: InferenceResult) -> None:
        """A batch's predictions were acknowledged by the broker."""

    async def close(self) -> None:
        """Stop background work."""


class _NoModelHooks:
    def on_dispatch(self, batch: Batch) -> None:
        return None

    def on_delivered(self, batch: Batch, result: InferenceResult) -> None:
        return None

    async def close(self) -> None:
        return None


NO_MODEL_HOOKS: ModelHooks = _NoModelHooks()


# The W3C trace-context headers: an output record keeps its input's (engine/outcomes.py), and a
# PipelineTracing's ``outgoing`` replaces them with the event span's (observability/tracing.py).
TRACE_HEADERS = frozenset({"traceparent", "tracestate"})


class PipelineTracing(Protocol):
    """The pipeline's tracing hooks (see observability/tracing.py)."""

    def received(self, record: RawRecord) -> None:
        """A record was consumed: its event span starts."""

    def batch_headers(self, batch: Batch) -> dict[str, str] | None:
        """Start the batch's span; the headers to send with its inference request."""

    def batch_done(self, batch: Batch, error: BaseException | None = None) -> None:
        """The batch's inference call ended (``error`` when it failed fatally)."""

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


class CounterLike(Protocol):
    """A counter: ``prometheus_client.Counter``, or one of its labelled children."""

    def inc(self, amount: float = 1) -> None:
        """Add ``amount``."""


class GaugeLike(Protocol):
    """A gauge: ``prometheus_client.Gauge``, or one of its labelled children."""

    def inc(self, amount: float = 1) -> None:
        """Add ``amount``."""

    def dec(self, amount: float = 1) -> None:
        """Subtract ``amount``."""

    def set(self, value: float) -> None:
        """Set to ``value``."""


class HistogramLike(Protocol):
    """A histogram: ``prometheus_client.Histogram``, or one of its labelled children."""

    def observe(self, amount: float) -> None:
        """Count one observation of ``amount``."""


class LabelledCounter(Protocol):
    """A counter with labels (``Counter(..., labelnames)``)."""

    def labels(self, *labelvalues: str) -> CounterLike:
        """The child counter of these label values."""


class LabelledHistogram(Protocol):
    """A histogram with labels (``Histogram(..., labelnames)``)."""

    def labels(self, *labelvalues: str) -> HistogramLike:
        """The child histogram of these label values."""


class PipelineMetrics(Protocol):
    """The metrics the core updates (labelled Prometheus-style counters, gauges and histograms)."""

    @property
    def events_consumed(self) -> LabelledCounter: ...  # (topic)
    @property
    def predictions(self) -> LabelledCounter: ...  # (model, version)
    @property
    def dead_letters(self) -> LabelledCounter: ...  # (reason)
    @property
    def backend_errors(self) -> LabelledCounter: ...  # (code)
    @property
    def e2e_latency(self) -> LabelledHistogram: ...  # (model)
    @property
    def batch_wait(self) -> LabelledHistogram: ...  # (model)
    @property
    def backend_latency(self) -> LabelledHistogram: ...  # (model)
    @property
    def batch_size(self) -> LabelledHistogram: ...  # (model)
    @property
    def in_flight(self) -> GaugeLike: ...
    @property
    def pending_events(self) -> GaugeLike: ...
    @property
    def stream_buffer_full(self) -> LabelledCounter: ...  # (topic)


ObserveMany = Callable[[HistogramLike, "Sequence[float] | np.ndarray"], None]
"""``histogram.observe(v)`` for every value (the metrics adapter may do it in one pass)."""


def observe_each(histogram: HistogramLike, values: Sequence[float] | np.ndarray) -> None:
    """The plain :data:`ObserveMany`: one ``observe`` per value."""
    for v in values:
        histogram.observe(float(v))


@dataclass(frozen=True)
class PipelineParts:
    """Everything a pipeline is built from."""

    decode_ctx: DecodeContext
    backend: InferenceBackend
    retrier: Retrier
    sink: Sink
    topics: TopicSettings
    batch: BatchSettings
    metrics: PipelineMetrics
    tracing: PipelineTracing = NO_TRACING
    models: ModelHooks = NO_MODEL_HOOKS  # versions, A/B counts, drift, shadows (models/hooks.py)
    on_failure: Callable[[str], None] | None = None  # told once if the pipeline can no longer deliver
    observe_many: ObserveMany = observe_each  # observability.metrics.observe_many: one pass per batch
