"""``sie up`` supervises its processes: a killed worker and a killed tritonserver come back.

``sie up --workers 2`` runs as a subprocess on free ports with its data in a
temporary directory. While events stream in at a steady rate, one worker and
later tritonserver are killed with SIGKILL. The supervisor restarts each (same
consumer group and metrics port; same Triton ports and model repository) and
says so with the exit status; the broker keeps its pid throughout; every event
is answered; SIGINT then stops everything, exit code 0, nothing left behind.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.settings import Settings
from ops.embedded import child_env, free_port
from ops.stack import port_is_free
from tests.chaos.harness import SteadyProducer, account, caught_up_at, longest_stall, write_report
from tests.chaos.test_worker_kill import uncommitted_window
from tests.integration.conftest import MODEL_REPOSITORY, REPO

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

EVENTS = 40_000
RATE = 1_000  # events/s: the stream lasts ~40 s
SESSION_TIMEOUT_S = 6.0  # the killed worker's partitions move on after this
START_TIMEOUT_S = 240.0
RESTART_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 120.0
WORKER = "sie-worker-1"


class Output(threading.Thread):
    """Reads ``sie up``'s combined output into timestamped lines."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        super().__init__(name="sie-up-output", daemon=True)
        self._proc = proc
        self._lock = threading.Lock()
        self.lines: list[tuple[float, str]] = []

    def run(self) -> None:
        assert self._proc.stdout is not None
        for raw in self._proc.stdout:
            with self._lock:
                self.lines.append((time.time(), raw.decode(errors="replace").rstrip()))

    @property
    def text(self) -> str:
        with self._lock:
            return "\n".join(line for _, line in self.lines)

    def nth(self, pattern: str, n: int, timeout: float) -> tuple[float, str]:
        """The ``n``-th line matching ``pattern`` (its time, the line); fails after ``timeout``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                found = [(t, line) for t, line in self.lines if regex.search(line)]
            if len(found) >= n:
                return found[n - 1]
            time.sleep(0.1)
        pytest.fail(f"fewer than {n} lines matching {pattern!r} after {timeout:.0f}s:\n{self.text[-5000:]}")

    def wait_for(self, pattern: str, timeout: float) -> tuple[float, str]:
        """The first line matching ``pattern`` (its time, the line); fails on exit or timeout."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                found = next(((t, line) for t, line in self.lines if regex.search(line)), None)
            if found is not None:
                return found
            if self._proc.poll() is not None:
                time.sleep(0.5)  # the last lines
                code = self._proc.returncode
                pytest.fail(f"sie up exited ({code}) before {pattern!r}:\n{self.text[-5000:]}")
            time.sleep(0.1)
        pytest.fail(f"no line matching {pattern!r} after {timeout:.0f}s:\n{self.text[-5000:]}")


def _first_metrics_port() -> int:
    """A port free together with the next one (the two workers' metrics ports)."""
    while True:
        port = free_port()
        if port < 65535 and port_is_free(port + 1):
            return port


def stack_processes(data_dir: Path) -> dict[int, str]:
    """pid -> role of every process running in or from ``data_dir`` (``sie up``'s children)."""
    marker = str(data_dir)
    found: dict[int, str] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = os.readlink(proc / "cwd")
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            environ = (proc / "environ").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if not (cwd.startswith(marker) or any(marker in a for a in argv)):
            continue
        found[int(proc.name)] = _role(argv, environ)
    return found


def _role(argv: list[str], environ: list[str]) -> str:
    if "kafka.Kafka" in argv:
        return "kafka"
    if argv[0].endswith("/tritonserver"):
        return "tritonserver"
    if argv[0].endswith("triton_python_backend_stub"):
        return "stub"
    if "ops.cli" in argv and "worker" in argv:
        name = next((e.split("=", 1)[1] for e in environ if e.startswith("SIE_WORKER_NAME=")), "?")
        return f"worker {name}"
    return "other " + " ".join(argv)[:200]


def pid_of(data_dir: Path, role: str) -> int:
    pids = [pid for pid, r in stack_processes(data_dir).items() if r == role]
    assert len(pids) == 1, (role, stack_processes(data_dir))
    return pids[0]


def _kill_all(data_dir: Path) -> None:
    for pid in stack_processes(data_dir):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue


