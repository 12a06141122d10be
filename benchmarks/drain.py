"""Drain a preloaded backlog: how fast a system consumes when the events are already waiting.

The live sweep (benchmarks/sweep.py) runs the load generator on the same two
cores as the broker, Triton and the system under test, so its maximum is what
the whole machine carries. Draining a backlog takes the load generator out of
the measured window: the events are written first, then the system starts,
and its rate is read from the timestamps its outputs were produced at (the
middle 80% of them, leaving out start-up and the tail). This is what a worker
sustains when it catches up after a pause or a deploy.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer

from benchmarks.systems import SystemSpec, fresh_settings, start_system
from engine.settings import Settings
from ops.eventgen import GeneratedEvent
from streams.kafka_config import client_config, consumer_config
from streams.kafka_tools import produce_all

MIDDLE = 0.8  # share of the outputs the rate is measured over


@dataclass(frozen=True)
class Drain:
    """One backlog drained by one system."""

    events: int
    received: int
    seconds: float
    rate: float
    cpu_us_per_event: float | None = None  # the system's own processes, over the same middle share

    def as_dict(self) -> dict[str, float | None]:
        """JSON-ready."""
        return asdict(self)


def drain_key(system: str, fmt: str) -> str:
    """The report's name for ``system`` draining events of format ``fmt`` (JSON keeps the bare name)."""
    return system if fmt == "json" else f"{system} | {fmt}"


def drain_rate(stamps_ms: Sequence[float], middle: float = MIDDLE) -> tuple[float, float]:
    """(events/s, seconds) over the middle ``middle`` share of outputs, by their timestamps."""
    if len(stamps_ms) < 10:
        return 0.0, 0.0
    ordered = np.sort(np.asarray(stamps_ms, dtype=np.float64))
    lo = round(len(ordered) * (1 - middle) / 2)
    hi = len(ordered) - 1 - lo
    seconds = float(ordered[hi] - ordered[lo]) / 1000.0
    return ((hi - lo) / seconds if seconds > 0 else 0.0), seconds


def preload(settings: Settings, events: Iterator[GeneratedEvent], n: int) -> None:
    """Write ``n`` events (with their headers) to the input topic and wait until the broker has them all."""
    items = ((ev.value, ev.key, ev.headers) for ev in islice(events, n))
    acked = produce_all(client_config(settings.kafka), settings.topics.events, items)
    if acked != n:
        raise RuntimeError(f"{n - acked} preloaded events were not acknowledged by the broker")


def process_cpu_s(pids: Sequence[int]) -> float:
    """User + system CPU seconds of ``pids`` so far (from /proc; 0 for a process that is gone)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / tick


@dataclass
class CpuWindow:
    """CPU seconds of the system's processes when 10% and 90% of the outputs had arrived."""

    n: int
    cpu: Callable[[], float]
    marks: dict[int, float] = field(default_factory=dict)

    def seen(self, received: int) -> None:
        """Note the CPU time as ``received`` passes each mark."""
        for mark in (round(self.n * (1 - MIDDLE) / 2), round(self.n * (1 + MIDDLE) / 2)):
            if received >= mark and mark not in self.marks:
                self.marks[mark] = self.cpu()

    def us_per_event(self) -> float | None:
        """Worker CPU µs per event between the marks (None if the drain did not pass both)."""
        if len(self.marks) < 2:
            return None
        (lo, c0), (hi, c1) = sorted(self.marks.items())
        return round((c1 - c0) * 1e6 / (hi - lo), 2) if hi > lo else None


def read_outputs(
    settings: Settings,
    n: int,
    timeout: float,
    alive: Callable[[], bool],
    window: CpuWindow | None = None,
) -> list[float]:
    """Output timestamps (ms) of predictions and dead letters, until ``n`` arrived or ``timeout``.

    ``window`` is told the count after each poll (the consumer reads in bursts of at most 1,000,
    so the marks land within a few milliseconds of the outputs they stand for).
    """
    consumer = Consumer(
        consumer_config(settings.kafka)
        | {
            "group.id": f"{settings.kafka.group_id}-drain-reader",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([settings.topics.predictions, settings.topics.dlq])
    stamps: list[float] = []
    deadline = time.monotonic() + timeout
    try:
        while len(stamps) < n and time.monotonic() < deadline and alive():
            for msg in consumer.consume(1000, 0.2):
                if not msg.error():
                    stamps.append(float(msg.timestamp()[1]))
            if window is not None:
                window.seen(len(stamps))
    finally:
        consumer.close()
    return stamps


def measure_drain(
    spec: SystemSpec,
    base: Settings,
    work: Path,
    events: Iterator[GeneratedEvent],
    n: int,
    progress: Callable[[str], None],
    timeout: float = 180.0,
) -> Drain:
    """Preload ``n`` events on fresh topics, start ``spec``, and time how fast it drains them."""
    settings = fresh_settings(base, spec, work)
    started = time.monotonic()
    preload(settings, events, n)
    progress(f"preloaded {n:,} events in {time.monotonic() - started:.1f} s; starting {spec.name}")
    system = start_system(spec, base, work, settings)
    window = CpuWindow(n, lambda: process_cpu_s(system.pids()))
    try:
        stamps = read_outputs(settings, n, timeout, system.alive, window)
    finally:
        system.stop()
    rate, seconds = drain_rate(stamps)
    cpu = window.us_per_event()
    shown = f", {cpu:.1f} µs CPU/event" if cpu is not None else ""
    progress(f"drained {len(stamps):,}/{n:,}: {rate:,.0f} events/s over the middle {MIDDLE:.0%}{shown}")
    return Drain(n, len(stamps), round(seconds, 3), round(rate, 1), cpu)
