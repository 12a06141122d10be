"""Metrics from what Faust sees: a sensor for its hooks, and consumer lag per partition.

:class:`EngineSensor` is registered with ``app.sensors.add``; it counts stream
buffers that filled up (Faust pauses fetching: backpressure reached Kafka),
rebalances and offset commits. Records consumed are counted by the pipeline
(one increment per chunk), so the sensor does not count them again.

:class:`ConsumerLag` sets ``sie_consumer_lag{topic,partition}`` from the
consumer's high-water mark and the group's committed offset, which Faust's own
monitor already tracks; before the first commit on a partition, the
consumer's position stands in. Partitions that are revoked lose their series,
so labels stay bounded by the partitions this worker owns.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Mapping
from typing import Any

import faust
from faust.types import TP, AppT, ConsumerT

from observability.metrics import EngineMetrics

log = logging.getLogger(__name__)


class EngineSensor(faust.Sensor):
    """Faust sensor feeding the engine's Prometheus metrics."""

    def __init__(self, metrics: EngineMetrics, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._metrics = metrics

    def on_topic_buffer_full(self, tp: TP) -> None:
        """A Faust stream buffer is full (only with Faust streams; batch delivery's backpressure is
        counted by the pipeline in the same metric)."""
        self._metrics.stream_buffer_full.labels(tp.topic).inc()

    def on_commit_initiated(self, consumer: ConsumerT) -> Any:
        """Offsets are about to be committed; returns the start time."""
        return time.monotonic()

    def on_commit_completed(self, consumer: ConsumerT, state: Any) -> None:
        """Offsets were committed."""
        if isinstance(state, float):
            self._metrics.commit_latency.observe(time.monotonic() - state)

    def on_rebalance_start(self, app: AppT) -> dict[str, Any]:
        """The group is rebalancing."""
        self._metrics.rebalances.inc()
        return super().on_rebalance_start(app)


def partition_lag(end: int | None, committed: int | None, position: int | None) -> int | None:
    """Records behind the partition's end, or None when the end or our place is unknown.

    ``end`` is the high-water mark (the next offset to be written); our place
    is the committed offset (the next to be processed), else the position.
    """
    place = committed if committed is not None else position
    if end is None or place is None:
        return None
    return max(end - place, 0)


class ConsumerLag:
    """Keeps the consumer-lag gauge up to date for the partitions of ``topics``."""

    def __init__(self, app: faust.App, metrics: EngineMetrics, topics: Collection[str]) -> None:
        self._app = app
        self._gauge = metrics.consumer_lag
        self._topics = frozenset(topics)
        self._shown: set[tuple[str, str]] = set()

    async def update(self) -> None:
        """Read the high-water marks and committed offsets once; set or drop series."""
        consumer = self._app.consumer
        try:
            assigned = [tp for tp in consumer.assignment() if tp.topic in self._topics]
        except Exception:  # consumer not started yet
            return
        committed: Mapping[TP, int] = self._app.monitor.tp_committed_offsets or {}
        for tp in assigned:
            position = None if tp in committed else await _position(consumer, tp)
            lag = partition_lag(_highwater(consumer, tp), committed.get(tp), position)
            if lag is not None:  # unknown: keep the last value
                labels = (tp.topic, str(tp.partition))
                self._gauge.labels(*labels).set(lag)
                self._shown.add(labels)
        owned = {(tp.topic, str(tp.partition)) for tp in assigned}
        for labels in self._shown - owned:
            self._gauge.remove(*labels)
        self._shown &= owned


def _highwater(consumer: ConsumerT, tp: TP) -> int | None:
    try:
        end = consumer.highwater(tp)
    except Exception:  # not fetched from yet
        return None
    return int(end) if end is not None else None


async def _position(consumer: ConsumerT, tp: TP) -> int | None:
    try:
        position = await consumer.position(tp)
    except Exception:  # partition revoked meanwhile
        return None
    return int(position) if position is not None else None
