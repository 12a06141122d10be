"""A model that sleeps per batch: backpressure pauses consumption, memory stays bounded, lag drains.

The model is made slow with the ``sleep_ms_per_batch`` config parameter
(model_repository/mlp_backend.py). The slowdown ends when the test reloads
the model through Triton's explicit model control with the same config minus
that parameter.
"""

from __future__ import annotations

import json
import time
import urllib.request
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
    rss_kib,
    scrape,
    write_report,
)
from tests.chaos.test_triton_outage import pending_bound
from tests.integration.conftest import StartWorker

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

MODEL = "breast_cancer"
SLEEP_MS = 300
# Bound on the worker's RSS growth while the model is slow and lag grows by
# tens of thousands of events: the pipeline holds at most ``pending_bound``
# events, Faust's stream buffer 4096 records and aiokafka one fetch per
# partition, all of a few MiB. Unbounded buffering of the backlog would take
# well over this.
RSS_GROWTH_BOUND_MIB = 64


def reload_without_sleep(triton: TritonProcess, model: str) -> None:
    """Load ``model`` again with its current config minus ``sleep_ms_per_batch``."""
    base = f"http://{triton.http_url}/v2"
    with urllib.request.urlopen(f"{base}/models/{model}/config", timeout=10) as response:
        config = json.loads(response.read())
    config.get("parameters", {}).pop("sleep_ms_per_batch", None)
    body = json.dumps({"parameters": {"config": json.dumps(config)}}).encode()
    request = urllib.request.Request(
        f"{base}/repository/models/{model}/load", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.status == 200


def test_slow_model_pauses_consumption_bounds_memory_and_lag_drains_after(
    own_triton: StartTriton,
    fresh_settings: Callable[..., Settings],
    workers: StartWorker,
) -> None:
    triton = own_triton(models=[MODEL], sleep_ms=SLEEP_MS)
    settings = fresh_settings(triton, triton={"default_model": MODEL})
    worker = workers(settings)
    t = settings.topics
    bootstrap = settings.kafka.bootstrap_servers
    producer = SteadyProducer(bootstrap, t.events, prefix="slow", models=[MODEL])
    rss = Sampler(lambda: rss_kib(worker.process.pid))
    probe = Sampler(lambda: scrape(worker.metrics_url) or None, interval=0.5)
    rss.start()
    probe.start()
    time.sleep(1.0)
    baseline_kib = max(v for _, v in rss.samples)
    slow_from = time.time()
    producer.start()
    producer.finish()
    slow_until = time.time()
    reload_without_sleep(triton, MODEL)
    fast_at = time.time()
    acc = account(bootstrap, t.predictions, t.dlq, producer.ids)
    rss.stop()
    probe.stop()

    slow_metrics = probe.between(slow_from, slow_until)
    max_pending = max(s.get("sie_pending_events", 0.0) for s in slow_metrics)
    consumed_at_end_of_slowdown = max(s.get("sie_events_consumed_total", 0.0) for s in slow_metrics)
    peak_kib = max(rss.between(slow_from, fast_at))
    bound = pending_bound(settings, n_models=1)
    figures = acc.figures() | {
        "rate_per_s": producer.rate,
        "sleep_ms_per_batch": SLEEP_MS,
        "slow_s": round(fast_at - slow_from, 3),
        "lag_at_end_of_slowdown": len(producer.ids) - int(consumed_at_end_of_slowdown),
        "max_pending_events": max_pending,
        "pending_bound": bound,
        "rss_baseline_mib": round(baseline_kib / 1024, 1),
        "rss_peak_slow_mib": round(peak_kib / 1024, 1),
        "rss_peak_overall_mib": round(max(v for _, v in rss.samples) / 1024, 1),
        "rss_growth_bound_mib": RSS_GROWTH_BOUND_MIB,
        "drained_after_s": caught_up_at(acc, producer.sent_at, fast_at),
        "last_output_after_speedup_s": round(max(acc.output_at.values()) - fast_at, 3),
    }
    write_report("slow_model", figures)

    assert acc.lost == 0, acc.missing_sample
    assert acc.dead_lettered == 0, acc.dlq_reasons
    assert acc.duplicates == 0
    assert max_pending <= bound, (max_pending, bound)
    assert figures["lag_at_end_of_slowdown"] > bound, "the slowdown never built a backlog"
    assert peak_kib - baseline_kib <= RSS_GROWTH_BOUND_MIB * 1024, figures
