"""``python -m benchmarks.run`` (``sie bench``, ``make bench``): every system in one run.

Starts one tansu broker and one tritonserver, measures Triton alone with
perf_analyzer, then for each system (raw client, pass-through, naive agent,
engine with 1 and 2 workers) sweeps the offered rate from low load to
saturation, times the main systems draining a preloaded backlog, and writes
reports/bench/bench.json, docs/benchmarks-latency.png and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmarks.drain import measure_drain
from benchmarks.perf import PerfPoint, run_perf
from benchmarks.report import machine, write_json, write_markdown, write_plot
from benchmarks.sweep import Level, SweepConfig, Sweeper, max_sustainable, rising_levels
from benchmarks.systems import SYSTEMS, RunningSystem, SystemSpec, start_system
from engine.embedded import (
    BrokerProcess,
    TritonProcess,
    create_topics,
    free_port,
    start_broker,
    start_triton,
)
from engine.eventgen import GeneratedEvent, generate, load_profiles
from engine.settings import Settings
from engine.stack import copy_model_repository

REPO = Path(__file__).resolve().parents[1]
MODEL = "breast_cancer"
SLO_MS = 25.0  # issue 7: p99 at 50% of the engine's max sustainable rate
# The adaptive-vs-fixed comparison runs at an SLO this broker can meet: on tansu even the raw
# client bound's p99 passes 25 ms above about 1,000 events/s (it holds every fetch for its wait).
COMPARE_SLO_MS = 50.0
# tansu slows down as a topic's log grows: the same 1,000/s gave p50 26 -> 43 -> 60 ms in three
# back-to-back levels on one topic and 27-30 ms each on fresh topics, and a full sweep writes
# hundreds of thousands of records. Levels therefore move to fresh topics (and a fresh worker)
# once the input topic holds this many records, and after a saturated level.
FRESH_AFTER_EVENTS = 15_000
# tansu answers every fetch only when its wait expires and spends CPU per partition per fetch
# (measured: 4 partitions x 5 ms waits cost it ~90% of a core at 2k events/s and capped a plain
# confluent-kafka copy loop at ~1.7k/s; 2 partitions x 10 ms carried 10k/s at ~70%).
PARTITIONS = 2
FETCH_WAIT_MS = 10
# Systems timed draining a preloaded backlog (benchmarks/drain.py), and the backlog's size.
DRAIN_SYSTEMS = ("raw client bound", "pass-through bound", "engine, 1 worker", "engine, 2 workers")
DRAIN_EVENTS, DRAIN_EVENTS_QUICK = 60_000, 40_000


@dataclass(frozen=True)
class BenchOptions:
    """Command-line options."""

    quick: bool
    out: Path
    docs: Path
    systems: tuple[str, ...]
    perf: bool
    drain: bool


def parse(argv: Sequence[str] | None) -> BenchOptions:
    """Parse the command line."""
    parser = argparse.ArgumentParser(prog="sie bench", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="shorter levels, fewer systems and batch sizes (~7 min)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "bench")
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks.md")
    kinds = sorted({s.kind for s in SYSTEMS})
    parser.add_argument("--only", nargs="*", default=[], help=f"system kinds to run: {kinds}")
    parser.add_argument("--no-perf", action="store_true", help="skip perf_analyzer")
    parser.add_argument("--no-drain", action="store_true", help="skip draining preloaded backlogs")
    args = parser.parse_args(argv)
    return BenchOptions(
        args.quick, args.out, args.docs, tuple(args.only), not args.no_perf, not args.no_drain
    )


def bench_system(
    spec: SystemSpec, base: Settings, work: Path, config: SweepConfig, console: Console
) -> dict[str, Any]:
    """Start one system, sweep it, stop it."""
    console.rule(spec.name)
    runner = _FreshSystem(spec, base, work, config, console)
    try:
        levels = rising_levels(runner.level, spec.start_rate, config)
        best = max_sustainable(levels)
        half = None
        if spec.kind == "engine":
            console.print(f"  50% of max, on fresh topics ({best / 2:,.0f}/s):")
            half = runner.level(round(best / 2, -1), fresh=True, seconds=config.level_s * 1.5)
    finally:
        runner.stop()
    at_max = max((lv for lv in levels if lv.sustained), key=lambda lv: lv.achieved, default=None)
    within = [lv.achieved for lv in levels if lv.sustained and lv.p99_ms <= COMPARE_SLO_MS]
    return {
        "max_sustainable": best,
        "max_within_slo": max(within, default=0.0),
        "levels": [lv.as_dict() for lv in levels],
        "at_max": at_max.as_dict() if at_max else None,
        "half_load": half.as_dict() if half else None,
    }


def bench_events(seed: int) -> Iterator[GeneratedEvent]:
    """An endless stream of ``MODEL``'s events, the same for every system given the same seed."""
    return generate(load_profiles(REPO / "model_repository", [MODEL]), 10**9, seed=seed, keys=256)


