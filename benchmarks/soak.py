"""``python -m benchmarks.soak`` (``make soak``): a long steady run, watching for leaks and drift.

Starts Apache Kafka (KRaft, single node, on the JVM), tritonserver and the
engine's worker(s) as real processes, measures the maximum sustainable rate
with a short sweep (or takes ``--rate``), then offers ``--fraction`` (70%) of
it for ``--minutes`` (10) on fresh topics. Every ``--interval`` seconds it
records the RSS of each process (each worker, the Kafka broker, tritonserver
with its python-backend stubs), the end-to-end p50/p99 of that interval and
the lag (events produced and not yet answered). Writes
``reports/soak/soak.json``, ``soak.png`` and ``soak.md``; the verdict is the
worker's RSS growth after warm-up (target: under 10%), reported with each
process's RSS slope (MiB per minute, least squares after warm-up).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from benchmarks.report import broker_setup, machine
from benchmarks.run import BROKER_HEAP_MB, MODEL, PARTITIONS, REPO, start_servers, wipe_broker_data
from benchmarks.soak_report import Sample, summarize, write_markdown, write_plot
from benchmarks.sweep import SweepConfig, Sweeper, max_sustainable
from benchmarks.systems import RunningSystem, SystemSpec, metric_totals, start_system
from engine.settings import Settings
from ops.eventgen import GeneratedEvent, generate, load_profiles
from ops.loadgen import PacedProducer, PredictionMonitor, SendLog
from streams.kafka_config import client_config, consumer_config


@dataclass(frozen=True)
class SoakOptions:
    """Command-line options."""

    minutes: float
    fraction: float
    rate: float | None
    workers: int
    interval_s: float
    warmup_s: float
    out: Path


def parse(argv: Sequence[str] | None) -> SoakOptions:
    """Parse the command line."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    p.add_argument("--minutes", type=float, default=10.0, help="length of the steady phase")
    p.add_argument("--fraction", type=float, default=0.7, help="share of the max sustainable rate")
    p.add_argument("--rate", type=float, default=None, help="offer this rate; skips the sweep")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    p.add_argument("--warmup", type=float, default=60.0, help="seconds before the RSS baseline")
    p.add_argument("--out", type=Path, default=REPO / "reports" / "soak")
    a = p.parse_args(argv)
    warmup = min(a.warmup, a.minutes * 60 / 4)
    return SoakOptions(a.minutes, a.fraction, a.rate, a.workers, a.interval, warmup, a.out)


