"""The metrics factory, the Faust sensor and consumer lag; dashboards and alerts only query real metrics."""

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

from observability.metrics import EngineMetrics, create_metrics, create_model_metrics, observe_many
from streams.faust_sensor import ConsumerLag, EngineSensor, partition_lag

OBSERVABILITY = Path(__file__).resolve().parents[2] / "observability"
BOUNDED_LABELS = {"topic", "partition", "model", "version", "reason", "code"}


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
    for histogram in (metrics.e2e_latency, metrics.batch_wait, metrics.triton_latency):
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
    ("end", "committed", "position", "lag"),
    [
        (100, 40, None, 60),
        (100, None, 90, 10),
        (100, 40, 90, 60),
        (None, 40, None, None),
        (100, None, None, None),
        (5, 7, None, 0),
    ],
)
def test_partition_lag_is_end_minus_committed_else_position(
    end: int | None, committed: int | None, position: int | None, lag: int | None
) -> None:
    assert partition_lag(end, committed, position) == lag


@dataclass
class FakeConsumer:
    assigned: set[TP]
    ends: dict[TP, int]
    positions: dict[TP, int] = field(default_factory=dict)

    def assignment(self) -> set[TP]:
        return self.assigned

    def highwater(self, tp: TP) -> int | None:
        return self.ends.get(tp)

    async def position(self, tp: TP) -> int | None:
        return self.positions.get(tp)


@dataclass
class FakeMonitor:
    tp_committed_offsets: dict[TP, int]


@dataclass
class FakeApp:
    consumer: FakeConsumer
    monitor: FakeMonitor


async def test_consumer_lag_follows_the_assignment(metrics: EngineMetrics) -> None:
    p0, p1, other = TP("events", 0), TP("events", 1), TP("predictions", 0)
    consumer = FakeConsumer({p0, p1, other}, {p0: 120, p1: 50, other: 999}, positions={p1: 45})
    app = FakeApp(consumer, FakeMonitor({p0: 100}))
    lag = ConsumerLag(app, metrics, ["events"])  # type: ignore[arg-type]

    await lag.update()
    assert sample(metrics, "sie_consumer_lag", topic="events", partition="0") == 20
    assert sample(metrics, "sie_consumer_lag", topic="events", partition="1") == 5
    assert sample(metrics, "sie_consumer_lag", topic="predictions", partition="0") is None

    consumer.assigned = {p1}  # partition 0 revoked
    consumer.ends[p1] = 70
    await lag.update()
    assert sample(metrics, "sie_consumer_lag", topic="events", partition="0") is None
    assert sample(metrics, "sie_consumer_lag", topic="events", partition="1") == 25


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
