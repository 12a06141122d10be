"""``sie up``: run the local stack, optionally with a demo producer and a live view."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import numpy as np
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from engine.settings import Settings
from ops.embedded import ManagedProcess
from ops.embedded.otelcol_dist import cached_binary
from ops.eventgen import generate, load_profiles
from ops.loadgen import PacedProducer, PredictionMonitor, SendLog, Snapshot
from ops.stack import Stack, StackPorts, start_stack
from ops.supervisor import (
    Child,
    Level,
    Notice,
    Notify,
    RestartPolicy,
    SupervisionError,
    Supervisor,
)
from streams.kafka_config import client_config, consumer_config

MINUTE_S = 60.0  # the demo prints (and reports) each minute's rate and latency
POLL_S = 1.0  # longest pause between two looks at the children (and demo view updates)
BROKER = "Kafka broker"
TRITON = "tritonserver"
COLLECTOR = "otel collector"
_STYLES = {Level.INFO: "cyan", Level.WARNING: "yellow"}


@dataclass(frozen=True)
class UpOptions:
    """What ``sie up`` was asked to do."""

    workers: int = 2
    model_repository: Path = Path("model_repository")
    ports: StackPorts = StackPorts()
    demo_rate: float = 0.0
    event_format: str = "json"  # of the demo's events: json | binary (engine/contract/wire.py)
    malformed_every: int = 200
    duration_s: float | None = None
    report: Path | None = None
    restart_policy: RestartPolicy = RestartPolicy()
    traces: bool = True  # run the OpenTelemetry Collector (where built) and export spans to it
    otlp_forward: str | None = None  # the Collector also sends spans on to this OTLP/HTTP endpoint


def _raise_interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_up(settings: Settings, opts: UpOptions, console: Console) -> int:
    """Start everything, show endpoints (and the demo), stop everything on Ctrl-C/SIGTERM."""
    signal.signal(signal.SIGTERM, _raise_interrupt)
    work_dir = settings.data_dir / "stack"
    started = time.monotonic()
    stack = start_stack(
        settings,
        work_dir,
        opts.model_repository,
        workers=opts.workers,
        ports=opts.ports,
        on_step=lambda msg: console.print(f"[cyan]>[/] {msg}"),
        otelcol=_collector_binary(settings, opts),
        otlp_forward=opts.otlp_forward,
    )
    code = 0
    try:
        console.print(f"[green]stack ready in {time.monotonic() - started:.1f}s[/]")
        console.print(_endpoints(stack))
        console.print(f"logs: {work_dir / 'logs'} and {work_dir}/<worker>.log; Ctrl-C stops everything")
        if stack.collector is not None:
            console.print("where an event's time went: `sie traces`, or `sie traces <event id>`")
        elif opts.traces and not settings.otlp_endpoint:
            console.print(
                "[yellow]![/] traces off: the OpenTelemetry Collector is not built yet "
                "(`sie fetch-otelcol` or `make otelcol` builds it once, with Go)"
            )
        processes = _processes(stack)
        supervisor = supervise(stack, lambda n: _print_notice(console, n, processes), opts.restart_policy)
        if opts.demo_rate > 0:
            _demo(stack, opts, console, supervisor)
        else:
            _wait(supervisor, opts.duration_s)
    except KeyboardInterrupt:
        console.print("[yellow]stopping...[/]")
    except SupervisionError as exc:
        code = 1
        console.print(f"[red]error:[/] {escape(str(exc))}")
        process = _processes(stack).get(exc.child)
        tail = process.log_tail(2000).strip() if process is not None else ""
        if tail:
            console.print(f"last lines of the {exc.child} log:\n{escape(tail)}")
        console.print("[yellow]stopping...[/]")
    finally:
        stack.stop()  # workers drain first, then Triton, then the broker
        console.print("[green]stopped[/]")
    return code


def _collector_binary(settings: Settings, opts: UpOptions) -> Path | None:
    """The Collector to run: None with --no-traces, with an --otlp-endpoint of the user's, or unbuilt."""
    if not opts.traces or settings.otlp_endpoint:
        return None  # spans go straight to the user's endpoint, or nowhere
    return cached_binary()