def rss_mib(pid: int) -> float:
    """VmRSS of ``pid`` plus its descendants, MiB (0 once gone)."""
    total_kib = 0
    for p in [pid, *_descendants(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
        except OSError:
            continue
    return round(total_kib / 1024, 1)


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            found += [child, *_descendants(child)]
    return found


class SteadyRun:
    """The steady phase: a paced producer, an output monitor, periodic samples."""

    def __init__(self, system: RunningSystem, events: Iterator[GeneratedEvent], pids: dict[str, int]) -> None:
        settings = system.settings
        self._system, self._events, self._pids = system, events, pids
        self._config = client_config(settings.kafka)
        self._topic = settings.topics.events
        self.log = SendLog(max_age_s=600.0)
        self.monitor = PredictionMonitor(
            consumer_config(settings.kafka), settings.topics.predictions, settings.topics.dlq, self.log
        )
        self.monitor.start()

    def prime(self, timeout: float = 120.0) -> None:
        """A trickle until outputs flow (group joined, model specs read)."""
        producer = PacedProducer(self._config, self._topic, self._events, 20.0, self.log)
        producer.start()
        deadline = time.monotonic() + timeout
        try:
            while self.answered < 20 or not all(w.ready() for w in self._system.workers):
                if time.monotonic() > deadline or not self._system.alive():
                    raise RuntimeError("no outputs while priming:\n" + self._system.log_tail())
                time.sleep(0.2)
        finally:
            producer.stop()
            producer.join(5)

    @property
    def answered(self) -> int:
        """Predictions and dead letters read back."""
        return self.monitor.predictions + self.monitor.dead_letters

    def run(self, rate: float, seconds: float, interval: float, console: Console) -> list[Sample]:
        """Offer ``rate`` for ``seconds``; one sample per ``interval``."""
        producer = PacedProducer(self._config, self._topic, self._events, rate, self.log)
        start = time.monotonic()
        producer.start()
        samples: list[Sample] = []
        try:
            while (elapsed := time.monotonic() - start) < seconds:
                time.sleep(min(interval, max(seconds - elapsed, 0.1)))
                samples.append(self._sample(start, interval))
                if not self._system.alive():
                    raise RuntimeError("a process died:\n" + self._system.log_tail())
                s = samples[-1]
                if len(samples) % max(int(60 / interval), 1) == 0:
                    console.print(
                        f"  {s.t_s / 60:4.1f} min: {s.answered_per_s:,.0f}/s, p99 {s.p99_ms:.0f} ms, "
                        f"lag {s.lag:,}, RSS {s.rss_mib}"
                    )
        finally:
            producer.stop()
            producer.join(30)
        return samples

    def _sample(self, start: float, interval: float) -> Sample:
        now = time.monotonic()
        arrived, lat = self.monitor.window(now - interval, now)
        p50, p99 = np.percentile(lat * 1000.0, [50, 99]) if lat.size else (float("nan"),) * 2
        return Sample(
            t_s=round(now - start, 1),
            rss_mib={name: rss_mib(pid) for name, pid in self._pids.items()},
            answered_per_s=round(arrived / interval, 1),
            p50_ms=round(float(p50), 2),
            p99_ms=round(float(p99), 2),
            lag=self.log.sent - self.answered,
            worker=self._worker_metrics(),
        )

    def _worker_metrics(self) -> dict[str, float]:
        wanted = {
            "sie_events_consumed_total": "consumed",
            "sie_predictions_total": "predictions",
            "sie_pending_events": "pending",
            "sie_consumer_lag": "consumer_lag",
        }
        totals = metric_totals([w.metrics_url for w in self._system.workers])
        return {short: totals.get(name, 0.0) for name, short in wanted.items()}

    def close(self) -> None:
        """Stop the monitor."""
        self.monitor.stop()
        self.monitor.join(5)


def find_rate(base: Settings, work: Path, console: Console) -> float:
    """Maximum sustainable rate of one fresh engine system (a short sweep)."""
    console.rule("max sustainable rate")
    system = start_system(SystemSpec("soak-sweep", "engine", 1), base, work)
    sweeper = Sweeper(
        system, _events(), SweepConfig(level_s=5.0, factor=1.5), lambda m: console.print(f"  {m}")
    )
    try:
        sweeper.prime()
        return max_sustainable(sweeper.sweep(300.0))
    finally:
        sweeper.close()
        system.stop()


def _events() -> Iterator[GeneratedEvent]:
    return generate(load_profiles(REPO / "model_repository", [MODEL]), 10**9, seed=2, keys=256)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the soak and write the reports; exit 1 if the worker's RSS grew past the target."""
    opts = parse(argv)
    console = Console()
    started = time.strftime("%Y-%m-%d %H:%M")
    work = (opts.out / "work").resolve()
    work.mkdir(parents=True, exist_ok=True)
    broker, triton, base = start_servers(work, max(PARTITIONS, opts.workers))
    try:
        best = opts.rate / opts.fraction if opts.rate else find_rate(base, work, console)
        rate = round(opts.rate or best * opts.fraction, -1)
        console.rule(f"soak: {rate:,.0f} events/s for {opts.minutes:g} min")
        system = start_system(SystemSpec("soak", "engine", opts.workers), base, work)
        pids = {f"worker-{i + 1}": w.process.pid for i, w in enumerate(system.workers)}
        pids |= {"kafka broker (JVM)": broker.process.pid, "tritonserver (+stubs)": triton.process.pid}
        run = SteadyRun(system, _events(), pids)
        try:
            run.prime()
            samples = run.run(rate, opts.minutes * 60, opts.interval_s, console)
        finally:
            run.close()
            system.stop()
    finally:
        triton.stop()
        broker.stop()
        wipe_broker_data(work)  # gigabytes of records nobody reads again; the broker's log stays
    summary = summarize(samples, opts.warmup_s)
    report: dict[str, Any] = {
        "machine": machine(),
        "broker": broker_setup(BROKER_HEAP_MB),
        "fetch_max_wait_ms": base.kafka.fetch_max_wait_ms,
        "started": started,
        "minutes": opts.minutes,
        "fraction": opts.fraction,
        "max_sustainable": best,
        "rate": rate,
        "workers": opts.workers,
        "interval_s": opts.interval_s,
        "warmup_s": opts.warmup_s,
        "summary": summary,
        "samples": [asdict(s) for s in samples],
    }
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "soak.json").write_text(json.dumps(report, indent=1) + "\n")
    title = f"soak: {rate:,.0f} events/s ({opts.fraction:.0%} of max), {opts.workers} worker(s)"
    write_plot(samples, opts.warmup_s, opts.out / "soak.png", title)
    write_markdown(report, opts.out / "soak.md")
    console.print((opts.out / "soak.md").read_text())
    return 0 if summary["worker_rss_growth_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
