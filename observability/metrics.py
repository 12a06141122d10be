"""Prometheus metrics of a worker, created by a factory on a given registry.

Label values always come from bounded sets (topic, model, version, reason
code, gRPC code, partition): never ids, keys or payloads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from engine.ports import observe_each

# 1 ms .. 10 s, roughly 1-2.5-5 per decade.
LATENCY_BUCKETS = (
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass(frozen=True)
class EngineMetrics:
    """Every metric a worker exports."""

    registry: CollectorRegistry
    events_consumed: Counter
    predictions: Counter
    dead_letters: Counter
    backend_errors: Counter
    retries: Counter
    producer_errors: Counter  # outputs Kafka refused for good, per attempt (streams/sink.py)
    e2e_latency: Histogram
    batch_wait: Histogram
    backend_latency: Histogram
    batch_size: Histogram
    in_flight: Gauge
    pending_events: Gauge
    consumer_lag: Gauge
    circuit_state: Gauge
    triton_up: Gauge
    model_version: Gauge
    # Fed by Faust's sensor hooks (streams.faust_sensor).
    stream_buffer_full: Counter
    rebalances: Counter
    commit_latency: Histogram
    # Commit health, per input partition this worker owns (streams/faust_sensor.py CommitHealth).
    committed_offset: Gauge
    commit_lag_records: Gauge
    commit_lag_seconds: Gauge
    commit_failures: Counter
    fetch_restarts: Counter
    # Exactly-once (streams/exactly_once.py): one transaction per transaction interval.
    transactions: Counter
    transaction_aborts: Counter
    transaction_seconds: Histogram
    transaction_records: Histogram


TP_LABELS = ("topic", "partition")
TRANSACTION_RECORD_BUCKETS = (0.0, 1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0)


def create_metrics(registry: CollectorRegistry, namespace: str = "sie") -> EngineMetrics:
    """Create and register the engine's metrics on ``registry``."""

    def counter(name: str, doc: str, labels: tuple[str, ...]) -> Counter:
        return Counter(name, doc, labels, namespace=namespace, registry=registry)

    def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, doc, labels, namespace=namespace, registry=registry)

    def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
        return Histogram(name, doc, ("model",), namespace=namespace, registry=registry, buckets=buckets)

    return EngineMetrics(
        registry=registry,
        events_consumed=counter("events_consumed", "Records consumed from input topics.", ("topic",)),
        predictions=counter("predictions", "Predictions acknowledged by the broker.", ("model", "version")),
        dead_letters=counter("dead_letters", "Dead letters acknowledged by the broker.", ("reason",)),
        backend_errors=counter("triton_errors", "Failed Triton requests by gRPC code.", ("code",)),
        retries=counter("retries", "Batches retried after a retryable failure.", ("model",)),
        producer_errors=counter(
            "producer_permanent_errors",
            "Outputs Kafka refused with an error retrying cannot fix (too large, not authorised, "
            "unknown topic), per attempt, by topic and librdkafka error code.",
            ("topic", "code"),
        ),
        e2e_latency=histogram(
            "e2e_latency_seconds",
            "Event's Kafka timestamp to its prediction acknowledged by the broker.",
            LATENCY_BUCKETS,
        ),
        batch_wait=histogram(
            "batch_wait_seconds", "Time an event waited before its batch was sent.", LATENCY_BUCKETS
        ),
        backend_latency=histogram(
            "triton_request_seconds", "Triton round trip per batch, retries included.", LATENCY_BUCKETS
        ),
        batch_size=histogram(
            "batch_size_events", "Events per Triton request.", tuple(float(b) for b in BATCH_SIZE_BUCKETS)
        ),
        in_flight=gauge("in_flight_batches", "Batches sent to Triton and not yet answered."),
        pending_events=gauge("pending_events", "Events consumed and not yet acknowledged."),
        consumer_lag=gauge("consumer_lag", "Records behind the partition's end.", ("topic", "partition")),
        circuit_state=gauge("circuit_state", "Triton circuit: 0 closed, 1 half-open, 2 open."),
        triton_up=gauge("triton_up", "1 when Triton answered the last request or probe."),
        model_version=gauge("model_version_info", "1 for each model version in use.", ("model", "version")),
        stream_buffer_full=counter(
            "stream_buffer_full",
            "Times consumption paused because the pipeline was full (backpressure reached Kafka).",
            ("topic",),
        ),
        rebalances=counter("rebalances", "Consumer group rebalances this worker went through.", ()),
        commit_latency=Histogram(
            "commit_seconds",
            "Time Faust took to commit offsets.",
            namespace=namespace,
            registry=registry,
            buckets=LATENCY_BUCKETS,
        ),
        committed_offset=gauge(
            "committed_offset",
            "The group's committed position of the partition (confirmed by the broker).",
            TP_LABELS,
        ),
        commit_lag_records=gauge(
            "commit_lag_records", "Records between the committed position and the partition's end.", TP_LABELS
        ),
        commit_lag_seconds=gauge(
            "commit_lag_seconds",
            "Age of the oldest record past the committed position (its broker timestamp), or, before "
            "it is read, how long the committed position has not moved while records waited.",
            TP_LABELS,
        ),
        commit_failures=counter("commit_failures", "Offset commits the broker did not confirm.", ()),
        fetch_restarts=counter(
            "partition_fetch_restarts",
            "Assigned partitions found not fetching while records waited, and restarted.",
            TP_LABELS,
        ),
        transactions=counter(
            "transactions", "Exactly-once transactions ended, by outcome (committed, aborted).", ("outcome",)
        ),
        transaction_aborts=counter(
            "transaction_aborts",
            "Exactly-once transactions aborted, by reason (delivery_failed, partitions_lost, "
            "commit_failed, commit_stuck, producer_failed, revoke_timeout, fenced); their records are "
            "processed again.",
            ("reason",),
        ),
        transaction_seconds=Histogram(
            "transaction_seconds",
            "Time from a transaction's begin to its commit (the interval, the wait for the "
            "pipeline to empty and the commit itself).",
            namespace=namespace,
            registry=registry,
            buckets=LATENCY_BUCKETS,
        ),
        transaction_records=Histogram(
            "transaction_records",
            "Outputs (predictions, dead letters) written per committed transaction.",
            namespace=namespace,
            registry=registry,
            buckets=TRANSACTION_RECORD_BUCKETS,
        ),
    )