@dataclass(frozen=True)
class StackChild:
    """One process of the stack as the supervisor sees it (:class:`~ops.supervisor.Child`)."""

    name: str
    process: ManagedProcess
    respawn_with: Callable[[], None]
    probe: Callable[[], bool]

    def exit_code(self) -> int | None:
        """None while it runs, else its return code (negative: the signal that ended it)."""
        return self.process.popen.poll()

    def respawn(self) -> None:
        """Start it again as it was started (same settings, ports and data)."""
        self.respawn_with()

    def ready(self) -> bool:
        """Its readiness probe."""
        return self.probe()


def supervise(stack: Stack, notify: Notify, policy: RestartPolicy | None = None) -> Supervisor:
    """A supervisor restarting the stack's broker (on its data directory), tritonserver and workers."""
    children: list[Child] = []
    if stack.broker is not None:
        broker = stack.broker
        children.append(StackChild(BROKER, broker.process, broker.process.start, broker.ready))
    if stack.triton is not None:
        children.append(StackChild(TRITON, stack.triton.process, stack.triton.respawn, stack.triton.ready))
    if stack.collector is not None:
        c = stack.collector
        children.append(StackChild(COLLECTOR, c.process, c.process.start, c.ready))
    children += [StackChild(w.name, w.process, w.respawn, w.ready) for w in stack.workers]
    return Supervisor(children, policy=policy, clock=time.monotonic, notify=notify)


def _print_notice(console: Console, notice: Notice, processes: dict[str, ManagedProcess]) -> None:
    text = escape(notice.text)
    process = processes.get(notice.child)
    if notice.level is Level.WARNING and process is not None:
        text += f" [dim](log: {escape(str(process.log_path))})[/]"
    console.print(f"[{_STYLES[notice.level]}]![/] {text}")


def _processes(stack: Stack) -> dict[str, ManagedProcess]:
    """Every process of the stack by the name the supervisor gives it."""
    processes = {w.name: w.process for w in stack.workers}
    if stack.triton is not None:
        processes[TRITON] = stack.triton.process
    if stack.broker is not None:
        processes[BROKER] = stack.broker.process
    if stack.collector is not None:
        processes[COLLECTOR] = stack.collector.process
    return processes


def _endpoints(stack: Stack) -> Table:
    table = Table(title="endpoints", show_header=False)
    for name, where in stack.endpoints().items():
        table.add_row(name, where)
    t = stack.settings.topics
    table.add_row("topics", f"{t.events} -> {t.predictions} (dead letters: {t.dlq})")
    return table


def _wait(supervisor: Supervisor, duration_s: float | None) -> None:
    deadline = time.monotonic() + duration_s if duration_s else None
    while deadline is None or time.monotonic() < deadline:
        supervisor.poll()
        pause = supervisor.next_poll_in(POLL_S)
        if deadline is not None:
            pause = min(pause, max(0.0, deadline - time.monotonic()))
        time.sleep(pause)


def _demo(stack: Stack, opts: UpOptions, console: Console, supervisor: Supervisor) -> None:
    settings = stack.settings
    config = client_config(settings.kafka)
    log = SendLog()
    profiles = load_profiles(opts.model_repository, data_rows=True)
    events = generate(profiles, 10**12, seed=int(time.time()), keys=64, fmt=opts.event_format)
    producer = PacedProducer(
        config,
        settings.topics.events,
        events,
        opts.demo_rate,
        log,
        extra_malformed_every=opts.malformed_every,
    )
    monitor = PredictionMonitor(  # the broker keeps earlier runs' outputs: count only this run's
        consumer_config(settings.kafka),
        settings.topics.predictions,
        settings.topics.dlq,
        log,
        from_beginning=False,
    )
    monitor.start()
    producer.start()
    started = time.monotonic()
    deadline = started + opts.duration_s if opts.duration_s else None
    minutes: list[dict[str, float]] = []
    try:
        with Live(_view(monitor.snapshot(), opts, 0.0), console=console, refresh_per_second=2) as live:
            next_view = started + POLL_S
            while deadline is None or time.monotonic() < deadline:
                supervisor.poll()
                now = time.monotonic()
                _close_minutes(monitor, started, now - started, minutes, console)
                if now >= next_view:
                    live.update(_view(monitor.snapshot(), opts, now - started))
                    next_view = now + POLL_S
                time.sleep(min(supervisor.next_poll_in(POLL_S), max(0.0, next_view - time.monotonic())))
    finally:
        producer.stop()
        producer.join(10)
        stopped = time.monotonic() - started
        time.sleep(2.0)  # let the last predictions arrive
        _close_minutes(monitor, started, stopped, minutes, console)  # one that ended as the demo did
        monitor.stop()
        monitor.join(10)
        _summary(monitor, producer, time.monotonic() - started, opts, console, minutes)


