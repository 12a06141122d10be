"""Where a draining worker spends its time: py-spy samples of ``sie worker`` emptying a backlog.

``python -m benchmarks.profile [--events N] [--format json|binary]`` starts a
local Apache Kafka and tritonserver, preloads a backlog, starts one worker and,
once the first outputs arrive, samples it with ``py-spy record`` (the ``bench``
extra) until the backlog is drained. It writes the collapsed stacks and a
summary - the share of samples in each of our functions and in each library,
inclusive and self - to ``reports/profile/`` and prints the summary, beside
the drain's rate and worker CPU per event.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

from benchmarks.drain import CpuWindow, drain_rate, preload, process_cpu_s, read_outputs
from benchmarks.report import put_section
from benchmarks.run import REPO, bench_events, start_servers, wipe_broker_data
from benchmarks.systems import SYSTEMS, fresh_settings, metric_totals, start_system

OWN_PACKAGES = ("engine/", "streams/", "inference/", "models/", "observability/", "ops/")


# Stages of an event's way through a worker, by a frame that marks them (first match wins, in order).
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Kafka fetch (librdkafka's consumer thread: consume, buffer)", ("GroupConsumer._", "group_consumer.py")),
    ("producing outputs (confluent-kafka, delivery callbacks)", ("KafkaSink.", "_Delivery.")),
    ("Triton client (tritonclient, gRPC)", ("TritonBackend.infer", "grpc/")),
    ("decoding events", ("decode_many", "Pipeline._decode")),
    ("encoding predictions and dead letters", ("Outcomes._outputs", "Outcomes.dead")),
    ("acknowledging: metrics, positions, completions", ("Outcomes._sent", "positions.py", "Completion.")),
    ("batching and dispatch", ("MicroBatcher.", "Pipeline._dispatch", "Pipeline._infer", "stacked_inputs")),
    ("records from Kafka (to_raw, chunks)", ("batch_handler", "EngineConsumer.", "to_raw")),
    ("event loop and threads (asyncio, mode)", ("asyncio/", "mode/", "threading.py", "selectors.py")),
)


def samples(collapsed: str) -> Iterator[tuple[list[str], int]]:
    """(frames, root first; count) of each line of py-spy's collapsed stacks (``a;b;c count``)."""
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            yield stack.split(";"), int(count)


def stages(collapsed: str) -> list[tuple[str, float]]:
    """Share of samples per stage of :data:`STAGES` (and "other"), largest first."""
    counts: Counter[str] = Counter()
    for frames, n in samples(collapsed):
        name = next((stage for stage, marks in STAGES if any(m in f for f in frames for m in marks)), "other")
        counts[name] += n
    total = sum(counts.values())
    return [(name, n / total) for name, n in counts.most_common()] if total else []


def summarize(collapsed: str, top: int = 40) -> str:
    """Inclusive and self shares of frames in py-spy's collapsed stacks (``a;b;c count`` lines)."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for raw_frames, n in samples(collapsed):
        total += n
        frames = [_short(f) for f in raw_frames]
        for frame in set(frames):
            inclusive[frame] += n
        own[frames[-1]] += n
    if not total:
        return "no samples\n"
    lines = [f"{total} samples", "", "by stage:"]
    lines += [f"  {100 * share:5.1f}%  {name}" for name, share in stages(collapsed)]
    lines += ["", "inclusive (ours):"]
    ours = [(f, n) for f, n in inclusive.most_common() if any(p in f for p in OWN_PACKAGES)]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in ours[:top]]
    lines += ["", "self (any):"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    return "\n".join(lines) + "\n"


def _short(frame: str) -> str:
    """``func (path/to/site-packages/pkg/mod.py:12)`` -> ``func (pkg/mod.py)``."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", str(REPO) + "/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})"


def main(argv: Sequence[str] | None = None) -> int:
    """Profile one worker draining a backlog; write and print the summary."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--format", choices=("json", "binary"), default="json")
    parser.add_argument("--system", default="engine, 1 worker", help="a system name of benchmarks/systems.py")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "profile")
    parser.add_argument(
        "--docs",
        type=Path,
        default=None,
        help="also put the stage shares in this Markdown file (a kept section)",
    )
    a = parser.parse_args(argv)
    beside = Path(sys.executable).parent / "py-spy"
    spy = shutil.which("py-spy") or (str(beside) if beside.exists() else None)
    if spy is None:
        raise SystemExit("py-spy is not installed: pip install -e '.[bench]'")
    work = (a.out / "work").resolve()
    work.mkdir(parents=True, exist_ok=True)
    spec = next(s for s in SYSTEMS if s.name == a.system)
    broker, triton, base = start_servers(work, base_partitions())
    try:
        settings = fresh_settings(base, spec, work)
        preload(settings, bench_events(seed=2, fmt=a.format), a.events)
        system = start_system(spec, base, work, settings)
        window = CpuWindow(a.events, lambda: process_cpu_s(system.pids()))
        try:
            read_outputs(settings, max(a.events // 100, 1), 120, system.alive)  # started and serving
            pid = system.pids()[0]
            collapsed = a.out / f"{a.format}.collapsed.txt"
            record = subprocess.Popen(
                [
                    spy,
                    "record",
                    "--pid",
                    str(pid),
                    "--format",
                    "raw",
                    "--rate",
                    "250",
                    "--nonblocking",
                    "--output",
                    str(collapsed),
                    "--duration",
                    "600",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            started = time.monotonic()
            stamps = read_outputs(settings, a.events, 300, system.alive, window)
            record.send_signal(2)  # SIGINT: py-spy writes what it has and exits
            record.wait(30)
            batches = mean_batch_size([w.metrics_url for w in system.workers])
        finally:
            system.stop()
    finally:
        triton.stop()
        broker.stop()
        wipe_broker_data(work)
    rate, _ = drain_rate(stamps)
    cpu = window.us_per_event()
    head = (
        f"{a.system}, {a.format} events: {len(stamps):,}/{a.events:,} drained (sampled for "
        f"{time.monotonic() - started:.1f} s), {rate:,.0f} events/s, {cpu} µs worker CPU/event, "
        f"{batches} events per Triton request on average\n\n"
    )
    summary = head + summarize(collapsed.read_text() if collapsed.exists() else "")
    (a.out / f"{a.format}.summary.txt").write_text(summary)
    print(summary)
    if a.docs is not None:
        put_section(
            a.docs,
            f"profile-{a.format}",
            stage_table(head, collapsed.read_text() if collapsed.exists() else ""),
        )
    return 0


def stage_table(head: str, collapsed: str) -> str:
    """The Markdown section: the run's headline and each stage's share of the samples."""
    lines = [
        "## Where a draining worker's time goes",
        "",
        "`python -m benchmarks.profile --docs docs/benchmarks.md` (py-spy, 250 samples/s, every "
        f"thread): {head.strip()}",
        "",
        "| stage | share of samples |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {100 * share:.1f}% |" for name, share in stages(collapsed)]
    return "\n".join(lines)


def mean_batch_size(metrics_urls: list[str]) -> str:
    """Events per Triton request over the workers' lifetimes (``sie_batch_size_events`` sum / count)."""
    totals = metric_totals(metrics_urls, timeout=5)
    count = totals.get("sie_batch_size_events_count", 0.0)
    return f"{totals.get('sie_batch_size_events_sum', 0.0) / count:.0f}" if count else "unknown"


def base_partitions() -> int:
    """The engine's default partition count (what the benchmark uses)."""
    from engine.settings import TopicSettings

    return TopicSettings().partitions


if __name__ == "__main__":
    raise SystemExit(main())