class TransactionMetricsAdapter:
    """:class:`streams.exactly_once.TransactionMetrics` on the worker's Prometheus metrics."""

    def __init__(self, metrics: EngineMetrics) -> None:
        self._m = metrics

    def committed(self, seconds: float, records: int) -> None:
        """A transaction with ``records`` outputs was committed after ``seconds`` open."""
        self._m.transactions.labels("committed").inc()
        self._m.transaction_seconds.observe(seconds)
        self._m.transaction_records.observe(records)

    def aborted(self, reason: str) -> None:
        """A transaction was aborted for ``reason``."""
        self._m.transactions.labels("aborted").inc()
        self._m.transaction_aborts.labels(reason).inc()


@dataclass(frozen=True)
class ModelMetrics:
    """Metrics of A/B routing, shadow models and drift (models/hooks.py, models/drift.py)."""

    ab_predictions: Counter
    shadow_predictions: Counter
    shadow_compared: Counter
    shadow_agreed: Counter
    shadow_agreement: Gauge
    shadow_max_abs_diff: Gauge
    shadow_min_agreement: Gauge
    drift_psi: Gauge
    drift_score_psi: Gauge
    drift_window: Gauge


def create_model_metrics(registry: CollectorRegistry, namespace: str = "sie") -> ModelMetrics:
    """Create and register the model-lifecycle metrics on ``registry``.

    ``feature`` label values are the feature names of each model's reference
    profile (a bounded set shipped with the model), never event data;
    ``shadow`` values are the configured shadow targets (models/agreement.py).
    """

    def shadow_gauge(name: str, doc: str) -> Gauge:
        return Gauge(name, doc, ("model", "shadow"), namespace=namespace, registry=registry)

    def shadow_counter(name: str, doc: str) -> Counter:
        return Counter(name, doc, ("model", "shadow"), namespace=namespace, registry=registry)

    return ModelMetrics(
        ab_predictions=Counter(
            "ab_predictions",
            "Predictions delivered per A/B arm.",
            ("model", "version", "arm"),
            namespace=namespace,
            registry=registry,
        ),
        shadow_predictions=Counter(
            "shadow_predictions",
            "Shadow-model batches' events by outcome: ok, error (inference or delivery) or dropped.",
            ("model", "outcome"),
            namespace=namespace,
            registry=registry,
        ),
        shadow_compared=shadow_counter(
            "shadow_compared_rows",
            "Shadow prediction rows compared with the primary's answer to the same event.",
        ),
        shadow_agreed=shadow_counter(
            "shadow_agreed_rows", "Compared shadow rows whose predicted class equals the primary's."
        ),
        shadow_agreement=shadow_gauge(
            "shadow_agreement_ratio", "Agreed / compared shadow rows since the worker started."
        ),
        shadow_max_abs_diff=shadow_gauge(
            "shadow_max_abs_diff", "Largest absolute difference of a shadow output value from the primary's."
        ),
        shadow_min_agreement=shadow_gauge(
            "shadow_min_agreement",
            "Lowest acceptable agreement of the shadow (routing.shadow_min_agreement): the alert threshold.",
        ),
        drift_psi=Gauge(
            "drift_psi",
            "Population stability index of a live input feature against the model's reference profile.",
            ("model", "feature"),
            namespace=namespace,
            registry=registry,
        ),
        drift_score_psi=Gauge(
            "drift_score_psi",
            "Population stability index of the model's live score against its reference profile.",
            ("model",),
            namespace=namespace,
            registry=registry,
        ),
        drift_window=Gauge(
            "drift_window_events",
            "Live events in the model's drift window.",
            ("model",),
            namespace=namespace,
            registry=registry,
        ),
    )


def observe_many(histogram: Any, values: Sequence[float] | np.ndarray) -> None:
    """``histogram.observe(v)`` for every value, in one pass (a labelled child or a plain histogram).

    The buckets are counted with numpy and each bucket's value is raised once,
    instead of a Python loop over the bucket bounds per observation. Uses
    prometheus_client's per-bucket values; a client without them gets the
    plain loop.
    """
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None:
        observe_each(histogram, values)
        return
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return
    counts = np.bincount(np.searchsorted(np.asarray(bounds), arr, side="left"), minlength=len(bounds))
    for i, n in enumerate(counts[: len(bounds)].tolist()):
        if n:
            buckets[i].inc(n)
    total.inc(float(arr.sum()))
