"""Adaptive micro-batching: keep the p99 end-to-end latency under an SLO, batch as much as it allows.

A larger batch deadline gives the inference backend larger batches (less work per event, more
throughput) and costs latency; a smaller one does the opposite. The controller
samples the end-to-end latency of delivered events and, once per interval,
moves the deadline by AIMD (additive increase, multiplicative decrease), as
Clipper does for batch sizes:

* windowed p99 above ``overload`` x SLO: the worker is queueing, not waiting on
  deadlines, and smaller batches would only cut its throughput further: deadline
  + ``step`` (bigger batches drain the queue);
* windowed p99 above ``high_water`` x SLO: deadline x ``decrease``;
* windowed p99 below ``low_water`` x SLO: deadline + ``step``;
* in between: keep it.

The overload rule came from the benchmark: without it, an SLO the broker alone
cannot meet drove the deadline to its minimum and halved throughput.

With too few samples in a window (idle stream) nothing changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdaptiveConfig:
    """Knobs of the controller (milliseconds unless named otherwise)."""

    slo_ms: float = 25.0
    min_delay_ms: float = 0.5
    max_delay_ms: float = 50.0
    step_ms: float = 0.5
    decrease: float = 0.6
    low_water: float = 0.6
    high_water: float = 0.9
    overload: float = 3.0
    interval_s: float = 1.0
    min_samples: int = 50


class AdaptiveBatching:
    """The controller's state: the current deadline and this interval's latency samples."""

    def __init__(
        self, config: AdaptiveConfig, initial_delay_ms: float, apply: Callable[[float], None]
    ) -> None:
        self.config = config
        self.delay_ms = min(max(initial_delay_ms, config.min_delay_ms), config.max_delay_ms)
        self._apply = apply
        self._samples: list[float] = []
        apply(self.delay_ms / 1000.0)

    def observe(self, latency_s: float) -> None:
        """One delivered event's end-to-end latency."""
        self._samples.append(latency_s)

    def tick(self) -> float:
        """End an interval: adjust the deadline from the window's p99; returns it (ms)."""
        samples, self._samples = self._samples, []
        cfg = self.config
        if len(samples) < cfg.min_samples:
            return self.delay_ms
        p99_ms = float(np.percentile(samples, 99)) * 1000.0
        new = self.delay_ms
        if p99_ms > cfg.overload * cfg.slo_ms:
            new = min(cfg.max_delay_ms, self.delay_ms + cfg.step_ms)
        elif p99_ms > cfg.high_water * cfg.slo_ms:
            new = max(cfg.min_delay_ms, self.delay_ms * cfg.decrease)
        elif p99_ms < cfg.low_water * cfg.slo_ms:
            new = min(cfg.max_delay_ms, self.delay_ms + cfg.step_ms)
        if new != self.delay_ms:
            log.debug("adaptive batching: p99 %.1f ms -> deadline %.2f ms", p99_ms, new)
            self.delay_ms = new
            self._apply(new / 1000.0)
        return self.delay_ms


async def run_controller(controller: AdaptiveBatching) -> None:
    """Tick ``controller`` every interval until cancelled."""
    while True:
        await asyncio.sleep(controller.config.interval_s)
        controller.tick()
