"""Metrics from what Faust and the consumer see: a sensor for Faust's hooks, and commit health.

:class:`EngineSensor` is registered with ``app.sensors.add``; it counts stream
buffers that filled up (Faust pauses fetching: backpressure reached Kafka),
rebalances and offset commits. Records consumed are counted by the pipeline
(one increment per chunk), so the sensor does not count them again.

:class:`CommitHealth` sets, per input partition the worker owns, the committed position and how
far it is behind the partition's end, in records (``sie_commit_lag_records``, and the older
``sie_consumer_lag``) and in seconds (``sie_commit_lag_seconds``), from the consumer's own
bookkeeping.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import faust
from faust.types import TP, AppT, ConsumerT

from engine.positions import PartitionPositions, Positions
from observability.metrics import EngineMetrics


class CommitSource(Protocol):
    """What commit health reads of the consumer (:class:`~streams.driver.EngineConsumer`)."""

    positions: Positions

    def highwater(self, tp: tuple[str, int]) -> int:
        """The partition's last known end offset (-1 if unknown)."""


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


def partition_lag(end: int | None, committed: int | None) -> int | None:
    """Records between the committed position and the partition's end (the high-water mark, the
    next offset to be written), or None when the end is not known yet."""
    if end is None or end < 0 or committed is None:
        return None
    return max(end - committed, 0)


class CommitHealth:
    """Per input partition this worker owns: committed position, its lag in records and seconds.

    Taken from the consumer itself (its positions and the high-water marks librdkafka reported
    with its last fetch), never from the admin API (``list_consumer_group_offsets`` can crash
    the process when the coordinator moves: librdkafka issue #5040). Series of partitions no
    longer owned are removed, so labels stay bounded.
    """

    def __init__(
        self,
        consumer_of: Callable[[], CommitSource | None],
        metrics: EngineMetrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._consumer_of = consumer_of
        self._m = metrics
        self._clock = clock
        self._shown: set[tuple[str, str]] = set()
        self._since: dict[tuple[str, str], tuple[int, float]] = {}  # committed, when it last moved

    async def update(self) -> None:
        """Set the gauges once; drop the series of partitions revoked since the last update."""
        consumer = self._consumer_of()
        if consumer is None:
            return  # not started yet
        now = self._clock()
        owned: set[tuple[str, str]] = set()
        for tp, part in consumer.positions.items():
            labels = (tp[0], str(tp[1]))
            owned.add(labels)
            lag = partition_lag(consumer.highwater(tp), part.committed)
            self._m.committed_offset.labels(*labels).set(part.committed)
            if lag is None:
                continue
            self._m.commit_lag_records.labels(*labels).set(lag)
            self._m.consumer_lag.labels(*labels).set(lag)
            self._m.commit_lag_seconds.labels(*labels).set(self._seconds(labels, part, lag, now))
        for labels in self._shown - owned:
            for gauge in (
                self._m.committed_offset,
                self._m.commit_lag_records,
                self._m.consumer_lag,
                self._m.commit_lag_seconds,
            ):
                with contextlib.suppress(KeyError):
                    gauge.remove(*labels)
            self._since.pop(labels, None)
        self._shown = owned

    def _seconds(self, labels: tuple[str, str], part: PartitionPositions, lag: int, now: float) -> float:
        committed, since = self._since.get(labels, (part.committed, now))
        if committed != part.committed or lag == 0:
            since = now
        self._since[labels] = (part.committed, since)
        if lag == 0:
            return 0.0
        oldest = part.oldest_uncommitted_s()
        return max(now - oldest, 0.0) if oldest is not None else now - since
