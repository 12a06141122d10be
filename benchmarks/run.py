"""``python -m benchmarks.run`` (``sie bench``, ``make bench``): every system in one run.

Starts one Apache Kafka broker (KRaft, single node, on the JVM) and one
tritonserver, measures Triton alone with perf_analyzer, then for each system
(raw client, pass-through, naive agent, engine with 1 and 2 workers, adaptive
and fixed deadlines) sweeps the offered rate from low load to saturation on one
set of topics, times the main systems draining a preloaded backlog, and writes
reports/bench/bench.json (and docs/benchmarks.json), docs/benchmarks-latency.png and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer
from rich.console import Console

from benchmarks.drain import drain_key, measure_drain
from benchmarks.perf import PerfPoint, run_perf
from benchmarks.previous import PREVIOUS_TANSU
from benchmarks.report import broker_setup, machine, write_json, write_markdown, write_plot
from benchmarks.sweep import DRAINED_EVENTS, Level, SweepConfig, Sweeper, max_sustainable, rising_levels
from benchmarks.systems import SLO_MS, SYSTEMS, RunningSystem, SystemSpec, start_system
from benchmarks.targets import targets
from engine.settings import Settings, TopicSettings
from ops.embedded import KafkaBroker, TritonProcess, create_topics, free_port, start_broker, start_triton
from ops.eventgen import GeneratedEvent, generate, load_profiles
from ops.loadgen import PacedProducer, SendLog
from ops.stack import copy_model_repository
from streams.kafka_config import client_config, consumer_config

__all__ = ["MODEL", "PARTITIONS", "REPO", "bench_events", "main", "start_servers", "targets"]

REPO = Path(__file__).resolve().parents[1]
MODEL = "breast_cancer"
PARTITIONS = TopicSettings().partitions  # the engine's default
BROKER_HEAP_MB = 512
# Traffic through a throwaway topic before any measurement: a fresh JVM runs the broker's request
# paths interpreted until its JIT has compiled them, which would land on the first system's levels.
WARMUP_S, WARMUP_RATE = 10.0, 5_000.0
HALF_LOAD_KINDS = ("engine", "raw")  # systems that also run a level at 50% of their maximum
# Systems timed draining a preloaded backlog (benchmarks/drain.py), and the backlog's size: large
# enough that the measured middle 80% lasts seconds, not a fraction of one, for the fastest system.
DRAIN_SYSTEMS = ("raw client bound", "pass-through bound", "engine, 1 worker", "engine, 2 workers")
DRAIN_EVENTS, DRAIN_EVENTS_QUICK = 200_000, 60_000
BINARY_DRAIN_KINDS = ("engine", "passthrough")  # also drained with binary tensor events (issue 15)


@dataclass(frozen=True)
class BenchOptions:
    """Command-line options."""

    quick: bool
    out: Path
    docs: Path
    systems: tuple[str, ...]
    perf: bool
    drain: bool
    sweep: bool
    max_rate: float | None
    drain_events: int | None


def parse(argv: Sequence[str] | None) -> BenchOptions:
    """Parse the command line."""
    parser = argparse.ArgumentParser(prog="sie bench", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="shorter levels, fewer systems and batch sizes (~8 min)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "bench", help="JSON and work folder")
    parser.add_argument(
        "--docs",
        type=Path,
        default=REPO / "docs" / "benchmarks.md",
        help="Markdown report (the plot goes beside it)",
    )
    kinds = sorted({s.kind for s in SYSTEMS})
    parser.add_argument("--only", nargs="*", default=[], help=f"system kinds to run: {kinds}")
    parser.add_argument("--no-perf", action="store_true", help="skip perf_analyzer")
    parser.add_argument("--no-drain", action="store_true", help="skip draining preloaded backlogs")
    parser.add_argument("--no-sweep", action="store_true", help="skip the live sweeps (drains only)")
    parser.add_argument("--max-rate", type=float, default=None, help="highest offered rate (smoke runs)")
    parser.add_argument(
        "--drain-events",
        type=int,
        default=None,
        help=f"backlog per drained system (default {DRAIN_EVENTS:,}; {DRAIN_EVENTS_QUICK:,} with --quick)",
    )
    a = parser.parse_args(argv)
    return BenchOptions(
        a.quick,
        a.out,
        a.docs,
        tuple(a.only),
        not a.no_perf,
        not a.no_drain,
        not a.no_sweep,
        a.max_rate,
        a.drain_events,
    )


def bench_system(
    spec: SystemSpec, base: Settings, work: Path, config: SweepConfig, console: Console
) -> dict[str, Any]:
    """Start one system, sweep it, run its 50% level, stop it."""
    console.rule(spec.name)
    runner = _SystemRun(spec, base, work, config, console)
    try:
        levels = rising_levels(runner.level, spec.start_rate, config)
        best = max_sustainable(levels)
        half = None
        if spec.kind in HALF_LOAD_KINDS:
            console.print(f"  50% of max ({best / 2:,.0f}/s):")
            half = runner.level(round(best / 2, -1), seconds=config.level_s * 1.5)
    finally:
        runner.stop()
    at_max = max((lv for lv in levels if lv.sustained), key=lambda lv: lv.achieved, default=None)
    within = [lv.achieved for lv in levels if lv.sustained and lv.p99_ms <= SLO_MS]
    return {
        "max_sustainable": best,
        "max_within_slo": max(within, default=0.0),
        "levels": [lv.as_dict() for lv in levels],
        "at_max": at_max.as_dict() if at_max else None,
        "half_load": half.as_dict() if half else None,
        "restarts": runner.restarts,
    }


def bench_events(seed: int, fmt: str = "json") -> Iterator[GeneratedEvent]:
    """An endless stream of ``MODEL``'s events, the same for every system given the same seed.

    ``fmt``: ``json`` or ``binary`` (the binary tensor format, see engine/contract/wire.py).
    """
    profiles = load_profiles(REPO / "model_repository", [MODEL])
    return generate(profiles, 10**9, seed=seed, keys=256, fmt=fmt)


class _SystemRun:
    """One system on one set of topics for its whole sweep.

    Each level drains the backlog it leaves (benchmarks.sweep). Only when a
    backlog does not drain, so that the next level would measure it rather than
    its own rate, is the system started again on fresh topics (``restarts``).
    """

    def __init__(self, spec: SystemSpec, base: Settings, work: Path, config: SweepConfig, console: Console):
        self._spec, self._base, self._work, self._config, self._console = spec, base, work, config, console
        self._running: tuple[RunningSystem, Sweeper] | None = None
        self.restarts = 0

    def level(self, rate: float, seconds: float | None = None) -> Level:
        """Run one level on the running system (started first if needed)."""
        if self._running is not None and self._running[1].backlog > DRAINED_EVENTS:
            self._console.print("  [yellow]backlog did not drain: starting again on fresh topics[/]")
            self.stop()
            self.restarts += 1
        if self._running is None:
            system = start_system(self._spec, self._base, self._work)
            sweeper = Sweeper(
                system,
                bench_events(seed=1, fmt=self._spec.event_format),
                self._config,
                lambda msg: self._console.print(f"  {msg}"),
            )
            self._running = (system, sweeper)
            sweeper.prime()
        return self._running[1].run_level(rate, seconds)

    def stop(self) -> None:
        """Stop the running instance, if any."""
        if self._running is not None:
            system, sweeper = self._running
            self._running = None
            sweeper.close()
            system.stop()


def wipe_broker_data(work: Path) -> None:
    """Remove the broker's data and config under ``work``: every run starts on an empty broker."""
    for name in ("kafka-data", "kafka-data-conf"):
        shutil.rmtree(work / name, ignore_errors=True)


