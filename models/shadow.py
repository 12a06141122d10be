"""Shadow models: a best-effort copy of live batches, predictions to a separate topic.

Every batch dispatched to a model with shadows (``routing.shadows``) is also
sent to each shadow target, and the shadow's predictions are produced to
``routing.shadow_topic`` - never to the predictions topic. The main path
never waits for, retries or counts on a shadow:

* shadow requests bypass the retrier and circuit breaker, so shadow failures
  can neither delay main batches nor open the main circuit;
* at most ``shadow_max_in_flight`` shadow requests run at a time, and at most
  ``max_undelivered`` shadow records wait for the broker; beyond either, the
  shadow copy of a batch is dropped (counted, not queued);
* shadow records go through their own producer and are not tracked by the
  records' completions, so offsets of the input are committed on the main
  path alone. A shadow prediction can therefore be lost (worker crash,
  shadow topic missing) - shadows are for comparison, not for delivery.

Outcomes are counted in ``sie_shadow_predictions_total{model, outcome}``. Shadow predictions are
encoded by the core, beside predictions (:mod:`engine.contract.outputs`). With an ``agreement``
tracker each shadow answer is also compared with the primary's (models/agreement.py).
"""

from __future__ import annotations

import asyncio
import logging

from engine.contract.outputs import encode_shadow_prediction
from engine.ports import InferenceBackend, Sink
from engine.records import Batch, OutRecord
from engine.routing import Router
from engine.settings import RouteTarget
from models.agreement import ShadowAgreement
from observability.metrics import ModelMetrics

log = logging.getLogger(__name__)


class ShadowRunner:
    """Sends copies of batches to shadow targets; see the module docstring."""

    def __init__(
        self,
        router: Router,
        backend: InferenceBackend,
        sink: Sink,
        topic: str,
        metrics: ModelMetrics,
        *,
        max_in_flight: int = 2,
        max_undelivered: int = 10_000,
        agreement: ShadowAgreement | None = None,
    ) -> None:
        self._router = router
        self._backend = backend
        self._sink = sink
        self._topic = topic
        self._metrics = metrics
        self._max_in_flight = max_in_flight
        self._max_undelivered = max_undelivered
        self._in_flight = 0
        self._undelivered = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.agreement = agreement

    def offer(self, batch: Batch) -> None:
        """Start shadow requests for ``batch`` if there is room; never raises, never blocks."""
        try:
            for target in self._router.shadows(batch.model):
                if self._in_flight >= self._max_in_flight or self._undelivered >= self._max_undelivered:
                    self._count(target, "dropped", len(batch))
                    continue
                self._in_flight += 1
                if self.agreement is not None:
                    self.agreement.expect(batch, 1)
                task = asyncio.ensure_future(self._run(target, batch))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except Exception:  # a shadow must never break the main path
            log.exception("shadow offer failed")

    async def _run(self, target: RouteTarget, batch: Batch) -> None:
        answered = False
        try:
            result = await self._backend.infer(target.model, batch.stacked_inputs(), version=target.version)
            answered = True
            if self.agreement is not None:
                self.agreement.shadow(batch, target, result.outputs)
            records = [
                OutRecord(
                    topic=self._topic,
                    key=event.record.key,
                    value=encode_shadow_prediction(
                        event, result, {n: a[i] for n, a in result.outputs.items()}
                    ),
                    headers=(),
                )
                for i, event in enumerate(batch.events)
            ]
            future = await self._sink.send(records)
            self._undelivered += len(records)
            future.add_done_callback(lambda f: self._delivered(target, len(records), f))
        except asyncio.CancelledError:
            raise
        except Exception as err:
            self._count(target, "error", len(batch))
            if self.agreement is not None and not answered:
                self.agreement.shadow_failed(batch)
            log.debug("shadow %s failed: %s", target.model, err)
        finally:
            self._in_flight -= 1

    def _delivered(self, target: RouteTarget, n: int, future: asyncio.Future[None]) -> None:
        self._undelivered -= n
        ok = not future.cancelled() and future.exception() is None
        self._count(target, "ok" if ok else "error", n)

    def _count(self, target: RouteTarget, outcome: str, n: int) -> None:
        self._metrics.shadow_predictions.labels(target.model, outcome).inc(n)

    async def close(self) -> None:
        """Cancel running shadow requests and close the shadow producer."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._sink.close()
