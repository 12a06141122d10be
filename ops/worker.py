"""One worker process: settings in, a running Faust worker out.

A worker that cannot go on - a pipeline task died, Kafka refuses outputs for
good - fails loudly (engine/health.py, ops/process_stop.py): the reason is logged as an error,
``/healthz`` and ``/readyz`` answer 503 with it, and the process stops with
exit status 70 instead of sitting on stalled partitions.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import Callable
from typing import Any, cast

import faust
from prometheus_client import CollectorRegistry

from engine.backoff import next_delay
from engine.clock import LoopClock
from engine.contract.context import DecodeContext
from engine.errors import RetryableError, error_code
from engine.health import Liveness
from engine.modelspec import ModelSpec
from engine.pipeline import Pipeline
from engine.ports import (
    NO_MODEL_HOOKS,
    NO_TRACING,
    InferenceBackend,
    ModelHooks,
    PipelineParts,
    PipelineTracing,
    Sink,
)
from engine.retry import CircuitBreaker, CircuitState, Retrier
from engine.routing import Router
from engine.settings import Settings
from inference.passthrough_backend import PassThroughBackend
from inference.triton import TritonBackend
from models.hooks import build_model_hooks
from observability.metrics import EngineMetrics, TransactionMetricsAdapter, create_metrics, observe_many
from observability.otel_setup import configure_tracing
from observability.server import serve, with_liveness
from observability.tracing import INSTRUMENTATION, HeadSampler, OtelTracing
from ops.process_stop import ProcessStopper
from streams.app import Submit, add_batch_consumer, create_app
from streams.driver import EngineConsumer
from streams.faust_sensor import CommitHealth, EngineSensor
from streams.kafka_config import client_config, output_producer_config, transactional_producer_config
from streams.kafka_tools import wait_for_kafka
from streams.sink import BorrowedSink, KafkaSink
from streams.transactions import TransactionalProducer

log = logging.getLogger(__name__)
GC_GEN0_THRESHOLD = 20_000  # allocations between collections of the youngest generation (default 700)

GIL_SWITCH_INTERVAL_S = 0.0001

LAG_INTERVAL_S = 1.0  # how often the commit-health gauges are set


def tune_gc() -> None:
    """Collect cycles less often: the stream allocates millions of short-lived objects a minute.

    What start-up created (modules, Faust, gRPC: most of the heap) is moved out of the
    collector's sight (``gc.freeze``), and the youngest generation is collected every
    ``GC_GEN0_THRESHOLD`` allocations instead of 700, so a collection no longer runs every
    few events. Records hold no reference cycles; what the collector still finds is rare.
    """
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


class Worker:
    """Builds the pipeline on the worker's event loop and runs the Faust app."""

    def __init__(
        self,
        settings: Settings,
        registry: CollectorRegistry | None = None,
        stop_process: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.liveness = Liveness(on_fail=stop_process or ProcessStopper())
        self.registry = registry or CollectorRegistry()
        self.metrics: EngineMetrics = create_metrics(self.registry)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.app = create_app(settings)
        self.pipeline: Pipeline | None = None
        self._building: asyncio.Future[Pipeline] | None = None
        self.backend: TritonBackend | None = None
        self._triton_ok = False
        add_batch_consumer(self.app, settings, self._submit)
        self.app.on_before_shutdown.connect(self._on_shutdown)  # type: ignore[arg-type]
        self.app.sensors.add(EngineSensor(self.metrics))
        self.app.on_failure = self.liveness.fail
        self.app.on_fetch_restart = self._on_fetch_restart
        self.app.on_commit_failed = lambda _: self.metrics.commit_failures.inc()
        self.app.transaction_metrics = TransactionMetricsAdapter(self.metrics)
        health = CommitHealth(lambda: cast(EngineConsumer, self.app.consumer), self.metrics)
        self.app.timer(interval=LAG_INTERVAL_S, traced=False, name="commit-health")(health.update)
        self.tracing: PipelineTracing = NO_TRACING
        self.model_hooks: ModelHooks = NO_MODEL_HOOKS

    async def _submit(self) -> Submit:
        if self._building is None:
            self._building = asyncio.ensure_future(self._build())
        pipeline = await self._building
        return pipeline.submit

    async def _build(self) -> Pipeline:
        settings = self.settings
        self.backend = triton = TritonBackend(settings.triton)
        backend: InferenceBackend = triton
        if settings.triton.identity:
            log.warning("SIE_TRITON__IDENTITY is set: inference is skipped (benchmark mode)")
            backend = PassThroughBackend(triton)
        specs = await self._wait_for_models(backend)
        self._note_versions(await backend.model_versions())
        clock = LoopClock()
        metrics = self.metrics
        breaker = CircuitBreaker(settings.retry, clock, on_change=self._on_circuit)
        retrier = Retrier(settings.retry, clock, breaker, on_retry=self._on_retry)
        sink = await self._output_sink()
        router = Router(settings.routing, settings.triton.default_model)
        ctx = DecodeContext(specs, settings.triton.default_model, settings.limits, router=router)
        gauge = self.metrics.model_version
        self.model_hooks = await build_model_hooks(
            settings, router, specs, backend, gauge, self.registry, make_sink=self._shadow_sink(sink)
        )
        parts = PipelineParts(
            decode_ctx=ctx,
            backend=backend,
            retrier=retrier,
            sink=sink,
            topics=settings.topics,
            batch=settings.batch,
            metrics=metrics,
            tracing=self.tracing,
            models=self.model_hooks,
            on_failure=self.liveness.fail,
            observe_many=observe_many,
        )
        pipeline = Pipeline(parts, clock)
        await pipeline.start()
        self.pipeline = pipeline
        self._sink = sink
        log.info("pipeline ready: models %s, default %r", sorted(specs), settings.triton.default_model)
        return pipeline

    async def _wait_for_models(self, backend: InferenceBackend) -> dict[str, ModelSpec]:
        delay = 0.5
        while True:
            try:
                specs = await backend.model_specs()
                if specs:
                    self._set_triton_up(True)
                    return specs
                log.warning("Triton at %s serves no ready model yet; waiting", self.settings.triton.url)
            except RetryableError as err:
                log.warning("waiting for Triton at %s: %s", self.settings.triton.url, err)
            self._set_triton_up(False)
            await asyncio.sleep(delay)
            delay = next_delay(delay, 2, 5.0)

    def _note_versions(self, versions: dict[str, list[str]]) -> None:
        for model, vs in versions.items():
            for v in vs:
                self.metrics.model_version.labels(model, v).set(1)

    def _on_circuit(self, state: CircuitState) -> None:
        self.metrics.circuit_state.set(int(state))
        self._set_triton_up(state is CircuitState.CLOSED)

    def _set_triton_up(self, up: bool) -> None:
        self._triton_ok = up
        self.metrics.triton_up.set(1 if up else 0)

    async def _output_sink(self) -> KafkaSink:
        """The producer of predictions and dead letters; under exactly-once a transactional one,
        whose transactions the consumer's :class:`~streams.exactly_once.ExactlyOnce` runs."""
        kafka, limit = self.settings.kafka, self.settings.limits.max_message_bytes
        exactly_once = cast(EngineConsumer, self.app.consumer).exactly_once
        if exactly_once is None:
            return KafkaSink(
                output_producer_config(kafka, limit),
                on_rejected=self._on_output_rejected,
                on_fatal=self.liveness.fail,
            )
        sink = KafkaSink(
            transactional_producer_config(kafka, limit, self.settings.worker_name),
            on_rejected=self._on_output_rejected,
            on_fatal=self.liveness.fail,
            transactional=True,
            on_transaction_error=exactly_once.output_failed,
        )
        await exactly_once.attach(TransactionalProducer(sink.renew_producer, producer=sink.producer), sink)
        return sink

    def _shadow_sink(self, sink: KafkaSink) -> Callable[[], Sink]:
        """The sink of shadow outputs: a producer of its own, or the transactional one borrowed."""
        if cast(EngineConsumer, self.app.consumer).exactly_once is not None:
            return lambda: BorrowedSink(sink)
        config = output_producer_config(self.settings.kafka, self.settings.limits.max_message_bytes)
        return lambda: KafkaSink(config)

    def _on_output_rejected(self, topic: str, code: str) -> None:
        self.metrics.producer_errors.labels(topic, code).inc()

    def _on_fetch_restart(self, tp: tuple[str, int]) -> None:
        self.metrics.fetch_restarts.labels(tp[0], str(tp[1])).inc()

    def _on_retry(self, err: RetryableError) -> None:
        self.metrics.backend_errors.labels(error_code(err)).inc()
        self.metrics.retries.labels("*").inc()

    async def _on_shutdown(self, app: faust.App, **_: Any) -> None:
        if self.pipeline is not None:
            alive = self.liveness.alive  # a failed worker does not wait for what cannot be delivered
            await self.pipeline.stop(timeout=30.0 if alive else 0.0)
            await self._sink.close(timeout=10.0 if alive else 1.0)
            await self.model_hooks.close()
        if self.backend is not None:
            await self.backend.close()

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready when alive, partitions are assigned and Triton answers (circuit not open)."""
        # This runs on the HTTP thread: never touch ``app.consumer`` here, which
        # would build the consumer on this thread's event loop before Faust does.
        consumer = self.app._consumer
        assigned = len(consumer.assignment()) if consumer is not None else 0
        triton_ok = self.pipeline is not None and self._triton_ok
        details: dict[str, Any] = {"assigned_partitions": assigned, "triton": triton_ok}
        if not self.liveness.alive:
            details["failure"] = self.liveness.failure
        return assigned > 0 and triton_ok and self.liveness.alive, details

    def run(self) -> None:
        """Serve metrics and run the Faust worker until it is stopped (SIGTERM/SIGINT)."""
        # Faust's consumer thread and gRPC's poller thread compete with the event loop for
        # the GIL; at the default 5 ms switch interval the loop waited so long that Triton
        # round trips took 14 ms instead of 2 and throughput halved (docs/benchmarks.md).
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        tune_gc()
        settings = self.settings
        server = serve(settings.metrics_port, self.registry, self.readiness, host=settings.metrics_host)
        app = server.get_app()
        if app is not None:  # /healthz answers 503 once the worker has failed
            server.set_app(with_liveness(app, self.liveness))
        log.info("metrics and health on :%d", server.server_port)
        wait_for_kafka(client_config(self.settings.kafka), log=log)
        provider = configure_tracing(self.settings)
        if provider is not None:
            sampler = HeadSampler(self.settings.trace_sample_ratio)
            self.tracing = OtelTracing(provider.get_tracer(INSTRUMENTATION), sampler)
        worker = faust.Worker(
            self.app,
            loglevel=self.settings.log_level.lower(),
            quiet=True,
            redirect_stdouts=False,
            override_logging=False,
        )
        try:
            worker.execute_from_commandline()
        except SystemExit as stopped:
            raise SystemExit(self.liveness.exit_code(stopped.code)) from None
        finally:
            server.shutdown()
            if provider is not None:
                provider.shutdown()  # exports the spans still queued
