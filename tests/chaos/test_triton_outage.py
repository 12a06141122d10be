"""Triton killed (SIGKILL) mid-stream: the stream pauses, nothing is dead-lettered or lost.

Policy under test (engine/retry.py): retryable Triton errors (UNAVAILABLE,
DEADLINE_EXCEEDED, ...) are retried without limit behind a circuit breaker,
so an outage of any length only pauses the stream. The worker keeps at most
its in-flight window of events in memory meanwhile (backpressure).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from engine.settings import Settings
from ops.embedded import TritonProcess
from tests.chaos.conftest import StartTriton
from tests.chaos.harness import (
    Sampler,
    SteadyProducer,
    account,
    caught_up_at,
    first_output_after,
    longest_stall,
    scrape,
    write_report,
)
from tests.integration.conftest import StartWorker

pytestmark = [pytest.mark.chaos, pytest.mark.integration]


def pending_bound(settings: Settings, n_models: int) -> int:
    """Most events a worker holds between consuming and acknowledging them.

    ``submit`` blocks once ``2 * max_in_flight`` batches are outstanding; one
    more consumed chunk can close one batch per model, the deadline can close
    one partial batch per model, and each model keeps one open batch.
    """
    b = settings.batch
    return (2 * b.max_in_flight + 3 * n_models) * b.max_size


SHORT_OUTAGE_S = 3.0
# Longer than the whole retry schedule: backoff 0.05 s doubling to the 1 s cap,
# the circuit's probe interval growing to the same cap, and the 5 s request
# timeout. A bounded-retry policy would have dead-lettered by then.
LONG_OUTAGE_S = 15.0


def _outage(triton: TritonProcess, seconds: float) -> tuple[float, float]:
    """Kill Triton, keep it down ``seconds``, start it again; (killed_at, ready_again_at)."""
    killed_at = time.time()
    triton.process.kill()
    time.sleep(seconds)
    triton.process.start()
    triton.process.wait_ready(triton.ready, timeout=180)
    return killed_at, time.time()


def test_triton_killed_mid_stream_pauses_the_stream_and_loses_nothing(
    own_triton: StartTriton,
    fresh_settings: Callable[..., Settings],
    workers: StartWorker,
) -> None:
    """Two outages in one stream: a short one, then one longer than the retry budget."""
    triton = own_triton()
    settings = fresh_settings(triton)
    worker = workers(settings)
    t = settings.topics
    bootstrap = settings.kafka.bootstrap_servers
    producer = SteadyProducer(bootstrap, t.events, prefix="tk")
    probe = Sampler(lambda: scrape(worker.metrics_url) or None)
    producer.start()
    probe.start()

    producer.wait_sent(0.2)
    short = _outage(triton, SHORT_OUTAGE_S)
    producer.wait_sent(0.55)
    long = _outage(triton, LONG_OUTAGE_S)
    producer.finish()
    acc = account(bootstrap, t.predictions, t.dlq, producer.ids)
    probe.stop()

    bound = pending_bound(settings, n_models=2)
    outages = []
    for (killed_at, back_at), until in ((short, long[0]), (long, None)):
        during = probe.between(killed_at + 1.0, back_at)
        outages.append(
            {
                "down_s": round(back_at - killed_at, 3),
                "resume_s": first_output_after(acc, back_at),
                "caught_up_s": caught_up_at(acc, producer.sent_at, back_at, until),
                "longest_stall_s": longest_stall(acc, killed_at - 1.0, until),
                "max_pending_events": max((s.get("sie_pending_events", 0.0) for s in during), default=None),
                "circuit_opened": any(s.get("sie_circuit_state", 0.0) == 2.0 for s in during),
                "samples": len(during),
            }
        )
    figures = acc.figures() | {
        "rate_per_s": producer.rate,
        "pending_bound": bound,
        "triton_errors": max((s.get("sie_triton_errors_total", 0.0) for _, s in probe.samples), default=0.0),
        "outages": outages,
    }
    write_report("triton_kill", figures)

    assert acc.lost == 0, acc.missing_sample
    assert acc.dead_lettered == 0, acc.dlq_reasons
    assert acc.duplicates == 0
    for outage in outages:
        assert outage["circuit_opened"], f"the circuit never opened while Triton was down: {outage}"
        assert outage["samples"] and outage["max_pending_events"] <= bound, (outage, bound)