def _gone(data_dir: Path, timeout: float = 15.0) -> dict[int, str]:
    """What still runs from ``data_dir`` after up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    left = stack_processes(data_dir)
    while left and time.monotonic() < deadline:
        time.sleep(0.25)
        left = stack_processes(data_dir)
    return left


@dataclass
class Up:
    """A running ``sie up`` subprocess and what the test reads of it."""

    proc: subprocess.Popen[bytes]
    output: Output
    data_dir: Path
    bootstrap: str


def launch_up(tmp_path: Path) -> Up:
    """``sie up --workers 2`` on free ports with its data under ``tmp_path``."""
    data_dir = tmp_path / "sie"
    kafka_port = free_port()
    argv = [
        sys.executable, "-m", "ops.cli", "up", "--workers", "2",
        "--model-repository", str(MODEL_REPOSITORY),
        "--kafka-port", str(kafka_port),
        "--kafka-controller-port", str(free_port()),
        "--triton-http-port", str(free_port()),
        "--triton-grpc-port", str(free_port()),
        "--triton-metrics-port", str(free_port()),
        "--metrics-port", str(_first_metrics_port()),
        "--otlp-http-port", str(free_port()),  # the Collector, where built
        "--otlp-grpc-port", str(free_port()),
    ]  # fmt: skip
    env = child_env(
        {
            "SIE_DATA_DIR": str(data_dir),
            "SIE_KAFKA__SESSION_TIMEOUT_S": str(SESSION_TIMEOUT_S),
            "SIE_KAFKA__HEARTBEAT_INTERVAL_S": "0.5",
            "COLUMNS": "250",  # rich wraps its non-terminal output at this width
            "PYTHONUNBUFFERED": "1",
        }
    )
    up = subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = Output(up)
    output.start()
    return Up(up, output, data_dir, f"127.0.0.1:{kafka_port}")


def stop_up(up: Up) -> tuple[int, float, dict[int, str]]:
    """SIGINT, then (exit code, seconds to exit, processes left behind)."""
    stop_sent_at = time.monotonic()
    up.proc.send_signal(signal.SIGINT)
    try:
        exit_code = up.proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"sie up still running {STOP_TIMEOUT_S:.0f}s after SIGINT:\n{up.output.text[-5000:]}")
    stop_s = time.monotonic() - stop_sent_at
    up.output.join(10)
    return exit_code, stop_s, _gone(up.data_dir)


def kill_up(up: Up) -> None:
    """Whatever is left of ``up`` and its children."""
    if up.proc.poll() is None:
        up.proc.kill()  # its children die with it (PR_SET_PDEATHSIG)
        up.proc.wait(30)
    _kill_all(up.data_dir)


@pytest.mark.timeout(600)
def test_sie_up_restarts_a_killed_worker_and_tritonserver_and_loses_nothing(tmp_path: Path) -> None:
    stack = launch_up(tmp_path)
    up, output, data_dir = stack.proc, stack.output, stack.data_dir
    try:
        launched = time.monotonic()
        output.wait_for(r"stack ready in", START_TIMEOUT_S)
        start_s = time.monotonic() - launched
        broker_pid = pid_of(data_dir, "kafka")
        worker_pid = pid_of(data_dir, f"worker {WORKER}")
        triton_pid = pid_of(data_dir, "tritonserver")

        bootstrap = stack.bootstrap
        producer = SteadyProducer(bootstrap, "events", count=EVENTS, rate=RATE, prefix="up")
        producer.start()

        producer.wait_sent(0.2)
        worker_killed_at = time.time()
        os.kill(worker_pid, signal.SIGKILL)
        worker_exit_line = output.wait_for(rf"{WORKER} exited \(SIGKILL\); restarting in", 30)[1]
        worker_ready_at, worker_ready_line = output.wait_for(rf"{WORKER} ready again", RESTART_TIMEOUT_S)
        new_worker_pid = pid_of(data_dir, f"worker {WORKER}")

        producer.wait_sent(0.6)
        triton_killed_at = time.time()
        os.kill(triton_pid, signal.SIGKILL)
        triton_exit_line = output.wait_for(r"tritonserver exited \(SIGKILL\); restarting in", 30)[1]
        triton_ready_at, triton_ready_line = output.wait_for(r"tritonserver ready again", RESTART_TIMEOUT_S)
        new_triton_pid = pid_of(data_dir, "tritonserver")

        producer.finish()
        acc = account(bootstrap, "predictions", "events.dlq", producer.ids)
        broker_pid_after = pid_of(data_dir, "kafka")
        still_up = up.poll() is None
        sent_at = producer.sent_at
        del producer  # its librdkafka client goes before the broker does

        exit_code, stop_s, leftovers = stop_up(stack)
    finally:
        kill_up(stack)

    settings = Settings.model_validate({"kafka": {"session_timeout_s": SESSION_TIMEOUT_S}})
    window = uncommitted_window(settings, RATE)
    figures = acc.figures() | {
        "rate_per_s": RATE,
        "stack_start_s": round(start_s, 3),
        "worker_kill_to_ready_s": round(worker_ready_at - worker_killed_at, 3),
        "triton_kill_to_ready_s": round(triton_ready_at - triton_killed_at, 3),
        "worker_messages": [worker_exit_line, worker_ready_line],
        "triton_messages": [triton_exit_line, triton_ready_line],
        "longest_partition_stall_s": longest_stall(acc, worker_killed_at - 1.0),
        "caught_up_after_worker_kill_s": caught_up_at(acc, sent_at, worker_killed_at, triton_killed_at),
        "caught_up_after_triton_kill_s": caught_up_at(acc, sent_at, triton_killed_at),
        "session_timeout_s": SESSION_TIMEOUT_S,
        "duplicate_bound": window,
        "broker_pid_kept": broker_pid_after == broker_pid,
        "stop_s": round(stop_s, 3),
        "exit_code": exit_code,
        "leftover_processes": len(leftovers),
    }
    write_report("up_supervision", figures)

    text = output.text
    print(f"\nsie up output:\n{text}")
    assert still_up, text[-5000:]
    assert new_worker_pid != worker_pid and new_triton_pid != triton_pid
    assert broker_pid_after == broker_pid, "the broker was restarted"
    assert "restart 1" in worker_exit_line and "restart 1" in triton_exit_line
    assert acc.lost == 0, acc.missing_sample
    assert acc.dead_lettered == 0, acc.dlq_reasons
    assert acc.duplicates <= window, (acc.duplicates, window)
    assert exit_code == 0, text[-5000:]
    assert "stopped" in text.splitlines()[-1], text[-3000:]
    assert "error:" not in text, text[-5000:]
    assert not leftovers, leftovers


@pytest.mark.timeout(600)
def test_sie_up_restarts_a_broker_killed_twice_and_every_event_is_answered(tmp_path: Path) -> None:
    stack = launch_up(tmp_path)
    output, data_dir = stack.output, stack.data_dir
    try:
        output.wait_for(r"stack ready in", START_TIMEOUT_S)
        producer = SteadyProducer(
            stack.bootstrap,
            "events",
            count=EVENTS,
            rate=RATE,
            prefix="upkafka",
            client_config={"enable.idempotence": "true"},  # survives the broker's restarts without duplicates
        )
        producer.start()
        kills: list[dict[str, float | str]] = []
        for n, share in enumerate((0.2, 0.6), start=1):
            producer.wait_sent(share)
            broker_pid = pid_of(data_dir, "kafka")
            killed_at = time.time()
            os.kill(broker_pid, signal.SIGKILL)
            exit_line = output.wait_for(
                rf"Kafka broker exited \(SIGKILL\); restarting in .*\(restart {n}\)", 30
            )[1]
            ready_at = output.nth(r"Kafka broker ready again", n, RESTART_TIMEOUT_S)[0]
            kills.append({"kill_to_ready_s": round(ready_at - killed_at, 3), "line": exit_line})
            assert pid_of(data_dir, "kafka") != broker_pid
        producer.finish(timeout=300)
        acc = account(stack.bootstrap, "predictions", "events.dlq", producer.ids, timeout=300)
        still_up = stack.proc.poll() is None
        del producer
        exit_code, stop_s, leftovers = stop_up(stack)
    finally:
        kill_up(stack)

    write_report(
        "up_broker_kill", acc.figures() | {"rate_per_s": RATE, "kills": kills, "stop_s": round(stop_s, 3)}
    )
    text = output.text
    assert still_up, text[-5000:]
    assert acc.lost == 0, acc.missing_sample
    assert acc.dead_lettered == 0, acc.dlq_reasons
    assert exit_code == 0 and "error:" not in text, text[-5000:]
    assert not leftovers, leftovers
