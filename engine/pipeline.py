"""The processing pipeline of one worker, independent of Faust and of servers.

``submit`` takes consumed records in order. Each is decoded; a dead letter is
produced to the DLQ at once, a valid event joins its model's micro-batch. A
closed batch is sent to the inference backend straight away (at most
``max_in_flight`` requests at a time, retried through the circuit breaker),
and the emitter produces the batches' predictions in the order the batches
were closed, so events of one key and model keep their order on the output.
Each record's :class:`~engine.records.Completion` is told once its prediction
or dead letter is acknowledged by the broker - only then may its offset be
committed. ``submit`` blocks while too many batches are outstanding: that is
the backpressure that stops consumption when Triton is slow or down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from engine.adaptive import AdaptiveBatching, AdaptiveConfig, run_controller
from engine.batcher import MicroBatcher
from engine.clock import Clock, LoopClock
from engine.errors import FatalError
from engine.lifecycle import NO_MODEL_HOOKS, ModelHooks
from engine.records import Batch, BatchOutcome, Completion, DeadLetter, Event, OutRecord, RawRecord
from engine.retry import Retrier
from engine.settings import BatchSettings, TopicSettings
from engine.sink import Sink
from engine.triton import InferenceBackend, error_code
from observability.metrics import EngineMetrics, observe_many
from observability.tracing import NO_TRACING, PipelineTracing
from streams.codec import DecodeContext, decode_many, encode_prediction
from streams.dlq import dead_letter_record

log = logging.getLogger(__name__)

PROPAGATED_HEADERS = frozenset({"traceparent", "tracestate"})


@dataclass(frozen=True)
class PipelineParts:
    """Everything a pipeline is built from."""

    decode_ctx: DecodeContext
    backend: InferenceBackend
    retrier: Retrier
    sink: Sink
    topics: TopicSettings
    batch: BatchSettings
    metrics: EngineMetrics
    tracing: PipelineTracing = NO_TRACING
    models: ModelHooks = NO_MODEL_HOOKS  # versions, A/B counts, drift, shadows (engine/lifecycle.py)


class Pipeline:
    """See the module docstring."""

    def __init__(self, parts: PipelineParts, clock: Clock | None = None) -> None:
        self._p = parts
        self._clock = clock or LoopClock()
        self.decode_ctx = parts.decode_ctx
        self._batcher = MicroBatcher(
            max_size=parts.batch.max_size,
            max_delay=parts.batch.max_delay_ms / 1000.0,
            clock=self._clock,
            emit=self._dispatch,
            model_max_sizes={n: s.max_batch_size for n, s in parts.decode_ctx.models.items()},
        )
        self._in_flight = asyncio.Semaphore(parts.batch.max_in_flight)
        self._fifo: asyncio.Queue[tuple[Batch, asyncio.Task[BatchOutcome]]] = asyncio.Queue()
        self._max_outstanding = 2 * parts.batch.max_in_flight
        self._outstanding = 0  # batches dispatched and not yet handed to the sink
        self._inferring = 0  # batches dispatched whose inference has not finished
        self._capacity = asyncio.Event()
        self._capacity.set()
        self._undelivered = 0  # records submitted, not yet acknowledged
        self._idle = asyncio.Event()
        self._idle.set()
        self._emitter: asyncio.Task[None] | None = None
        self._adaptive = _adaptive_controller(parts, self._batcher)
        self._controller: asyncio.Task[None] | None = None
        m = parts.metrics
        for model in parts.decode_ctx.models:  # series at zero from the start, so rate() sees the first batch
            for histogram in (m.batch_size, m.batch_wait, m.triton_latency, m.e2e_latency):
                histogram.labels(model)

    async def start(self) -> None:
        """Start the emitter (and the adaptive batching controller, if configured)."""
        self._emitter = asyncio.create_task(self._emit_loop(), name="pipeline-emitter")
        if self._adaptive is not None:
            self._controller = asyncio.create_task(run_controller(self._adaptive), name="adaptive-batching")

    async def submit(self, records: Sequence[RawRecord]) -> None:
        """Process consumed records (in offset order); waits while at capacity."""
        if not records:
            return
        self._track(len(records))
        consumed = self._p.metrics.events_consumed
        dead: list[DeadLetter] = []
        for record in records:
            self._p.tracing.received(record)
        for item in decode_many(records, self.decode_ctx):
            if isinstance(item, Event):
                self._batcher.add(item)
            else:
                dead.append(item)
        for topic, n in Counter(r.source.topic for r in records).items():  # chunks may mix topics
            consumed.labels(topic).inc(n)
        if self._adaptive is not None and self._inferring < self._p.batch.max_in_flight:
            # Triton has a free slot: send what this chunk brought now instead of waiting for
            # the deadline; under load the slots stay busy and batches grow (adaptive batching)
            self._batcher.flush_all()
        if dead:
            await self._send_dead(dead)
        if self._outstanding >= self._max_outstanding:  # backpressure: consumption pauses
            self._p.metrics.stream_buffer_full.labels(records[0].source.topic).inc()
        while self._outstanding >= self._max_outstanding:
            self._capacity.clear()
            await self._capacity.wait()

    async def drain(self, timeout: float | None = None) -> bool:
        """Flush open batches and wait until every submitted record is acknowledged."""
        self._batcher.flush_all()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def stop(self, timeout: float = 30.0) -> None:
        """Drain, then stop the emitter."""
        drained = await self.drain(timeout)
        if not drained:
            log.warning("stopping with %d records unacknowledged", self._undelivered)
        if self._emitter is not None:
            self._emitter.cancel()
            await asyncio.gather(self._emitter, return_exceptions=True)
        if self._controller is not None:
            self._controller.cancel()
            await asyncio.gather(self._controller, return_exceptions=True)

    @property
    def adaptive(self) -> AdaptiveBatching | None:
        """The adaptive batching controller, when ``batch.adaptive`` is on."""
        return self._adaptive

    @property
    def batch_deadline_s(self) -> float:
        """The micro-batch deadline now in force, seconds."""
        return self._batcher.max_delay

    @property
    def undelivered(self) -> int:
        """Records submitted and not yet acknowledged."""
        return self._undelivered

    def _track(self, n: int) -> None:
        self._undelivered += n
        self._idle.clear() if self._undelivered else self._idle.set()
        self._p.metrics.pending_events.set(self._undelivered)

    def _dispatch(self, batch: Batch) -> None:
        self._outstanding += 1
        self._inferring += 1
        task = asyncio.ensure_future(self._infer(batch))
        task.add_done_callback(self._inferred)
        self._fifo.put_nowait((batch, task))
        self._p.models.on_dispatch(batch)

    def _inferred(self, _task: asyncio.Task[BatchOutcome]) -> None:
        self._inferring -= 1

    async def _infer(self, batch: Batch) -> BatchOutcome:
        metrics = self._p.metrics
        async with self._in_flight:
            metrics.in_flight.inc()
            sent_at = self._clock.now()
            headers = self._p.tracing.batch_headers(batch)
            pinned = {"version": batch.version} if batch.version else {}  # A/B arm on a version
            try:
                result = await self._p.retrier.call(
                    lambda: self._p.backend.infer(
                        batch.model, batch.stacked_inputs(), headers=headers, **pinned
                    )
                )
                error = None
                self._p.tracing.batch_done(batch)
            except FatalError as err:
                metrics.triton_errors.labels(error_code(err)).inc()
                self._p.tracing.batch_done(batch, err)
                result, error = None, DeadLetter(batch.events[0].record, err.reason, str(err))
            finally:
                metrics.in_flight.dec()
        finished = self._clock.now()
        metrics.batch_size.labels(batch.model).observe(len(batch))
        metrics.triton_latency.labels(batch.model).observe(finished - sent_at)
        return BatchOutcome(batch=batch, result=result, error=error, sent_at=sent_at, finished_at=finished)

    async def _emit_loop(self) -> None:
        while True:
            batch, task = await self._fifo.get()
            outcome = await task
            if outcome.result is None:
                assert outcome.error is not None
                error = outcome.error
                letters = [DeadLetter(e.record, error.reason, error.message) for e in batch.events]
                await self._send_dead(letters)
            else:
                await self._send_predictions(outcome)
            self._outstanding -= 1
            if self._outstanding < self._max_outstanding:
                self._capacity.set()

    async def _send_predictions(self, outcome: BatchOutcome) -> None:
        batch, result = outcome.batch, outcome.result
        assert result is not None
        topic = self._p.topics.predictions
        records = [e.record for e in batch.events]
        # per-event times in one numpy pass: queue = consumed -> sent to Triton, total = event
        # timestamp -> now (consumed -> now when the record has no timestamp)
        received = np.fromiter((r.received_at for r in records), np.float64, len(records))
        stamps = np.fromiter((r.source.timestamp_ms or 0 for r in records), np.float64, len(records))
        queue_s = np.maximum(outcome.sent_at - received, 0.0)
        observe_many(self._p.metrics.batch_wait.labels(batch.model), queue_s)
        total_ms = np.where(
            stamps > 0, time.time() * 1000.0 - stamps, (outcome.finished_at - received) * 1000.0
        )
        inference_ms = round((outcome.finished_at - outcome.sent_at) * 1000.0, 3)
        queue_list = np.round(queue_s * 1000.0, 3).tolist()
        total_list = np.round(total_ms, 3).tolist()
        outgoing = self._p.tracing.outgoing
        out: list[OutRecord] = []
        for i, event in enumerate(batch.events):
            rec = records[i]
            timing = {"queue": queue_list[i], "inference": inference_ms, "total": total_list[i]}
            outputs = {name: arr[i] for name, arr in result.outputs.items()}
            value = encode_prediction(event, result.model_version, outputs, timing)
            headers = tuple((k, v) for k, v in rec.headers if k in PROPAGATED_HEADERS) if rec.headers else ()
            out.append(outgoing(rec, OutRecord(topic=topic, key=rec.key, value=value, headers=headers)))
        future = await self._p.sink.send(out)
        future.add_done_callback(lambda _f: self._predictions_delivered(outcome))

    def _predictions_delivered(self, outcome: BatchOutcome) -> None:
        batch, result = outcome.batch, outcome.result
        assert result is not None
        metrics = self._p.metrics
        metrics.predictions.labels(batch.model, result.model_version).inc(len(batch))
        now_ms = time.time() * 1000.0
        stamps = [e.record.source.timestamp_ms for e in batch.events]
        latencies = [max(now_ms - ts, 0.0) / 1000.0 for ts in stamps if ts]
        observe_many(metrics.e2e_latency.labels(batch.model), latencies)
        if self._adaptive is not None:
            for seconds in latencies:
                self._adaptive.observe(seconds)
        finished = self._p.tracing.finished
        for event in batch.events:
            finished(event.record)
        _complete(e.record for e in batch.events)
        self._track(-len(batch))
        self._p.models.on_delivered(batch, result)

    async def _send_dead(self, letters: Sequence[DeadLetter]) -> None:
        topic = self._p.topics.dlq
        outgoing = self._p.tracing.outgoing
        future = await self._p.sink.send([outgoing(d.record, dead_letter_record(d, topic)) for d in letters])
        future.add_done_callback(lambda _f: self._dead_delivered(letters))

    def _dead_delivered(self, letters: Sequence[DeadLetter]) -> None:
        counter = self._p.metrics.dead_letters
        for letter in letters:
            counter.labels(letter.reason.value).inc()
            self._p.tracing.finished(letter.record, letter.reason.value)
        _complete(d.record for d in letters)
        self._track(-len(letters))


def _complete(records: Iterable[RawRecord]) -> None:
    """Tell each record's completion it is delivered; runs of one completion are told at once."""
    current: Completion | None = None
    n = 0
    for record in records:
        if record.completion is not current:
            if current is not None:
                current.done(n)
            current, n = record.completion, 0
        n += 1
    if current is not None:
        current.done(n)


def _adaptive_controller(parts: PipelineParts, batcher: MicroBatcher) -> AdaptiveBatching | None:
    """The adaptive batching controller when ``batch.adaptive`` is on (it drives the deadline)."""
    if not parts.batch.adaptive:
        return None
    config = AdaptiveConfig(slo_ms=parts.batch.slo_ms, max_delay_ms=parts.batch.adaptive_max_delay_ms)
    return AdaptiveBatching(config, parts.batch.max_delay_ms, batcher.set_max_delay)