def _close_minutes(
    monitor: PredictionMonitor,
    started: float,
    elapsed: float,
    minutes: list[dict[str, float]],
    console: Console,
) -> None:
    """Append (and print) a row for every minute of the demo that ended by ``elapsed`` seconds."""
    while len(minutes) < int(elapsed // MINUTE_S):
        minutes.append(_minute(monitor, started, len(minutes)))
        console.print(_minute_line(minutes[-1]))


def _minute(monitor: PredictionMonitor, started: float, index: int) -> dict[str, float]:
    """Outputs per second and latency percentiles of the ``index``-th minute of the demo."""
    start = started + index * MINUTE_S
    arrived, lat = monitor.window(start, start + MINUTE_S)
    p50, p99 = np.percentile(lat * 1000.0, [50, 99]) if lat.size else (float("nan"),) * 2
    return {
        "minute": index + 1,
        "events_per_s": round(arrived / MINUTE_S, 1),
        "p50_ms": round(float(p50), 2),
        "p99_ms": round(float(p99), 2),
    }


def _minute_line(row: dict[str, float]) -> str:
    return (
        f"minute {row['minute']:.0f}: {row['events_per_s']:,.0f} outputs/s, "
        f"p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms"
    )


def _view(snap: Snapshot, opts: UpOptions, elapsed: float) -> Table:
    table = Table(
        title=f"demo: {opts.demo_rate:.0f} events/s offered, {opts.workers} workers, {elapsed:.0f}s"
    )
    for column in ("produced", "predictions", "dead letters", "predictions/s", "p50 ms", "p95 ms", "p99 ms"):
        table.add_column(column, justify="right")
    table.add_row(
        str(snap.produced),
        str(snap.predictions),
        str(snap.dead_letters),
        f"{snap.predictions_per_s:,.0f}",
        f"{snap.p50_ms:.1f}",
        f"{snap.p95_ms:.1f}",
        f"{snap.p99_ms:.1f}",
    )
    return table


def _summary(
    monitor: PredictionMonitor,
    producer: PacedProducer,
    elapsed: float,
    opts: UpOptions,
    console: Console,
    minutes: list[dict[str, float]],
) -> None:
    lat = np.array(monitor.latencies[len(monitor.latencies) // 10 :]) * 1000.0  # skip warm-up
    p50, p95, p99 = np.percentile(lat, [50, 95, 99]) if lat.size else (float("nan"),) * 3
    summary = {
        "offered_rate": opts.demo_rate,
        "workers": opts.workers,
        "seconds": round(elapsed, 1),
        "produced": producer.produced,
        "predictions": monitor.predictions,
        "dead_letters": monitor.dead_letters,
        "events_per_s": round((monitor.predictions + monitor.dead_letters) / elapsed, 1),
        "p50_ms": round(float(p50), 2),
        "p95_ms": round(float(p95), 2),
        "p99_ms": round(float(p99), 2),
        "per_minute": minutes,
    }
    console.print("summary: " + json.dumps(summary))
    if opts.report:
        opts.report.parent.mkdir(parents=True, exist_ok=True)
        opts.report.write_text(json.dumps(summary, indent=2) + "\n")
