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
the backpressure that stops consumption when the inference backend is slow or down.

No input stops the pipeline: an exception while decoding, batching or
inferring one record or one batch turns exactly those records into dead
letters (``invalid_event``, ``bad_shape``, ``inference_error``), and what
happens after inference is :mod:`engine.outcomes`' job. Retryable backend
errors are retried (:mod:`engine.retry`), never dead-lettered. Should one of
the pipeline's tasks end anyway, or the producer give up on an output,
:attr:`Pipeline.failure` says why and ``PipelineParts.on_failure`` is told
(the worker then reports itself unhealthy and exits).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from engine.adaptive import AdaptiveBatching, AdaptiveConfig, run_controller
from engine.batcher import MicroBatcher
from engine.clock import Clock, LoopClock
from engine.contract.decode import decode, decode_many
from engine.dlq import letters
from engine.errors import FatalError, Reason, describe, error_code
from engine.outcomes import Outcomes
from engine.ports import NO_TRACING, PipelineParts
from engine.records import Batch, BatchOutcome, DeadLetter, Event, InferenceResult, RawRecord

log = logging.getLogger(__name__)


class Pipeline:
    """See the module docstring."""

    def __init__(self, parts: PipelineParts, clock: Clock | None = None) -> None:
        self._parts = parts
        self._clock = clock or LoopClock()
        self.decode_ctx = parts.decode_ctx
        models = parts.decode_ctx.models
        self._batcher = MicroBatcher(
            max_size=parts.batch.max_size,
            max_delay=parts.batch.max_delay_ms / 1000.0,
            clock=self._clock,
            emit=self._dispatch,
            model_max_sizes={n: s.max_batch_size for n, s in models.items()},
            shaped_models=[n for n, s in models.items() if any(t.max_elements is None for t in s.inputs)],
        )
        self._in_flight = asyncio.Semaphore(parts.batch.max_in_flight)
        self._fifo: asyncio.Queue[tuple[Batch, asyncio.Task[BatchOutcome]]] = asyncio.Queue()
        self._max_outstanding = 2 * parts.batch.max_in_flight
        self._outstanding = 0  # batches dispatched and not yet handed to the sink
        self._inferring = 0  # batches dispatched whose inference has not finished
        self._capacity = asyncio.Event()
        self._capacity.set()
        self._emitter: asyncio.Task[None] | None = None
        self._adaptive = _adaptive_controller(parts, self._batcher)
        self._out = Outcomes(parts, self._adaptive, parts.on_failure)
        self._controller: asyncio.Task[None] | None = None
        self._stopping = False
        m = parts.metrics
        for model in models:  # series at zero from the start, so rate() sees the first batch
            for histogram in (m.batch_size, m.batch_wait, m.backend_latency, m.e2e_latency):
                histogram.labels(model)

    async def start(self) -> None:
        """Start the emitter (and the adaptive batching controller, if configured)."""
        self._emitter = self._watched(self._emit_loop(), "pipeline-emitter")
        if self._adaptive is not None:
            self._controller = self._watched(run_controller(self._adaptive), "adaptive-batching")

    async def submit(self, records: Sequence[RawRecord]) -> None:
        """Process consumed records (in offset order); waits while at capacity. Never raises for a record."""
        if not records:
            return
        self._out.admit(len(records))
        for topic, n in Counter(r.source.topic for r in records).items():  # chunks may mix topics
            self._parts.metrics.events_consumed.labels(topic).inc(n)
        dead = self._admit(records)
        if self._adaptive is not None and self._inferring < self._parts.batch.max_in_flight:
            # the backend has a free slot: send what this chunk brought now instead of waiting for
            # the deadline; under load the slots stay busy and batches grow (adaptive batching)
            self._batcher.flush_all()
        await self._out.dead(dead)
        if self._outstanding >= self._max_outstanding:  # backpressure: consumption pauses
            self._parts.metrics.stream_buffer_full.labels(records[0].source.topic).inc()
        while self._outstanding >= self._max_outstanding:
            self._capacity.clear()
            await self._capacity.wait()

    async def drain(self, timeout: float | None = None) -> bool:
        """Flush open batches and wait until every submitted record is acknowledged."""
        self._batcher.flush_all()
        try:
            await asyncio.wait_for(self._out.idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def stop(self, timeout: float = 30.0) -> None:
        """Drain, then stop the emitter."""
        drained = await self.drain(timeout)
        if not drained:
            log.warning("stopping with %d records unacknowledged", self._out.undelivered)
        self._stopping = True
        for task in (self._emitter, self._controller):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

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
        return self._out.undelivered

    @property
    def failure(self) -> str | None:
        """Why this pipeline can no longer deliver (a task died, an output was given up), or None."""
        return self._out.failure

    def _watched(self, coro: Any, name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_ended)
        return task

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        """A pipeline task ended: unless we stopped it, the pipeline is broken - say so, loudly."""
        if self._stopping or task.cancelled():
            return
        err = task.exception()
        self._out.fail(f"task {task.get_name()} ended: {describe(err) if err else 'returned'}")

    def _admit(self, records: Sequence[RawRecord]) -> list[DeadLetter]:
        """Decode ``records`` and add the valid events to their batches; the rest are dead letters."""
        if self._parts.tracing is not NO_TRACING:
            try:
                for record in records:
                    self._parts.tracing.received(record)
            except Exception:  # tracing is best effort; the records go on
                log.exception("tracing failed for %d received records", len(records))
        dead: list[DeadLetter] = []
        for item in self._decode(records):
            if isinstance(item, Event):
                try:
                    self._batcher.add(item)
                except Exception as err:
                    message = f"cannot batch: {describe(err)}"
                    dead.append(DeadLetter(item.record, Reason.INFERENCE_ERROR, message))
            else:
                dead.append(item)
        return dead

    def _decode(self, records: Sequence[RawRecord]) -> list[Event | DeadLetter]:
        """:func:`decode_many`, falling back to one record at a time should it fail."""
        try:
            items = decode_many(records, self.decode_ctx)
            if len(items) == len(records):
                return items
            log.error("decoder returned %d items for %d records", len(items), len(records))
        except Exception:
            log.exception("decoding a chunk of %d records failed; decoding them one by one", len(records))
        return [self._decode_one(record) for record in records]

    def _decode_one(self, record: RawRecord) -> Event | DeadLetter:
        try:
            return decode(record, self.decode_ctx)
        except Exception as err:
            return DeadLetter(record, Reason.INVALID_EVENT, f"cannot decode: {describe(err)}")

    def _dispatch(self, batch: Batch) -> None:
        self._outstanding += 1
        self._inferring += 1
        task = asyncio.ensure_future(self._infer(batch))
        task.add_done_callback(self._inferred)
        self._fifo.put_nowait((batch, task))
        try:
            self._parts.models.on_dispatch(batch)
        except Exception:
            log.exception("model hooks failed for a dispatched batch of %s", batch.model)

    def _inferred(self, _task: asyncio.Task[BatchOutcome]) -> None:
        self._inferring -= 1

    async def _infer(self, batch: Batch) -> BatchOutcome:
        """Run ``batch`` through the backend; any failure but a retryable one is its outcome, never raised."""
        try:
            inputs = batch.stacked_inputs()
        except Exception as err:  # cannot happen for batches split by shape; never crash on it
            now = self._clock.now()
            bad = DeadLetter(batch.events[0].record, Reason.BAD_SHAPE, f"cannot stack: {describe(err)}")
            return BatchOutcome(batch=batch, result=None, error=bad, sent_at=now, finished_at=now)
        metrics = self._parts.metrics
        result: InferenceResult | None = None
        error: DeadLetter | None = None
        async with self._in_flight:
            metrics.in_flight.inc()
            sent_at = self._clock.now()
            try:
                result = await self._call_backend(batch, inputs)
            except Exception as err:  # FatalError, or anything unexpected: dead letters, not a dead task
                error = self._batch_error(batch, err)
            finally:
                metrics.in_flight.dec()
        finished = self._clock.now()
        metrics.batch_size.labels(batch.model).observe(len(batch))
        metrics.backend_latency.labels(batch.model).observe(finished - sent_at)
        return BatchOutcome(batch=batch, result=result, error=error, sent_at=sent_at, finished_at=finished)

    async def _call_backend(self, batch: Batch, inputs: dict[str, np.ndarray]) -> InferenceResult:
        headers = self._parts.tracing.batch_headers(batch)
        pinned = {"version": batch.version} if batch.version else {}  # A/B arm on a version
        result = await self._parts.retrier.call(
            lambda: self._parts.backend.infer(batch.model, inputs, headers=headers, **pinned)
        )
        self._parts.tracing.batch_done(batch)
        return result

    def _batch_error(self, batch: Batch, err: Exception) -> DeadLetter:
        self._parts.metrics.backend_errors.labels(error_code(err)).inc()
        if isinstance(err, FatalError):
            reason, message = err.reason, str(err)
        else:
            log.error("inference of a batch of %s failed unexpectedly: %s", batch.model, describe(err))
            reason, message = Reason.INFERENCE_ERROR, describe(err)
        try:
            self._parts.tracing.batch_done(batch, err)
        except Exception:
            log.exception("tracing failed for a failed batch of %s", batch.model)
        return DeadLetter(batch.events[0].record, reason, message)

    async def _emit_loop(self) -> None:
        while True:
            batch, task = await self._fifo.get()
            try:
                await self._emit(batch, task)
            finally:
                self._outstanding -= 1
                if self._outstanding < self._max_outstanding:
                    self._capacity.set()

    async def _emit(self, batch: Batch, task: asyncio.Task[BatchOutcome]) -> None:
        """Produce one batch's outputs, in the order batches closed; a failure dead-letters the batch."""
        try:
            outcome = await task
            if outcome.result is not None:
                await self._out.predictions(outcome)
                return
            error = outcome.error
            assert error is not None
            await self._out.dead(letters((e.record for e in batch.events), error.reason, error.message))
        except asyncio.CancelledError:
            raise
        except Exception as err:  # nothing was produced for this batch yet (see engine/outcomes.py)
            log.exception("outputs of a %s batch failed; dead-lettering it", batch.model)
            message = f"outputs failed: {describe(err)}"
            await self._out.dead(letters((e.record for e in batch.events), Reason.INFERENCE_ERROR, message))


def _adaptive_controller(parts: PipelineParts, batcher: MicroBatcher) -> AdaptiveBatching | None:
    """The adaptive batching controller when ``batch.adaptive`` is on (it drives the deadline)."""
    if not parts.batch.adaptive:
        return None
    config = AdaptiveConfig(slo_ms=parts.batch.slo_ms, max_delay_ms=parts.batch.adaptive_max_delay_ms)
    return AdaptiveBatching(config, parts.batch.max_delay_ms, batcher.set_max_delay)
