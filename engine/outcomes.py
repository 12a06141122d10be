"""Where every consumed record ends: one prediction or one dead letter, acknowledged by the broker.

The pipeline's one rule is kept here. Every record the pipeline admits
(:meth:`Outcomes.admit`) leaves through exactly one of

* :meth:`Outcomes.predictions` - a batch's answer: one prediction per event,
  except events whose prediction cannot be encoded (``inference_error``) or
  is larger than the broker accepts (``too_large``), which become dead letters;
* :meth:`Outcomes.dead` - dead letters, cut down to the size limit
  (:func:`engine.dlq.fit_record`) so they can always be produced.

Everything that can go wrong for one record or one batch is turned into dead
letters for exactly those records before anything is produced; producing
itself never raises here. A record counts as done - its
:class:`~engine.records.Completion` is told, so its offset may be committed -
only when the broker has acknowledged its output. An output the producer gives
up on (a permanent error, see :mod:`streams.sink`) is never counted as done:
the pipeline reports a failure instead, and the worker stops loudly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from engine.adaptive import AdaptiveBatching
from engine.contract.outputs import BinaryPredictions, encode_prediction
from engine.dlq import HEADER_OVERHEAD, RECORD_OVERHEAD, dead_letter_record, fit_record, letters, record_size
from engine.errors import Reason, describe
from engine.ports import NO_TRACING, TRACE_HEADERS, HistogramLike, ObserveMany, PipelineParts
from engine.records import BatchOutcome, Completion, DeadLetter, Event, InferenceResult, OutRecord, RawRecord

log = logging.getLogger(__name__)

_OWN_HEADERS_SLACK = 2048  # bytes of headers a prediction adds: content type, length, trace context


class Outcomes:
    """See the module docstring."""

    def __init__(
        self,
        parts: PipelineParts,
        adaptive: AdaptiveBatching | None = None,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self._parts = parts
        self._adaptive = adaptive
        self._on_failure = on_failure
        limits = parts.decode_ctx.limits
        self._max_bytes = limits.max_message_bytes
        self._tracing = parts.tracing is not NO_TRACING  # per-record calls only when tracing is on
        # Key + value bytes below which a prediction fits whatever its headers: the input's headers
        # passed their limits, and ours (content type, trace context) take less than the slack.
        headers_bound = limits.max_header_bytes + limits.max_headers * HEADER_OVERHEAD + _OWN_HEADERS_SLACK
        self._room = self._max_bytes - RECORD_OVERHEAD - headers_bound
        self.undelivered = 0  # records admitted, not yet acknowledged
        self.idle = asyncio.Event()
        self.idle.set()
        self.failure: str | None = None

    def admit(self, n: int) -> None:
        """``n`` more records are on their way through the pipeline."""
        self._track(n)

    def fail(self, reason: str) -> None:
        """Record the first failure that stops this pipeline from delivering; tell the worker."""
        if self.failure is not None:
            return
        self.failure = reason
        log.error("pipeline failed: %s", reason)
        if self._on_failure is not None:
            self._on_failure(reason)

    async def dead(self, dead: Sequence[DeadLetter]) -> None:
        """Produce ``dead`` to the DLQ; each record is done when its dead letter is acknowledged."""
        if dead:
            out = [self._dead_record(d) for d in dead]
            await self._send(out, lambda: self._dead_delivered(dead))

    async def predictions(self, outcome: BatchOutcome) -> None:
        """Produce one prediction per event of a batch the backend answered (or a dead letter, see above)."""
        batch, result = outcome.batch, outcome.result
        assert result is not None
        wrong = _rows_problem(result, len(batch))
        if wrong is not None:
            await self.dead(letters((e.record for e in batch.events), Reason.INFERENCE_ERROR, wrong))
            return
        out, predicted, dead, stamps = self._outputs(outcome, result)
        if out:
            if len(predicted) != len(batch):  # some became dead letters: their stamps go too
                stamps = _stamps([e.record for e in predicted])
            await self._send(out, lambda: self._predictions_delivered(outcome, predicted, stamps))
        await self.dead(dead)

    def _outputs(
        self, outcome: BatchOutcome, result: InferenceResult
    ) -> tuple[list[OutRecord], list[Event], list[DeadLetter], np.ndarray]:
        """The prediction records of a batch, the events they are for, the events dead-lettered,
        and the batch's records' timestamps (ms, 0 for none)."""
        batch = outcome.batch
        records = [e.record for e in batch.events]
        waits = self._parts.metrics.batch_wait.labels(batch.model)
        stamps = _stamps(records)
        queue_list, total_list = _event_times(outcome, records, stamps, waits, self._parts.observe_many)
        inference_ms = round((outcome.finished_at - outcome.sent_at) * 1000.0, 3)
        out: list[OutRecord] = []
        predicted: list[Event] = []
        dead: list[DeadLetter] = []
        fmt = self._parts.topics.output_format
        wanted = fmt == "binary" or fmt == "auto" and any(e.binary for e in batch.events)
        binary = _binary_encoder(result) if wanted else None
        for i, event in enumerate(batch.events):
            timing = {"queue": queue_list[i], "inference": inference_ms, "total": total_list[i]}
            encoder = binary if binary is not None and (fmt == "binary" or event.binary) else None
            item = self._prediction(event, i, result, timing, encoder)
            if isinstance(item, DeadLetter):
                dead.append(item)
            else:
                out.append(item)
                predicted.append(event)
        return out, predicted, dead, stamps

    def _prediction(
        self,
        event: Event,
        row: int,
        result: InferenceResult,
        timing: dict[str, float],
        binary: BinaryPredictions | Exception | None,
    ) -> OutRecord | DeadLetter:
        """``binary``: the batch's binary encoder (or why it could not be built); None for JSON."""
        rec = event.record
        try:
            hdrs = rec.headers
            headers = tuple([h for h in hdrs if h[0] in TRACE_HEADERS]) if hdrs else ()
            if isinstance(binary, Exception):
                raise binary
            if binary is not None:
                value, own = binary.encode(event, row, timing)
                headers += own
            else:
                outputs = {name: arr[row] for name, arr in result.outputs.items()}
                value = encode_prediction(event, result.model_version, outputs, timing)
            record = OutRecord(self._parts.topics.predictions, rec.key, value, headers)
            if self._tracing:
                record = self._parts.tracing.outgoing(rec, record)
        except Exception as err:
            return DeadLetter(rec, Reason.INFERENCE_ERROR, f"prediction cannot be encoded: {describe(err)}")
        if len(value) + len(rec.key or b"") <= self._room:  # surely fits: no need to add up headers
            return record
        size = record_size(record)
        if size > self._max_bytes:
            message = f"prediction is {size} bytes, over the limit of {self._max_bytes}"
            return DeadLetter(rec, Reason.TOO_LARGE, message)
        return record

    def _dead_record(self, letter: DeadLetter) -> OutRecord:
        topic = self._parts.topics.dlq
        try:
            record = self._parts.tracing.outgoing(letter.record, dead_letter_record(letter, topic))
            return fit_record(record, self._max_bytes)
        except Exception as err:  # never lose the letter: without the original bytes, but with the reason
            log.exception("dead letter of %s kept without its original record", letter.record.source)
            bare = DeadLetter(_bare(letter.record), letter.reason, f"{letter.message} ({describe(err)})")
            return fit_record(dead_letter_record(bare, topic), self._max_bytes)

    async def _send(self, out: list[OutRecord], delivered: Callable[[], None]) -> None:
        """Hand ``out`` to the sink; ``delivered`` runs once the broker acknowledged every record."""
        try:
            future = await self._parts.sink.send(out)
        except Exception as err:  # the producer itself is broken: nothing can be delivered any more
            self.fail(f"producer failed: {describe(err)}")
            return
        future.add_done_callback(lambda f: self._sent(f, delivered))

    def _sent(self, future: asyncio.Future[None], delivered: Callable[[], None]) -> None:
        if future.cancelled():
            return
        err = future.exception()
        if err is not None:  # given up by the sink: these records stay unacknowledged
            self.fail(f"outputs not delivered: {describe(err)}")
            return
        delivered()

    def _predictions_delivered(
        self, outcome: BatchOutcome, events: Sequence[Event], stamps: np.ndarray
    ) -> None:
        try:
            self._observe_predictions(outcome, events, stamps)
        except Exception:
            log.exception("metrics or hooks failed for delivered predictions of %s", outcome.batch.model)
        finally:
            self._done([e.record for e in events])

    def _observe_predictions(
        self, outcome: BatchOutcome, events: Sequence[Event], stamps: np.ndarray
    ) -> None:
        """Count ``events``' predictions and observe their end-to-end latency (``stamps``: theirs, ms)."""
        batch, result = outcome.batch, outcome.result
        assert result is not None
        metrics = self._parts.metrics
        metrics.predictions.labels(batch.model, result.model_version).inc(len(events))
        now_ms = time.time() * 1000.0
        latencies = np.maximum(now_ms - stamps[stamps > 0], 0.0) / 1000.0
        self._parts.observe_many(metrics.e2e_latency.labels(batch.model), latencies)
        if self._adaptive is not None:
            for seconds in latencies:
                self._adaptive.observe(seconds)
        if self._tracing:
            finished = self._parts.tracing.finished
            for event in events:
                finished(event.record)
        self._parts.models.on_delivered(batch, result)

    def _dead_delivered(self, dead: Sequence[DeadLetter]) -> None:
        try:
            counter = self._parts.metrics.dead_letters
            for letter in dead:
                counter.labels(letter.reason.value).inc()
                self._parts.tracing.finished(letter.record, letter.reason.value)
        except Exception:
            log.exception("metrics or tracing failed for %d delivered dead letters", len(dead))
        finally:
            self._done([d.record for d in dead])

    def _done(self, records: Sequence[RawRecord]) -> None:
        _complete(records)
        self._track(-len(records))

    def _track(self, n: int) -> None:
        self.undelivered += n
        self.idle.clear() if self.undelivered else self.idle.set()
        self._parts.metrics.pending_events.set(self.undelivered)


