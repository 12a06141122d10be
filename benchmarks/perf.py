"""The Triton bound: Triton's own ``perf_analyzer`` on the same model and batch sizes.

The real binary ships in the ``tritonclient==2.51.0`` wheel (``bin/perf_analyzer``
in the venv). It links ``libb64.so.0d`` and ``libcudart.so.12``; the
``nvidia-pytriton`` wheel carries both under mangled names
(``libb64-<hash>.so.0d``), so a private folder of symlinks with the plain names
goes on ``LD_LIBRARY_PATH``.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from ops.embedded import child_env, find_tritonserver

NEEDED = {"libb64.so.0d": "libb64-*.so.0d", "libcudart.so.12": "libcudart-*.so.12*"}


@dataclass(frozen=True)
class PerfPoint:
    """perf_analyzer's figures at one batch size."""

    batch: int
    concurrency: int
    inferences_per_s: float
    p50_ms: float
    p99_ms: float

    def as_dict(self) -> dict[str, float]:
        """JSON-ready."""
        return asdict(self)


def find_perf_analyzer() -> Path:
    """The binary beside this interpreter (installed by the tritonclient wheel)."""
    candidate = Path(sys.executable).parent / "perf_analyzer"
    found = candidate if candidate.is_file() else shutil.which("perf_analyzer")
    if not found:
        raise FileNotFoundError("perf_analyzer not found: pip install tritonclient[grpc]==2.51.0")
    return Path(found)


def library_dir(work_dir: Path) -> Path:
    """A folder of symlinks giving the wheel's mangled libraries their plain names."""
    libs = find_tritonserver().libs_dir
    target = work_dir / "perf_analyzer_libs"
    target.mkdir(parents=True, exist_ok=True)
    for name, pattern in NEEDED.items():
        matches = sorted(libs.glob(pattern))
        if not matches:
            raise FileNotFoundError(f"{pattern} not in {libs}")
        link = target / name
        if not link.exists():
            link.symlink_to(matches[0])
    return target


def run_perf(
    grpc_url: str,
    model: str,
    batch: int,
    concurrency: int,
    work_dir: Path,
    interval_ms: int = 2000,
    shape: str | None = None,
) -> PerfPoint:
    """One perf_analyzer measurement (gRPC, fixed concurrency).

    ``shape`` (``input:dims``, e.g. ``sequence:32``) fixes a variable-length input's dims.
    """
    out = work_dir / f"perf-{model}-b{batch}-c{concurrency}.csv"
    argv = [
        str(find_perf_analyzer()),
        *("-m", model, "-u", grpc_url, "-i", "grpc", "-b", str(batch)),
        *("--concurrency-range", str(concurrency), "--measurement-interval", str(interval_ms)),
        *("--percentile", "99", "-s", "100", "-r", "6", "-f", str(out)),
        *(("--shape", shape) if shape else ()),
    ]
    env = child_env(ld_library_prepend=[library_dir(work_dir)])
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180)
    if done.returncode != 0:
        raise RuntimeError(
            f"perf_analyzer failed ({done.returncode}): {done.stderr[-1500:]}{done.stdout[-1500:]}"
        )
    with out.open() as fh:
        row = next(csv.DictReader(fh))
    return PerfPoint(
        batch=batch,
        concurrency=concurrency,
        inferences_per_s=float(row["Inferences/Second"]),
        p50_ms=float(row["p50 latency"]) / 1000.0,
        p99_ms=float(row["p99 latency"]) / 1000.0,
    )
