"""The adaptive batching controller (pure logic, no clock needed: ticks are explicit)."""

from __future__ import annotations

from typing import Any

from engine.adaptive import AdaptiveBatching, AdaptiveConfig


def make(initial_ms: float = 5.0, **kw: float) -> tuple[AdaptiveBatching, list[float]]:
    applied: list[float] = []
    cfg = AdaptiveConfig(slo_ms=20.0, min_samples=10, **kw)  # type: ignore[arg-type]
    return AdaptiveBatching(cfg, initial_ms, applied.append), applied


def feed(ctrl: AdaptiveBatching, latency_ms: float, n: int = 100) -> None:
    for _ in range(n):
        ctrl.observe(latency_ms / 1000.0)


def test_controller_applies_initial_deadline_in_seconds() -> None:
    _, applied = make(5.0)
    assert applied == [0.005]


def test_deadline_grows_additively_while_p99_has_slack() -> None:
    ctrl, applied = make(5.0, step_ms=1.0)
    feed(ctrl, 5.0)
    assert ctrl.tick() == 6.0
    feed(ctrl, 5.0)
    assert ctrl.tick() == 7.0
    assert applied[-1] == 0.007


def test_deadline_shrinks_multiplicatively_when_p99_nears_slo() -> None:
    ctrl, _ = make(10.0, decrease=0.5)
    feed(ctrl, 19.0)  # 0.95 x SLO, above the 0.9 high-water mark
    assert ctrl.tick() == 5.0


def test_deadline_holds_between_the_water_marks() -> None:
    ctrl, applied = make(8.0)
    feed(ctrl, 15.0)  # 0.75 x SLO
    assert ctrl.tick() == 8.0
    assert applied == [0.008]


def test_p99_not_mean_drives_the_decision() -> None:
    ctrl, _ = make(10.0, decrease=0.5)
    feed(ctrl, 1.0, 95)
    feed(ctrl, 30.0, 5)  # 5% of events over the SLO: the p99 is too
    assert ctrl.tick() == 5.0


def test_too_few_samples_change_nothing() -> None:
    ctrl, _ = make(5.0)
    feed(ctrl, 100.0, 3)
    assert ctrl.tick() == 5.0


def test_deadline_stays_within_bounds() -> None:
    ctrl, _ = make(1.0, min_delay_ms=0.5, max_delay_ms=2.0, step_ms=1.0, decrease=0.1)
    feed(ctrl, 19.0)
    assert ctrl.tick() == 0.5
    for _ in range(5):
        feed(ctrl, 1.0)
        ctrl.tick()
    assert ctrl.delay_ms == 2.0


def test_window_resets_after_each_tick() -> None:
    ctrl, _ = make(10.0, decrease=0.5)
    feed(ctrl, 19.0)
    assert ctrl.tick() == 5.0
    feed(ctrl, 15.0)  # only this interval's samples count: between the marks, hold
    assert ctrl.tick() == 5.0


def test_overload_grows_batches_instead_of_shrinking_them() -> None:
    ctrl, _ = make(4.0, step_ms=1.0)
    feed(ctrl, 500.0)  # 25 x SLO: queueing, not deadline waits
    assert ctrl.tick() == 5.0


def _adaptive_pipeline(batch: Any, backend: Any) -> Any:
    """A pipeline over fakes with adaptive batching on (``batch`` must say so)."""
    from prometheus_client import CollectorRegistry

    from engine.contract.context import DecodeContext
    from engine.pipeline import Pipeline
    from engine.ports import PipelineParts
    from engine.retry import CircuitBreaker, Retrier
    from engine.settings import LimitSettings, RetrySettings, TopicSettings
    from engine.testing import InstantClock, RecordingSink, model_spec
    from observability.metrics import create_metrics

    clock, retry = InstantClock(), RetrySettings()
    parts = PipelineParts(
        decode_ctx=DecodeContext({"m": model_spec("m", 3, max_batch=64)}, "m", LimitSettings()),
        backend=backend,
        retrier=Retrier(retry, clock, CircuitBreaker(retry, clock)),
        sink=RecordingSink(),
        topics=TopicSettings(events="in", predictions="out", dlq="dlq"),
        batch=batch,
        metrics=create_metrics(CollectorRegistry()),
    )
    return Pipeline(parts, clock)


async def test_pipeline_feeds_delivered_latencies_to_the_controller() -> None:
    from engine.settings import BatchSettings
    from engine.testing import ScriptedBackend, raw_record

    batch = BatchSettings(max_size=8, max_delay_ms=10, adaptive=True, slo_ms=25)
    pipeline = _adaptive_pipeline(batch, ScriptedBackend())
    await pipeline.start()
    assert pipeline.adaptive is not None and pipeline.batch_deadline_s == 0.010
    records = [raw_record(b'{"id": "e%d", "features": [1, 2, 3]}' % i, offset=i) for i in range(100)]
    await pipeline.submit(records)
    assert await pipeline.drain(5.0)
    # the fake records carry a 2023 Kafka timestamp: far over the SLO (overload), so batches grow
    pipeline.adaptive.tick()
    assert pipeline.batch_deadline_s > 0.010
    await pipeline.stop()


async def test_adaptive_pipeline_sends_a_chunk_at_once_while_triton_has_a_free_slot() -> None:
    import asyncio

    from engine.settings import BatchSettings
    from engine.testing import ScriptedBackend, raw_record

    backend = ScriptedBackend()
    backend.gate = asyncio.Event()  # inference blocks until released
    # a long deadline and large batches: only the free-slot rule can send a 3-event chunk early
    batch = BatchSettings(max_size=64, max_delay_ms=500, max_in_flight=2, adaptive=True, slo_ms=25)
    pipeline = _adaptive_pipeline(batch, backend)
    await pipeline.start()

    def chunk(start: int, n: int) -> list:  # type: ignore[type-arg]
        return [
            raw_record(b'{"id": "e%d", "features": [1, 2, 3]}' % i, offset=i) for i in range(start, start + n)
        ]

    await pipeline.submit(chunk(0, 3))
    await pipeline.submit(chunk(3, 2))
    await asyncio.sleep(0.01)
    # two free slots: each chunk went at once
    assert [(c.model, c.rows) for c in backend.calls] == [("m", 3), ("m", 2)]
    await pipeline.submit(chunk(5, 4))
    await asyncio.sleep(0.01)
    # both slots busy: the chunk waits in its batch
    assert [(c.model, c.rows) for c in backend.calls] == [("m", 3), ("m", 2)]
    backend.gate.set()
    assert await pipeline.drain(5.0)
    assert (backend.calls[-1].model, backend.calls[-1].rows) == ("m", 4)
    await pipeline.stop()
