"""Latency against offered rate, from low load to saturation, for one running system."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import numpy as np

from benchmarks.systems import RunningSystem
from ops.eventgen import GeneratedEvent
from ops.loadgen import PacedProducer, PredictionMonitor, SendLog
from streams.kafka_config import client_config, consumer_config

# Outstanding events (sent, not yet answered) that still count as "no backlog".
DRAINED_EVENTS = 5
# Bounds of the wait for a level's backlog to drain (see drain_timeout).
MIN_DRAIN_S, MAX_DRAIN_S = 15.0, 120.0


@dataclass(frozen=True)
class Level:
    """One offered rate held for a while, and what came out."""

    offered: float
    achieved: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    samples: int

    def as_dict(self) -> dict[str, float]:
        """JSON-ready."""
        return asdict(self)

    @property
    def sustained(self) -> bool:
        """Whether the system kept up: achieved at least 95% of the offered rate."""
        return self.achieved >= 0.95 * self.offered


@dataclass(frozen=True)
class SweepConfig:
    """How long each level lasts and when to stop."""

    level_s: float = 5.0
    warmup_s: float = 1.0
    factor: float = 1.8
    max_rate: float = 40_000.0
    saturated_ratio: float = 0.85  # achieved/offered below this -> saturated
    max_p99_ms: float = 2_000.0


def drain_timeout(backlog: int, rate: float) -> float:
    """How long to wait for ``backlog`` events to be answered by a system doing ``rate``/s.

    Three times the time it should take, within [MIN_DRAIN_S, MAX_DRAIN_S]: a
    saturated level leaves (offered - achieved) x its length behind, which a
    system still answering at ``rate`` clears in a few seconds.
    """
    expected = backlog / max(rate, 1.0)
    return min(MAX_DRAIN_S, max(MIN_DRAIN_S, 3.0 * expected))


class Sweeper:
    """Drives one system on one set of topics: prime, then levels of rising rate.

    Every level ends by waiting for its backlog to drain (:attr:`backlog` is
    what is left if it did not), so the next level starts from an empty topic
    tail whether or not this one kept up.
    """

    def __init__(
        self,
        system: RunningSystem,
        events: Iterator[GeneratedEvent],
        config: SweepConfig,
        progress: Callable[[str], None],
    ) -> None:
        self._system, self._events, self._cfg, self._progress = system, events, config, progress
        topics = system.settings.topics
        self._config, self._topic = client_config(system.settings.kafka), topics.events
        self._log = SendLog()
        # The reader uses the systems' own consumer settings: Kafka answers a fetch as soon as a
        # record is there, so its fetch wait bounds only idle polls and adds nothing to latency.
        consumer = consumer_config(system.settings.kafka)
        self._monitor = PredictionMonitor(consumer, topics.predictions, topics.dlq, self._log)
        self._monitor.start()

    def close(self) -> None:
        """Stop the reader."""
        self._monitor.stop()
        self._monitor.join(5)

    def prime(self, timeout: float = 120.0) -> None:
        """Send a trickle until outputs flow and every worker is ready (group joined, models read)."""
        deadline = time.monotonic() + timeout
        producer = self._producer(20.0)
        try:
            while self.answered < 20 or not all(w.ready() for w in self._system.workers):
                if not self._system.alive():
                    raise RuntimeError("system died while starting:\n" + self._system.log_tail())
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no outputs within {timeout:.0f}s:\n{self._system.log_tail()}")
                time.sleep(0.2)
        finally:
            producer.stop()
            producer.join(5)
        self.drain(5.0)

    def run_level(self, rate: float, seconds: float | None = None) -> Level:
        """Offer ``rate`` events/s for a level, measure after the warm-up, then drain the backlog."""
        seconds = seconds or self._cfg.level_s
        producer = self._producer(rate)
        start = time.monotonic()
        time.sleep(seconds)
        producer.stop()
        producer.join(10)
        end = time.monotonic()
        arrived, lat = self._monitor.window(start + self._cfg.warmup_s, end)
        achieved = arrived / max(end - start - self._cfg.warmup_s, 1e-6)
        p50, p95, p99 = np.percentile(lat * 1000.0, [50, 95, 99]) if lat.size else (float("nan"),) * 3
        level = Level(rate, round(achieved, 1), float(p50), float(p95), float(p99), int(lat.size))
        self._progress(f"offered {rate:,.0f}/s -> {achieved:,.0f}/s, p50 {p50:.1f} ms, p99 {p99:.1f} ms")
        left, waited = self.backlog, time.monotonic()
        if not self.drain(drain_timeout(left, achieved)):
            self._progress(f"backlog of {self.backlog:,} events left after {time.monotonic() - waited:.0f} s")
        elif left > 0.1 * rate * seconds:
            self._progress(f"drained a backlog of {left:,} events in {time.monotonic() - waited:.1f} s")
        return level

    def sweep(self, start_rate: float) -> list[Level]:
        """Rising levels until the system saturates (or ``max_rate``), all on this system."""
        return rising_levels(lambda rate: self.run_level(rate), start_rate, self._cfg)

    @property
    def sent(self) -> int:
        """Events sent to this system's input topic so far."""
        return self._log.sent

    @property
    def answered(self) -> int:
        """Predictions and dead letters read back so far."""
        return self._monitor.predictions + self._monitor.dead_letters

    @property
    def backlog(self) -> int:
        """Events sent and not answered yet."""
        return self._log.sent - self.answered

    def drain(self, timeout: float) -> bool:
        """Wait until nearly every sent event has come back; whether it did within ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.backlog > DRAINED_EVENTS:
            if time.monotonic() >= deadline or not self._system.alive():
                return False
            time.sleep(0.1)
        return True

    def _producer(self, rate: float) -> PacedProducer:
        producer = PacedProducer(self._config, self._topic, self._events, rate, self._log)
        producer.start()
        return producer


def rising_levels(run_level: Callable[[float], Level], start_rate: float, config: SweepConfig) -> list[Level]:
    """Levels of rising rate (``run_level(rate)``) until the system saturates.

    The first level that does not keep up is run once more (each level starts
    with the previous one's backlog drained): on a small shared machine one
    rebalance or a neighbour's burst of CPU can sink a level, and it should
    not end the sweep. When a level fails for good, one more level runs just
    under what it achieved, so the maximum is finer than the rate steps.
    """
    levels: list[Level] = []
    rate, retried = start_rate, False
    while rate <= config.max_rate:
        level = run_level(rate)
        levels.append(level)
        if not _kept_up(level, config) and not retried:
            retried = True
            level = run_level(rate)
            levels.append(level)
        if not _kept_up(level, config):
            kept = max((lv.offered for lv in levels if lv.sustained), default=0.0)
            refine = round(0.9 * level.achieved, -1)
            if level.achieved < config.saturated_ratio * rate and refine > kept * 1.05:
                levels.append(run_level(refine))
            break
        rate = round(rate * config.factor, -1)
    return sorted(levels, key=lambda lv: lv.offered)


def _kept_up(level: Level, config: SweepConfig) -> bool:
    return level.achieved >= config.saturated_ratio * level.offered and level.p99_ms < config.max_p99_ms


def max_sustainable(levels: list[Level]) -> float:
    """The highest achieved rate among levels that kept up (else the highest achieved)."""
    kept = [lv.achieved for lv in levels if lv.sustained]
    return max(kept or [lv.achieved for lv in levels] or [0.0])