def start_servers(work: Path, partitions: int) -> tuple[KafkaBroker, TritonProcess, Settings]:
    """Apache Kafka (empty) and tritonserver (``MODEL`` only) in ``work``, and settings pointing at both.

    Everything else is the engine's default (fetch wait, session timeout, batching).
    """
    wipe_broker_data(work)
    broker = start_broker(free_port(), work, heap_mb=BROKER_HEAP_MB)
    try:
        triton = start_triton(
            copy_model_repository(REPO / "model_repository", work),
            work,
            http_port=free_port(),
            grpc_port=free_port(),
            metrics_port=free_port(),
            models=[MODEL],
        )
    except BaseException:
        broker.stop()
        raise
    base = Settings(
        kafka={"bootstrap_servers": broker.bootstrap},
        triton={"url": triton.grpc_url, "http_url": triton.http_url, "default_model": MODEL},
        topics={"partitions": partitions},
        log_level="WARNING",
    )
    try:
        warm_up_broker(base)
    except BaseException:
        triton.stop()
        broker.stop()
        raise
    return broker, triton, base


def warm_up_broker(base: Settings, seconds: float = WARMUP_S, rate: float = WARMUP_RATE) -> int:
    """Paced produce and a group consumer on a throwaway topic for ``seconds``; returns records read."""
    topic = "bench-warmup"
    create_topics(base.kafka.bootstrap_servers, {topic: base.topics.partitions})
    producer = PacedProducer(client_config(base.kafka), topic, bench_events(seed=3), rate, SendLog())
    consumer = Consumer(
        consumer_config(base.kafka)
        | {"group.id": topic, "auto.offset.reset": "earliest", "enable.auto.commit": False}
    )
    consumer.subscribe([topic])
    producer.start()
    read, deadline = 0, time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            read += len(consumer.consume(1000, 0.1))
    finally:
        producer.stop()
        producer.join(10)
        consumer.close()
    return read


