"""The soak's summary, plot and Markdown (benchmarks/soak.py runs it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import broker_line

RSS_GROWTH_TARGET = 0.10


@dataclass(frozen=True)
class Sample:
    """One interval of the steady phase."""

    t_s: float
    rss_mib: dict[str, float]
    answered_per_s: float
    p50_ms: float
    p99_ms: float
    lag: int
    worker: dict[str, float]  # summed over workers: consumed, predictions, pending, consumer lag


def summarize(samples: list[Sample], warmup_s: float) -> dict[str, Any]:
    """RSS growth per process after warm-up, latency and lag figures."""
    steady = [s for s in samples if s.t_s >= warmup_s] or samples
    first, last = steady[: max(len(steady) // 10, 1)], steady[-max(len(steady) // 10, 1) :]
    growth: dict[str, dict[str, float | None]] = {}
    for name in samples[0].rss_mib:
        before = float(np.mean([s.rss_mib[name] for s in first]))
        after = float(np.mean([s.rss_mib[name] for s in last]))
        growth[name] = {"after_warmup_mib": round(before, 1), "at_end_mib": round(after, 1)}
        growth[name]["growth"] = round((after - before) / before, 4) if before else None
        growth[name]["slope_mib_per_min"] = rss_slope([(s.t_s, s.rss_mib[name]) for s in steady])
    p99s = [s.p99_ms for s in steady if not np.isnan(s.p99_ms)]
    workers = [g for n, gs in growth.items() if n.startswith("worker") and (g := gs["growth"]) is not None]
    slopes = [
        v for n, gs in growth.items() if n.startswith("worker") and (v := gs["slope_mib_per_min"]) is not None
    ]
    return {
        "rss": growth,
        "worker_rss_growth_max": max(workers, default=None),
        "worker_rss_slope_mib_per_min_max": max(slopes, default=None),
        "worker_rss_growth_ok": bool(workers) and max(workers) < RSS_GROWTH_TARGET,
        "p99_ms_median_of_intervals": round(float(np.median(p99s)), 1) if p99s else None,
        "p99_ms_worst_interval": round(max(p99s), 1) if p99s else None,
        "lag_max": max(s.lag for s in steady),
        "lag_at_end": steady[-1].lag,
        "answered_per_s_mean": round(float(np.mean([s.answered_per_s for s in steady])), 1),
    }


def rss_slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MiB) points, in MiB per minute (None under 3 points)."""
    if len(points) < 3:
        return None
    t, mib = np.array(points, dtype=np.float64).T
    return round(float(np.polyfit(t / 60.0, mib, 1)[0]), 3)


def write_plot(samples: list[Sample], warmup_s: float, path: Path, title: str) -> None:
    """RSS per process, p50/p99 and lag against time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s.t_s / 60 for s in samples]
    fig, (ax_rss, ax_lat, ax_lag) = plt.subplots(3, 1, figsize=(11, 10), sharex=True)
    for name in samples[0].rss_mib:
        ax_rss.plot(t, [s.rss_mib[name] for s in samples], label=name)
    ax_rss.set(ylabel="RSS (MiB)", title=title)
    ax_lat.plot(t, [s.p50_ms for s in samples], label="p50")
    ax_lat.plot(t, [s.p99_ms for s in samples], label="p99")
    ax_lat.set(ylabel="end-to-end latency (ms)", yscale="log")
    ax_lag.plot(t, [s.lag for s in samples], label="events produced, not answered")
    ax_lag.plot(
        t,
        [s.worker.get("consumer_lag", 0.0) for s in samples],
        label="behind the workers' committed offsets (sie_consumer_lag)",
    )
    ax_lag.set(ylabel="lag (events)", xlabel="minutes")
    for ax in (ax_rss, ax_lat, ax_lag):
        ax.axvline(warmup_s / 60, color="grey", linestyle=":", label="end of warm-up")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_markdown(report: dict[str, Any], path: Path) -> None:
    """A short human summary next to the JSON and the plot."""
    s, m = report["summary"], report["machine"]
    lines = [
        "# Soak run",
        "",
        f"{report['minutes']:g} min at {report['rate']:,.0f} events/s "
        f"({report['fraction']:.0%} of max sustainable {report['max_sustainable']:,.0f}/s), "
        f"{report['workers']} worker(s); {m['cores']} cores, {m['cpu']}, commit `{m['commit']}`, "
        f"started {report['started']}. Plot: soak.png.",
        "",
        broker_line(report["broker"]) + " Its RSS follows the JVM heap (from -Xms up to -Xmx) and the "
        "log segments it maps, so it is reported but not judged.",
        "",
        "| process | RSS after warm-up (MiB) | RSS at end (MiB) | growth | slope after warm-up (MiB/min) |",
        "|---|---|---|---|---|",
    ]
    for name, g in s["rss"].items():
        growth = "n/a" if g["growth"] is None else f"{g['growth']:+.1%}"
        slope = "n/a" if g["slope_mib_per_min"] is None else f"{g['slope_mib_per_min']:+.2f}"
        lines.append(f"| {name} | {g['after_warmup_mib']} | {g['at_end_mib']} | {growth} | {slope} |")
    verdict = "met" if s["worker_rss_growth_ok"] else "NOT met"
    lines += [
        "",
        f"Worker RSS growth after warm-up under {RSS_GROWTH_TARGET:.0%}: **{verdict}** (steepest worker "
        f"slope {s['worker_rss_slope_mib_per_min_max']} MiB/min).",
        f"p99 per {report['interval_s']:g} s interval: median {s['p99_ms_median_of_intervals']} ms, "
        f"worst {s['p99_ms_worst_interval']} ms. Lag: max {s['lag_max']:,}, at end {s['lag_at_end']:,}. "
        f"Answered {s['answered_per_s_mean']:,} events/s on average.",
    ]
    path.write_text("\n".join(lines) + "\n")
