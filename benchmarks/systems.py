"""The systems under test, each started as real processes against a shared broker and Triton."""

from __future__ import annotations

import sys
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engine.settings import Settings
from ops.embedded import ManagedProcess, child_env, create_topics
from ops.stack import WorkerProcess, settings_env, start_worker, worker_settings

SLO_MS = 25.0  # issue 7: p99 at 50% of the engine's max sustainable rate; the adaptive system's target


@dataclass(frozen=True)
class SystemSpec:
    """One line of the report: how to start it and where its sweep starts."""

    name: str
    kind: str  # engine | passthrough | naive | raw
    workers: int = 1
    start_rate: float = 1000.0
    delay_ms: float | None = None  # fixed micro-batch deadline (None: the settings default)
    adaptive: bool = False
    slo_ms: float = SLO_MS  # the adaptive controller's p99 target
    quick: bool = True  # part of --quick runs
    event_format: str = "json"  # of the events it is offered: json | binary (engine/contract/binary_input.py)
    exactly_once: bool = False  # SIE_KAFKA__PROCESSING_GUARANTEE=exactly_once (docs/exactly-once.md)


SYSTEMS = (
    SystemSpec("raw client bound", "raw"),
    SystemSpec("pass-through bound", "passthrough"),
    SystemSpec("naive baseline", "naive", start_rate=50.0),
    SystemSpec("engine, 1 worker", "engine", 1),
    SystemSpec("engine, 2 workers", "engine", 2),
    SystemSpec("engine, 1 worker, binary events", "engine", 1, event_format="binary"),
    SystemSpec(f"engine, 1 worker, adaptive (SLO {SLO_MS:.0f} ms)", "engine", 1, adaptive=True),
    SystemSpec("engine, 1 worker, fixed 1 ms deadline", "engine", 1, delay_ms=1.0, quick=False),
    SystemSpec("engine, 1 worker, fixed 20 ms deadline", "engine", 1, delay_ms=20.0, quick=False),
)


@dataclass
class RunningSystem:
    """Processes of one system and the settings (topics) they use."""

    spec: SystemSpec
    settings: Settings
    processes: list[ManagedProcess] = field(default_factory=list)
    workers: list[WorkerProcess] = field(default_factory=list)

    def alive(self) -> bool:
        """Whether every process still runs."""
        return all(p.alive for p in self.processes) and all(w.process.alive for w in self.workers)

    def pids(self) -> list[int]:
        """Process ids of the system under test (its workers, or its one process)."""
        return [p.pid for p in self.processes] + [w.process.pid for w in self.workers]

    def log_tail(self) -> str:
        """Log tails of every process (for errors)."""
        procs = self.processes + [w.process for w in self.workers]
        return "\n".join(f"--- {p.name}\n{p.log_tail(1500)}" for p in procs)

    def stop(self) -> None:
        """Stop everything (SIGTERM, then SIGKILL)."""
        for w in self.workers:
            w.stop(timeout=20)
        for p in self.processes:
            p.stop(timeout=10)


def metric_totals(urls: Sequence[str], timeout: float = 2.0) -> dict[str, float]:
    """Every metric's samples summed over labels and over the endpoints at ``urls`` (one that
    does not answer counts nothing)."""
    totals: dict[str, float] = defaultdict(float)
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                text = response.read().decode()
        except OSError:
            continue
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name = line.split("{", 1)[0].split(" ", 1)[0]
                totals[name] += float(line.rsplit(" ", 1)[1])
    return dict(totals)


def fresh_settings(base: Settings, spec: SystemSpec, work_dir: Path) -> Settings:
    """``base`` with fresh topics and group for ``spec``; creates the topics."""
    adaptive = ("a" if spec.adaptive else "") + ("x" if spec.exactly_once else "")
    tag = f"{spec.kind}{spec.workers}{adaptive}{spec.event_format[0]}-{uuid.uuid4().hex[:6]}"
    guarantee = "exactly_once" if spec.exactly_once else base.kafka.processing_guarantee
    settings = base.model_copy(
        update={
            "topics": base.topics.model_copy(
                update={
                    "events": f"bench-{tag}",
                    "predictions": f"bench-{tag}.out",
                    "dlq": f"bench-{tag}.dlq",
                }
            ),
            "kafka": base.kafka.model_copy(
                update={"group_id": f"bench-{tag}", "processing_guarantee": guarantee}
            ),
            "triton": base.triton.model_copy(update={"identity": spec.kind == "passthrough"}),
            "batch": base.batch.model_copy(
                update={"adaptive": spec.adaptive, "slo_ms": spec.slo_ms}
                | ({"max_delay_ms": spec.delay_ms} if spec.delay_ms is not None else {})
            ),
            "worker_name": f"bench-{tag}",
            "data_dir": work_dir / tag,
        }
    )
    t = settings.topics
    create_topics(
        settings.kafka.bootstrap_servers, {n: t.partitions for n in (t.events, t.predictions, t.dlq)}
    )
    return settings


def start_system(
    spec: SystemSpec, base: Settings, work_dir: Path, settings: Settings | None = None
) -> RunningSystem:
    """Start ``spec``'s processes (not waiting: the sweep primes the pipeline first).

    ``settings`` (from ``fresh_settings``) when its topics already exist, else fresh ones.
    """
    settings = settings or fresh_settings(base, spec, work_dir)
    running = RunningSystem(spec, settings)
    if spec.kind in ("engine", "passthrough"):
        for i in range(spec.workers):
            ws = worker_settings(settings, i + 1, work_dir)
            running.workers.append(start_worker(ws, work_dir, ws.worker_name))
    else:
        module = {"naive": "benchmarks.naive_agent", "raw": "benchmarks.raw_client"}[spec.kind]
        repo_root = Path(__file__).resolve().parents[1]
        env = child_env(settings_env(settings) | {"PYTHONPATH": str(repo_root)})
        running.processes.append(
            ManagedProcess(
                name=f"{spec.kind}-{settings.worker_name}",
                argv=(sys.executable, "-m", module),
                env=env,
                log_path=work_dir.resolve() / f"{settings.worker_name}.log",
            )
        )
    return running