def _binary_encoder(result: InferenceResult) -> BinaryPredictions | Exception:
    """The batch's binary encoder; the error instead, for each event's dead letter to quote."""
    try:
        return BinaryPredictions(result.model_version, result.outputs)
    except Exception as err:
        return err


def _rows_problem(result: InferenceResult, events: int) -> str | None:
    """Why ``result`` cannot give one row per event, or None."""
    for name, arr in result.outputs.items():
        rows = arr.shape[0] if getattr(arr, "ndim", 0) > 0 else None
        if rows != events:
            return f"the backend answered {rows} rows of {name!r} for a batch of {events} events"
    return None


def _stamps(records: Sequence[RawRecord]) -> np.ndarray:
    """The records' Kafka timestamps, ms (0 where a record has none)."""
    return np.fromiter((r.source.timestamp_ms or 0 for r in records), np.float64, len(records))


def _event_times(
    outcome: BatchOutcome,
    records: Sequence[RawRecord],
    stamps: np.ndarray,
    waits: HistogramLike,
    observe_many: ObserveMany,
) -> tuple[list[float], list[float]]:
    """Per-event queue and total milliseconds in one numpy pass; observes the queue times on ``waits``.

    queue = consumed -> sent to the backend; total = event timestamp -> now (consumed -> now when the
    record has no timestamp).
    """
    received = np.fromiter((r.received_at for r in records), np.float64, len(records))
    queue_s = np.maximum(outcome.sent_at - received, 0.0)
    observe_many(waits, queue_s)
    total_ms = np.where(stamps > 0, time.time() * 1000.0 - stamps, (outcome.finished_at - received) * 1000.0)
    return np.round(queue_s * 1000.0, 3).tolist(), np.round(total_ms, 3).tolist()


def _bare(record: RawRecord) -> RawRecord:
    """``record`` without its key, value and headers (what a dead letter keeps when the rest fails)."""
    return RawRecord(None, None, (), record.source, record.received_at, record.completion)


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
