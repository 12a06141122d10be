"""The stall watchdog of the group consumer's thread (:mod:`streams.group_consumer`).

An assigned, unpaused partition whose fetch position has not moved for ``stall_after_s`` while
the broker holds records past it is *stalled* (a fetch that never started: librdkafka issue
#5586, or one wedged after a broker freeze); its fetch is restarted at the position. It also
keeps each partition's last known end offset, which the event loop reads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaException, TopicPartition

from streams.consumer_types import TPKey

log = logging.getLogger(__name__)


@dataclass
class _Watch:
    position: int = -1
    since: float = field(default_factory=time.monotonic)


class StallWatchdog:
    """Positions and end offsets of the assigned partitions, checked by the consumer's thread."""

    def __init__(self, stall_after_s: float) -> None:
        self._stall_after_s = stall_after_s
        self._watch: dict[TPKey, _Watch] = {}
        self.high: dict[TPKey, int] = {}  # replaced whole, never changed: the loop reads it

    def start(self, key: TPKey, offset: int) -> None:
        """``key`` reads from ``offset`` now (assigned, or rewound)."""
        self._watch[key] = _Watch(offset)

    def forget(self, keys: Iterable[TPKey]) -> None:
        """``keys`` are no longer assigned."""
        gone = set(keys)
        self.high = {k: v for k, v in self.high.items() if k not in gone}
        for key in gone:
            self._watch.pop(key, None)

    def resumed(self, now: float) -> None:
        """The partitions were paused until ``now``: paused is not stalled, the clocks start over."""
        for watch in self._watch.values():
            watch.since = now

    def check(
        self,
        consumer: Any,
        assignment: Iterable[TPKey],
        now: float,
        restart: Callable[[TPKey, int], None] | None,
    ) -> None:
        """Note each partition's position and end; ``restart(key, position)`` a stalled one
        (``restart`` None while the partitions are paused: paused is not stalled)."""
        for tp in consumer.position([TopicPartition(t, p) for t, p in assignment]):
            key = (tp.topic, tp.partition)
            watch = self._watch.setdefault(key, _Watch(tp.offset))
            high = consumer.get_watermark_offsets(tp, cached=True)[1]
            if high >= 0 and self.high.get(key) != high:
                self.high = self.high | {key: high}
            if tp.offset >= 0 and tp.offset != watch.position:
                watch.position, watch.since = tp.offset, now
            elif restart is not None and now - watch.since >= self._stall_after_s:
                self._maybe_restart(consumer, key, watch, now, restart)

    def _maybe_restart(
        self, consumer: Any, key: TPKey, watch: _Watch, now: float, restart: Callable[[TPKey, int], None]
    ) -> None:
        try:
            high = consumer.get_watermark_offsets(TopicPartition(*key), timeout=2)[1]
        except KafkaException:
            return  # the broker is away: nothing can be fetched now anyway
        self.high = self.high | {key: high}
        if high <= watch.position:
            watch.since = now  # nothing waits: an idle partition, not a stalled one
            return
        log.warning(
            "partition %s[%d] has not moved from %d for %.0fs while records wait (end %d); "
            "restarting its fetch",
            key[0],
            key[1],
            watch.position,
            now - watch.since,
            high,
        )
        watch.since = now
        restart(key, watch.position)
