"""Issues 7 and 15's targets, as measured in one benchmark run (rows of the report's Targets table)."""

from __future__ import annotations

from typing import Any

from benchmarks.systems import SLO_MS


def targets(systems: dict[str, Any], drains: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Rows ``{"target", "measured", "met"}`` from the systems' sweeps and the drains."""
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
    half = eng.get("half_load")
    if isinstance(half, dict):
        out.append(
            {
                "target": f"p99 <= {SLO_MS:.0f} ms at 50% of max sustainable rate",
                "measured": f"{half['p99_ms']:.1f} ms at {half['offered']:,.0f}/s"
                + _raw_reference(systems.get("raw client bound"), half["offered"]),
                "met": bool(half["p99_ms"] <= SLO_MS),
            }
        )
    out.append(
        {
            "target": ">= 20,000 events/s per worker, live sweep (load generator on the same cores)",
            "measured": f"{e:,.0f}/s",
            "met": e >= 20_000,
        }
    )
    out += drain_targets(drains)
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
                "target": f"adaptive batching beats every fixed deadline at p99 <= {SLO_MS:.0f} ms",
                "measured": f"{adaptive['max_within_slo']:,.0f}/s vs best fixed {best_fixed:,.0f}/s",
                "met": adaptive["max_within_slo"] > best_fixed,
            }
        )
    return out


def _raw_reference(raw: dict[str, Any] | None, engine_rate: float) -> str:
    """The raw client bound's p99 at 50% of its own maximum, or else at its level nearest ``engine_rate``."""
    if not raw:
        return ""
    half = raw.get("half_load")
    if isinstance(half, dict):
        return f" (raw client bound at 50% of its max, {half['offered']:,.0f}/s: p99 {half['p99_ms']:.1f} ms)"
    near = min(raw.get("levels", []), key=lambda lv: abs(lv["offered"] - engine_rate), default=None)
    return f" (raw client bound at {near['offered']:,.0f}/s: p99 {near['p99_ms']:.1f} ms)" if near else ""


# Issue 15: per-worker drain rate and worker CPU per event, by event format.
DRAIN_TARGETS = {"binary": (50_000.0, 15.0), "json": (40_000.0, 22.0)}


def drain_targets(drains: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows for the drains: rate and CPU per event by format, engine against pass-through and raw."""
    out: list[dict[str, Any]] = []
    raw = drains.get("raw client bound")
    for fmt, (rate, cpu) in DRAIN_TARGETS.items():
        d = drains.get("engine, 1 worker" if fmt == "json" else f"engine, 1 worker | {fmt}")
        if not d:
            continue
        used = d.get("cpu_us_per_event")
        out.append(
            {
                "target": f">= {rate:,.0f} {fmt} events/s per worker, draining a preloaded backlog",
                "measured": f"{d['rate']:,.0f}/s",
                "met": d["rate"] >= rate,
            }
        )
        out.append(
            {
                "target": f"<= {cpu:.0f} µs worker CPU per {fmt} event (drain)",
                "measured": f"{used:.1f} µs" if used is not None else "not measured",
                "met": used is not None and used <= cpu,
            }
        )
    eng, passthrough = drains.get("engine, 1 worker"), drains.get("pass-through bound")
    if eng and passthrough and passthrough["rate"]:
        r = eng["rate"] / passthrough["rate"]
        out.append(
            {"target": "engine >= 0.8 x pass-through (drain, JSON)", "measured": f"{r:.2f}x", "met": r >= 0.8}
        )
    if eng and raw and raw["rate"]:
        r = eng["rate"] / raw["rate"]
        out.append(
            {
                "target": "engine >= 0.3 x the raw confluent loop (drain, JSON)",
                "measured": f"{r:.2f}x ({raw['rate']:,.0f}/s)",
                "met": r >= 0.3,
            }
        )
    return out