def notes(report: dict[str, Any], config: SweepConfig) -> list[str]:
    """The report's notes on method."""
    restarted = ", ".join(
        f"{n} ({s['restarts']}x)" for n, s in report["systems"].items() if s.get("restarts")
    )
    return [
        "- Each system runs its whole sweep, 50% level included, on one set of topics. Every level "
        "starts after the previous level's backlog has drained (waiting up to three times what it "
        "should take at the rate achieved, 15 to 120 s); a system whose backlog does not drain in that "
        f"time is started again on fresh topics. Restarted: {restarted or 'none'}.",
        "- Drain: the events are written to fresh topics first, then the system starts; its rate is "
        "taken from the timestamps of the middle 80% of its outputs, so start-up and the load generator "
        "are outside the measured window (the live sweep shares the cores with the load generator).",
        "- Max sustainable: the highest achieved rate among levels that kept up (achieved >= 95% of "
        "offered). The first level that fails to keep up runs once more (after its backlog drained): "
        "one rebalance or a neighbour's CPU burst should not end a sweep; when it fails again, one "
        "more level runs at 90% of what it achieved.",
        f"- The 50% level runs for {config.level_s * 1.5:.1f} s (engine systems and the raw client bound). "
        f"The adaptive system targets p99 <= {SLO_MS:.0f} ms, the SLO the comparison with fixed "
        "deadlines uses.",
        f"- Before the first system, {WARMUP_S:.0f} s of traffic at {WARMUP_RATE:,.0f} events/s through a "
        "throwaway topic warms the broker up (a fresh JVM compiles its request paths during the first "
        "seconds of traffic).",
        f"- Consumers (systems under test and the measuring reader) wait up to "
        f"{report['fetch_max_wait_ms']} ms per fetch, the engine's default: Kafka answers a fetch as soon "
        "as a record is there, so the wait bounds only idle polls and adds nothing to latency.",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write the reports."""
    opts = parse(argv)
    console = Console()
    started, t0 = time.strftime("%Y-%m-%d %H:%M"), time.monotonic()
    config = SweepConfig(level_s=3.0, factor=2.0) if opts.quick else SweepConfig()
    if opts.max_rate:
        config = dataclasses.replace(config, max_rate=opts.max_rate)
    work = (opts.out / "work").resolve()
    work.mkdir(parents=True, exist_ok=True)
    console.print(f"[cyan]>[/] starting Apache Kafka and tritonserver, {WARMUP_S:.0f} s of broker warm-up")
    broker, triton, base = start_servers(work, PARTITIONS)
    report: dict[str, Any] = {"machine": machine(), "started": started, "quick": opts.quick, "model": MODEL}
    report |= {"broker": broker_setup(BROKER_HEAP_MB), "fetch_max_wait_ms": base.kafka.fetch_max_wait_ms}
    report |= {"partitions": base.topics.partitions, "slo_ms": SLO_MS, "systems": {}, "triton_bound": []}
    sample = next(generate(load_profiles(REPO / "model_repository", [MODEL]), 1))
    report["event_bytes"] = len(sample.value)
    report["binary_event_bytes"] = len(next(bench_events(seed=0, fmt="binary")).value)
    try:
        if opts.perf:
            report["triton_bound"] = [p.as_dict() for p in _perf(triton.grpc_url, work, opts.quick, console)]
        for spec in SYSTEMS:
            chosen = not opts.systems or spec.kind in opts.systems
            if not opts.sweep or not chosen or opts.quick and not spec.quick:
                continue
            report["systems"][spec.name] = bench_system(spec, base, work, config, console)
        if opts.drain:
            report["drain"] = _drains(opts, base, work, console)
    finally:
        triton.stop()
        broker.stop()
        wipe_broker_data(work)  # gigabytes of records nobody reads again; the broker's log stays
    report["notes"] = notes(report, config)
    report["targets"] = targets(report["systems"], report.get("drain"))
    report["previous"] = PREVIOUS_TANSU
    report["seconds"] = time.monotonic() - t0
    plot = opts.docs.parent / "benchmarks-latency.png"
    json_path = opts.docs.with_suffix(".json")  # committed beside the report it backs
    write_json(report, json_path)
    write_json(report, opts.out / "bench.json")
    write_plot(report, plot)
    write_markdown(
        report, opts.docs, plot, json_path.relative_to(REPO) if json_path.is_relative_to(REPO) else json_path
    )
    console.print(f"[green]wrote[/] {json_path}, {plot}, {opts.docs} in {report['seconds']:.0f}s")
    for t in report["targets"]:
        console.print(f"  {'ok ' if t['met'] else 'NO '} {t['target']}: {t['measured']}")
    return 0


def _drains(opts: BenchOptions, base: Settings, work: Path, console: Console) -> dict[str, Any]:
    n = opts.drain_events or (DRAIN_EVENTS_QUICK if opts.quick else DRAIN_EVENTS)
    console.rule(f"Draining a preloaded backlog of {n:,} events")
    out = {}
    for spec in SYSTEMS:
        if spec.name not in DRAIN_SYSTEMS or opts.systems and spec.kind not in opts.systems:
            continue
        for fmt in ("json", "binary") if spec.kind in BINARY_DRAIN_KINDS else ("json",):
            drain = measure_drain(
                spec, base, work, bench_events(seed=2, fmt=fmt), n, lambda msg: console.print(f"  {msg}")
            )
            out[drain_key(spec.name, fmt)] = drain.as_dict()
    return out


def _perf(grpc_url: str, work: Path, quick: bool, console: Console) -> list[PerfPoint]:
    console.rule("Triton bound (perf_analyzer)")
    points = []
    for batch in (1, 64, 256) if quick else (1, 16, 64, 128, 256):
        try:
            point = run_perf(grpc_url, MODEL, batch, 4, work)
        except RuntimeError as err:
            console.print(f"  [red]batch {batch}: {err}[/]")
            continue
        console.print(
            f"  batch {batch}: {point.inferences_per_s:,.0f} inferences/s, p99 {point.p99_ms:.1f} ms"
        )
        points.append(point)
    return points


if __name__ == "__main__":
    raise SystemExit(main())