class _FreshSystem:
    """One running instance of a system, started again on fresh topics when asked or when its
    input topic has grown past ``FRESH_AFTER_EVENTS`` (the local broker slows as a topic grows)."""

    def __init__(self, spec: SystemSpec, base: Settings, work: Path, config: SweepConfig, console: Console):
        self._spec, self._base, self._work, self._config, self._console = spec, base, work, config, console
        self._running: tuple[RunningSystem, Sweeper] | None = None

    def level(self, rate: float, fresh: bool = False, seconds: float | None = None) -> Level:
        """Run one level, on fresh topics when ``fresh`` (or the topic is long)."""
        if self._running is None or fresh or self._running[1].sent > FRESH_AFTER_EVENTS:
            self.stop()
            system = start_system(self._spec, self._base, self._work)
            sweeper = Sweeper(
                system, bench_events(seed=1), self._config, lambda msg: self._console.print(f"  {msg}")
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


def targets(systems: dict[str, Any], drains: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Issue 7's targets as measured in this run."""
    drains = drains or {}
    out: list[dict[str, Any]] = []
    eng = systems.get("engine, 1 worker")
    if eng is None:
        return out
    e = eng["max_sustainable"]

    def ratio(name: str, want: float, label: str) -> None:
        other = systems.get(name)
        if other and other["max_sustainable"]:
            r = e / other["max_sustainable"]
            out.append({"target": label, "measured": f"{r:.2f}x", "met": r >= want})

    ratio("pass-through bound", 0.8, "engine (1 worker) >= 0.8 x pass-through bound")
    ratio("naive baseline", 20.0, "engine >= 20 x naive baseline")
    ratio("raw client bound", 0.0, "engine as a fraction of the raw client bound (report only)")
    half: Level | dict[str, Any] | None = eng.get("half_load")
    if isinstance(half, dict):
        raw = systems.get("raw client bound", {}).get("levels", [])
        near = min(raw, key=lambda lv: abs(lv["offered"] - half["offered"]), default=None)
        reference = (
            f" (raw client bound at {near['offered']:,.0f}/s: p99 {near['p99_ms']:.1f} ms)" if near else ""
        )
        out.append(
            {
                "target": f"p99 <= {SLO_MS:.0f} ms at 50% of max sustainable rate",
                "measured": f"{half['p99_ms']:.1f} ms at {half['offered']:,.0f}/s{reference}",
                "met": half["p99_ms"] <= SLO_MS,
            }
        )
    out.append(
        {
            "target": ">= 20,000 events/s per worker, live sweep (load generator on the same cores)",
            "measured": f"{e:,.0f}/s",
            "met": e >= 20_000,
        }
    )
    drained = drains.get("engine, 1 worker")
    if drained:
        raw = drains.get("raw client bound")
        reference = f" (raw client bound {raw['rate']:,.0f}/s)" if raw else ""
        out.append(
            {
                "target": ">= 20,000 events/s per worker, draining a preloaded backlog",
                "measured": f"{drained['rate']:,.0f}/s{reference}",
                "met": drained["rate"] >= 20_000,
            }
        )
    adaptive = next((s for n, s in systems.items() if "adaptive" in n), None)
    fixed = [
        s["max_within_slo"]
        for n, s in systems.items()
        if n.startswith("engine, 1 worker") and "adaptive" not in n
    ]
    if adaptive is not None and fixed:
        best_fixed = max(fixed)
        out.append(
            {
                "target": f"adaptive batching beats every fixed deadline at p99 <= {COMPARE_SLO_MS:.0f} ms",
                "measured": f"{adaptive['max_within_slo']:,.0f}/s vs best fixed {best_fixed:,.0f}/s",
                "met": adaptive["max_within_slo"] > best_fixed,
            }
        )
    return out


def start_servers(
    work: Path, partitions: int, kafka: dict[str, Any] | None = None
) -> tuple[BrokerProcess, TritonProcess, Settings]:
    """tansu and tritonserver (``MODEL`` only) in ``work``, and settings pointing at both.

    ``kafka`` adds Kafka settings to the short session and fetch wait every run uses.
    """
    broker = start_broker(free_port(), work)
    triton = start_triton(
        copy_model_repository(REPO / "model_repository", work),
        work,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        models=[MODEL],
    )
    base = Settings(
        kafka={
            "bootstrap_servers": broker.bootstrap,
            "session_timeout_s": 6.0,
            "fetch_max_wait_ms": FETCH_WAIT_MS,
            **(kafka or {}),
        },
        triton={"url": triton.grpc_url, "http_url": triton.http_url, "default_model": MODEL},
        topics={"partitions": partitions},
        log_level="WARNING",
    )
    return broker, triton, base


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write the reports."""
    opts = parse(argv)
    console = Console()
    started, t0 = time.strftime("%Y-%m-%d %H:%M"), time.monotonic()
    config = SweepConfig(level_s=3.0, factor=2.0) if opts.quick else SweepConfig()
    work = (opts.out / "work").resolve()
    work.mkdir(parents=True, exist_ok=True)
    console.print("[cyan]>[/] starting tansu and tritonserver")
    broker, triton, base = start_servers(work, PARTITIONS, {"heartbeat_interval_s": 0.5})
    create_topics(broker.bootstrap, {"bench-warmup": 1})
    report: dict[str, Any] = {"machine": machine(), "started": started, "quick": opts.quick, "model": MODEL}
    report |= {"partitions": base.topics.partitions, "systems": {}, "triton_bound": [], "notes": []}
    report["compare_slo_ms"] = COMPARE_SLO_MS
    report["notes"] = [
        f"- Each system's levels move to fresh topics and a freshly started system once its input topic "
        f"holds {FRESH_AFTER_EVENTS:,} records, and after a saturated level: the local broker (tansu, in "
        "memory) slows down as a topic's log grows (the same 1,000 events/s gave p50 26, 43, 60 ms in "
        "three back-to-back levels on one topic, 27-30 ms on fresh ones).",
        "- Drain: the events are written to fresh topics first, then the system starts; its rate is "
        "taken from the timestamps of the middle 80% of its outputs, so start-up and the load generator "
        "are outside the measured window (the live sweep shares the two cores with the load generator).",
        "- Max sustainable: the highest achieved rate among levels that kept up (achieved >= 95% of "
        "offered). The first level that fails to keep up runs once more on fresh topics; when it fails "
        "again, one more level runs at 90% of what it achieved.",
        f"- The 50% level runs on fresh topics for {config.level_s * 1.5:.1f} s. The adaptive system's "
        f"SLO is {COMPARE_SLO_MS:.0f} ms: tansu holds every fetch for its full wait, so p99 <= "
        f"{SLO_MS:.0f} ms is out of reach for every system here beyond low rates, the raw client included.",
    ]
    sample = next(generate(load_profiles(REPO / "model_repository", [MODEL]), 1))
    report["event_bytes"] = len(sample.value)
    try:
        if opts.perf:
            report["triton_bound"] = [p.as_dict() for p in _perf(triton.grpc_url, work, opts.quick, console)]
        for spec in SYSTEMS:
            if opts.systems and spec.kind not in opts.systems or opts.quick and not spec.quick:
                continue
            report["systems"][spec.name] = bench_system(spec, base, work, config, console)
        if opts.drain:
            report["drain"] = _drains(opts, base, work, console)
    finally:
        triton.stop()
        broker.stop()
    report["targets"] = targets(report["systems"], report.get("drain"))
    report["seconds"] = time.monotonic() - t0
    json_path, plot = opts.out / "bench.json", opts.docs.parent / "benchmarks-latency.png"
    write_json(report, json_path)
    write_plot(report, plot)
    write_markdown(
        report, opts.docs, plot, json_path.relative_to(REPO) if json_path.is_relative_to(REPO) else json_path
    )
    console.print(f"[green]wrote[/] {json_path}, {plot}, {opts.docs} in {report['seconds']:.0f}s")
    for t in report["targets"]:
        console.print(f"  {'ok ' if t['met'] else 'NO '} {t['target']}: {t['measured']}")
    return 0


def _drains(opts: BenchOptions, base: Settings, work: Path, console: Console) -> dict[str, Any]:
    n = DRAIN_EVENTS_QUICK if opts.quick else DRAIN_EVENTS
    console.rule(f"Draining a preloaded backlog of {n:,} events")
    out = {}
    for spec in SYSTEMS:
        if spec.name not in DRAIN_SYSTEMS or opts.systems and spec.kind not in opts.systems:
            continue
        drain = measure_drain(
            spec, base, work, bench_events(seed=2), n, lambda msg: console.print(f"  {msg}")
        )
        out[spec.name] = drain.as_dict()
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
