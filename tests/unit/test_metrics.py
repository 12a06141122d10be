"""The metrics factory, the Faust sensor and commit health; dashboards and alerts only query real metrics."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from faust.types import TP
from prometheus_client import CollectorRegistry

from engine.positions import Positions
from observability.metrics import EngineMetrics, create_metrics, create_model_metrics, observe_many
from streams.faust_sensor import CommitHealth, EngineSensor, partition_lag

OBSERVABILITY = Path(__file__).resolve().parents[2] / "observability"
BOUNDED_LABELS = {"topic", "partition", "model", "version", "reason", "code", "outcome"}


@pytest.fixture
def metrics() -> EngineMetrics:
    return create_metrics(CollectorRegistry())


def sample(metrics: EngineMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def exported_names(metrics: EngineMetrics) -> set[str]:
    """Every sample name the registry can export, labelled children or not."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {family.name + suffix for family in metrics.registry.collect() for suffix in suffixes[family.type]}


def queried_names() -> dict[str, set[str]]:
    """``sie_*`` names used by the dashboard and the alert rules, by file."""
    dashboard = json.loads((OBSERVABILITY / "grafana" / "dashboards" / "sie.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    rules = yaml.safe_load((OBSERVABILITY / "prometheus" / "alerts.yml").read_text())
    alerts = " ".join(r["expr"] for g in rules["groups"] for r in g["rules"])
    pattern = re.compile(r"\bsie_[a-z0-9_]+\b")
    return {"sie.json": set(pattern.findall(" ".join(exprs))), "alerts.yml": set(pattern.findall(alerts))}


def test_latency_histograms_resolve_one_millisecond_to_ten_seconds(metrics: EngineMetrics) -> None:
    for histogram in (metrics.e2e_latency, metrics.batch_wait, metrics.backend_latency):
        histogram.labels("m").observe(0.0005)
    for name in ("sie_e2e_latency_seconds", "sie_batch_wait_seconds", "sie_triton_request_seconds"):
        bounds = sorted(
            float(s.labels["le"])
            for family in metrics.registry.collect()
            for s in family.samples
            if s.name == f"{name}_bucket"
        )
        assert bounds[0] == 0.001 and bounds[-2] == 10.0 and bounds[-1] == float("inf"), name
        finite = bounds[:-1]
        assert all(b / a <= 2.5 for a, b in zip(finite, finite[1:], strict=False)), "gaps too coarse"


def test_every_label_comes_from_a_bounded_set(metrics: EngineMetrics) -> None:
    for family in metrics.registry.collect():
        collector = metrics.registry._names_to_collectors[
            family.name + ("_total" if family.type == "counter" else "")
        ]
        assert set(collector._labelnames) <= BOUNDED_LABELS, family.name  # type: ignore[attr-defined]


@pytest.mark.parametrize("source", ["sie.json", "alerts.yml"])
def test_dashboard_and_alerts_query_only_exported_metrics(metrics: EngineMetrics, source: str) -> None:
    used = queried_names()[source]
    assert used, f"{source} queries no sie_* metric"
    create_model_metrics(metrics.registry)  # routing/shadow/drift metrics share the worker's registry
    assert used - exported_names(metrics) == set()


def test_dashboard_shows_every_engine_metric(metrics: EngineMetrics) -> None:
    shown = queried_names()["sie.json"]
    families = {f.name for f in metrics.registry.collect()}
    missing = {f for f in families if not any(name.startswith(f) for name in shown)}
    assert missing == set()


async def test_sensor_counts_full_buffers_rebalances_and_commit_time(metrics: EngineMetrics) -> None:
    sensor = EngineSensor(metrics)
    sensor.on_topic_buffer_full(TP("events", 3))
    sensor.on_topic_buffer_full(TP("events", 1))
    state = sensor.on_commit_initiated(consumer=None)  # type: ignore[arg-type]
    sensor.on_commit_completed(None, state)  # type: ignore[arg-type]
    sensor.on_rebalance_start(app=None)  # type: ignore[arg-type]
    assert sample(metrics, "sie_stream_buffer_full_total", topic="events") == 2
    assert sample(metrics, "sie_commit_seconds_count") == 1
    assert sample(metrics, "sie_rebalances_total") == 1


@pytest.mark.parametrize(
    ("end", "committed", "lag"),
    [(100, 40, 60), (None, 40, None), (-1, 40, None), (5, 7, 0)],
)
def test_partition_lag_is_end_minus_committed(
    end: int | None, committed: int | None, lag: int | None
) -> None:
    assert partition_lag(end, committed) == lag


@dataclass
class FakeConsumer:
    """A CommitSource: real positions, ends as a dict."""

    positions: Positions = field(default_factory=Positions)
    ends: dict[tuple[str, int], int] = field(default_factory=dict)

    def highwater(self, tp: Any) -> int:
        return self.ends.get(tp, -1)


async def test_commit_health_gives_lag_in_records_and_seconds_and_follows_the_assignment(
    metrics: EngineMetrics,
) -> None:
    now = [1000.0]
    consumer = FakeConsumer(ends={("events", 0): 120, ("events", 1): 50})
    p0 = consumer.positions.assign(("events", 0), 100)
    consumer.positions.assign(("events", 1), 50)
    p0.hand_out(100, 109, timestamp_s=990.0)  # read, not answered: 10 s old
    health = CommitHealth(lambda: consumer, metrics, clock=lambda: now[0])  # type: ignore[arg-type]

    await health.update()
    assert sample(metrics, "sie_commit_lag_records", topic="events", partition="0") == 20
    assert sample(metrics, "sie_consumer_lag", topic="events", partition="0") == 20
    assert sample(metrics, "sie_commit_lag_seconds", topic="events", partition="0") == 10.0
    assert sample(metrics, "sie_committed_offset", topic="events", partition="0") == 100
    assert sample(metrics, "sie_commit_lag_seconds", topic="events", partition="1") == 0.0

    consumer.ends[("events", 1)] = 80  # records wait on partition 1 and nothing of them was read
    await health.update()
    now[0] += 7
    await health.update()
    assert sample(metrics, "sie_commit_lag_seconds", topic="events", partition="1") == 7.0

    consumer.positions.revoke(("events", 0))
    await health.update()
    assert sample(metrics, "sie_commit_lag_records", topic="events", partition="0") is None
    assert sample(metrics, "sie_committed_offset", topic="events", partition="0") is None
    assert sample(metrics, "sie_commit_lag_records", topic="events", partition="1") == 30


def test_observe_many_counts_like_one_observe_per_value() -> None:
    values = [0.0, 0.0005, 0.001, 0.0011, 0.02, 0.3, 7.0, 99.0, 0.001, 2.5]
    one, many = create_metrics(CollectorRegistry()), create_metrics(CollectorRegistry())
    for v in values:
        one.e2e_latency.labels("m").observe(v)
    observe_many(many.e2e_latency.labels("m"), values)
    observe_many(many.e2e_latency.labels("m"), [])
    names = ("sie_e2e_latency_seconds_bucket", "sie_e2e_latency_seconds_count", "sie_e2e_latency_seconds_sum")

    def samples(m: Any) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
        return [
            (s.name, tuple(sorted(s.labels.items())), round(s.value, 9))
            for metric in m.registry.collect()
            for s in metric.samples
            if s.name in names
        ]

    assert samples(one) == samples(many)
    assert samples(many)  # the histogram really has samples
