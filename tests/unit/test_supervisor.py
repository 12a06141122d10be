"""The restart policy of ``sie up`` (ops/supervisor.py) with fake children and a fake clock."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from rich.console import Console

from engine.settings import Settings
from ops import up
from ops.embedded import ManagedProcess, TritonProcess, child_env
from ops.stack import Stack, WorkerProcess
from ops.supervisor import (
    GaveUp,
    Level,
    Notice,
    RestartPolicy,
    SupervisionError,
    Supervisor,
    describe_exit,
)


class FakeClock:
    """Monotonic seconds that move only when told."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class FakeChild:
    """A child whose exit, respawn and readiness the test controls."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.code: int | None = None
        self.respawns = 0
        self.stops = 0
        self.is_ready = False
        self.fail_respawn: Exception | None = None

    def exit_code(self) -> int | None:
        return self.code

    def respawn(self) -> None:
        self.respawns += 1
        if self.fail_respawn is not None:
            raise self.fail_respawn
        self.code = None
        self.is_ready = False

    def ready(self) -> bool:
        return self.is_ready

    def stop(self) -> None:  # the supervisor must never call this
        self.stops += 1


def make(
    *children: FakeChild, policy: RestartPolicy | None = None
) -> tuple[Supervisor, FakeClock, list[Notice]]:
    clock = FakeClock()
    notices: list[Notice] = []
    sup = Supervisor(list(children), policy=policy, clock=clock, notify=notices.append)
    return sup, clock, notices


def crash_and_restart(sup: Supervisor, clock: FakeClock, child: FakeChild, code: int = -9) -> float:
    """Let ``child`` exit, poll until it is respawned; return the backoff it waited."""
    child.code = code
    before = child.respawns
    sup.poll()
    waited = sup.next_poll_in(1e9)
    clock.advance(waited)
    sup.poll()
    assert child.respawns == before + 1
    return waited


def test_an_exited_child_is_restarted_after_the_backoff_not_before() -> None:
    worker = FakeChild("worker-1")
    sup, clock, _ = make(worker)
    sup.poll()
    assert worker.respawns == 0

    worker.code = -signal.SIGKILL
    sup.poll()
    assert worker.respawns == 0
    clock.advance(0.99)
    sup.poll()
    assert worker.respawns == 0
    clock.advance(0.01)
    sup.poll()
    assert worker.respawns == 1
    assert worker.exit_code() is None
    assert sup.restarts() == {"worker-1": 1}


def test_the_exit_notice_names_the_child_and_its_exit_status() -> None:
    worker, triton = FakeChild("worker-1"), FakeChild("tritonserver")
    sup, clock, notices = make(worker, triton)
    worker.code = -9
    triton.code = 3
    sup.poll()
    texts = [n.text for n in notices]
    assert "worker-1 exited (SIGKILL); restarting in 1.0s (restart 1)" in texts
    assert "tritonserver exited (exit code 3); restarting in 1.0s (restart 1)" in texts
    assert {n.level for n in notices} == {Level.WARNING}
    assert {n.child for n in notices} == {"worker-1", "tritonserver"}


def test_describe_exit() -> None:
    assert describe_exit(-9) == "SIGKILL"
    assert describe_exit(-15) == "SIGTERM"
    assert describe_exit(0) == "exit code 0"
    assert describe_exit(1) == "exit code 1"
    assert describe_exit(-200) == "signal 200"


def test_backoff_doubles_up_to_the_cap() -> None:
    worker = FakeChild("worker-1")
    policy = RestartPolicy(max_exits=100)
    sup, clock, notices = make(worker, policy=policy)
    waits = [crash_and_restart(sup, clock, worker) for _ in range(8)]
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    exits = [n.text for n in notices if "exited" in n.text]
    assert exits[4] == "worker-1 exited (SIGKILL); restarting in 16.0s (restart 5)"


def test_backoff_starts_over_after_the_child_stayed_up() -> None:
    worker = FakeChild("worker-1")
    sup, clock, _ = make(worker, policy=RestartPolicy(stable_after_s=60.0))
    assert [crash_and_restart(sup, clock, worker) for _ in range(3)] == [1.0, 2.0, 4.0]
    clock.advance(59.0)
    sup.poll()
    assert crash_and_restart(sup, clock, worker) == 8.0  # not up long enough
    clock.advance(60.0)
    sup.poll()
    assert crash_and_restart(sup, clock, worker) == 1.0


def test_gives_up_after_five_exits_within_sixty_seconds() -> None:
    worker = FakeChild("worker-1")
    sup, clock, _ = make(worker)
    for _ in range(4):
        crash_and_restart(sup, clock, worker, code=1)  # backoffs 1+2+4+8 = 15 s
    worker.code = 1
    with pytest.raises(GaveUp) as caught:
        sup.poll()
    assert isinstance(caught.value, SupervisionError)
    assert caught.value.child == "worker-1"
    message = str(caught.value)
    assert "worker-1" in message and "5 times within 60s" in message and "exit code 1" in message
    assert worker.respawns == 4


def test_the_exit_window_slides() -> None:
    """Exits spread out more than the window never add up to giving up."""
    worker = FakeChild("worker-1")
    sup, clock, _ = make(worker, policy=RestartPolicy(max_exits=3, window_s=60.0, stable_after_s=1e9))
    crash_and_restart(sup, clock, worker)  # exit at t0
    clock.advance(30.0)
    crash_and_restart(sup, clock, worker)  # t0 + 31: two within the window
    clock.advance(40.0)
    crash_and_restart(sup, clock, worker)  # t0 + 73: the first has left the window
    clock.advance(10.0)
    worker.code = -9  # t0 + 87: exits at 31, 73, 87 are three within 60 s
    with pytest.raises(GaveUp):
        sup.poll()


def test_each_child_has_its_own_count_and_backoff() -> None:
    worker, triton = FakeChild("worker-1"), FakeChild("tritonserver")
    sup, clock, _ = make(worker, triton)
    for _ in range(4):
        crash_and_restart(sup, clock, worker)
    assert crash_and_restart(sup, clock, triton) == 1.0
    assert sup.restarts() == {"worker-1": 4, "tritonserver": 1}


def test_a_failed_restart_counts_as_an_exit_and_is_retried() -> None:
    triton = FakeChild("tritonserver")
    sup, clock, notices = make(triton)
    triton.code = -9
    triton.fail_respawn = OSError("port in use")
    sup.poll()
    clock.advance(1.0)
    sup.poll()  # the respawn fails: next try after 2 s
    assert triton.respawns == 1
    assert "tritonserver exited (failed to start: port in use); restarting in 2.0s (restart 2)" in (
        notices[-1].text
    )
    triton.fail_respawn = None
    clock.advance(2.0)
    sup.poll()
    assert triton.respawns == 2 and triton.exit_code() is None


def test_readiness_after_a_restart_is_noticed_once() -> None:
    worker = FakeChild("worker-1")
    sup, clock, notices = make(worker)
    crash_and_restart(sup, clock, worker)
    assert notices[-1].text == "worker-1 started again (restart 1)"
    clock.advance(4.0)
    sup.poll()
    assert "ready" not in notices[-1].text
    worker.is_ready = True
    sup.poll()
    sup.poll()
    ready = [n.text for n in notices if "ready again" in n.text]
    assert ready == ["worker-1 ready again 5.0s after it exited"]


def test_the_broker_is_restarted_like_any_other_child() -> None:
    broker, worker = FakeChild("Kafka broker"), FakeChild("worker-1")
    sup, clock, notices = make(broker, worker)
    crash_and_restart(sup, clock, broker)
    assert broker.respawns == 1 and worker.respawns == 0
    assert any("Kafka broker exited" in n.text and "restarting in" in n.text for n in notices)
    assert sup.restarts()["Kafka broker"] == 1


def test_next_poll_in_waits_no_longer_than_a_due_restart() -> None:
    worker = FakeChild("worker-1")
    sup, clock, _ = make(worker)
    assert sup.next_poll_in(1.0) == 1.0
    worker.code = -9
    clock.advance(0.0)
    sup.poll()
    clock.advance(0.25)
    assert sup.next_poll_in(5.0) == pytest.approx(0.75)
    assert sup.next_poll_in(0.5) == 0.5


# ------------------------------------------------------------- sie up wiring


class FakeProcess:
    """Stands in for a ManagedProcess; ``exits_with`` is its code right after each start."""

    def __init__(self, name: str, events: list[str], exits_with: int | None = None) -> None:
        self.name = name
        self.events = events
        self.exits_with = exits_with
        self.code: int | None = None
        self.popen = self
        self.log_path = Path(f"/logs/{name}.log")

    def poll(self) -> int | None:
        return self.code

    @property
    def alive(self) -> bool:
        return self.code is None

    def start(self) -> None:
        self.events.append(f"start {self.name}")
        self.code = self.exits_with

    def stop(self, timeout: float = 10.0) -> None:
        self.events.append(f"stop {self.name}")
        self.code = -15 if self.code is None else self.code

    def log_tail(self, max_bytes: int = 4000) -> str:
        return f"{self.name}: Traceback [boom]"


class FakeServer:
    """Stands in for the broker or TritonProcess: a process, ``stop()`` and ``ready()``."""

    grpc_url = "127.0.0.1:1"
    metrics_url = "http://127.0.0.1:2/metrics"

    def __init__(self, process: FakeProcess) -> None:
        self.process = process

    def stop(self, timeout: float = 10.0) -> None:
        self.process.stop(timeout)

    def ready(self) -> bool:
        return self.process.alive

    def respawn(self) -> None:
        self.process.start()


def run_fake_up(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, worker_exit: int | None, broker_exit: int | None
) -> tuple[int, str, list[str]]:
    """``run_up`` on a fake stack: (exit code, console output, start/stop calls in order)."""
    events: list[str] = []
    settings = Settings(data_dir=tmp_path)
    stack = Stack(settings, tmp_path)
    worker = FakeProcess("sie-worker-1", events, exits_with=worker_exit)
    stack.workers = [WorkerProcess("sie-worker-1", settings, worker)]  # type: ignore[arg-type]
    stack.triton = FakeServer(FakeProcess("tritonserver", events))  # type: ignore[assignment]
    broker = FakeProcess("kafka", events)
    stack.broker = FakeServer(broker)  # type: ignore[assignment]
    monkeypatch.setattr(up, "start_stack", lambda *_a, **_k: stack)
    worker.code = worker_exit
    broker.code = broker_exit
    out = io.StringIO()
    policy = RestartPolicy(initial_backoff_s=0.01, max_exits=2)  # exits are seen within up.POLL_S
    opts = up.UpOptions(duration_s=5.0, restart_policy=policy)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        code = up.run_up(settings, opts, Console(file=out, width=300))
    finally:
        signal.signal(signal.SIGTERM, previous)
    return code, out.getvalue(), events


def test_sie_up_gives_up_with_one_clear_error_and_exit_1(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    code, text, events = run_fake_up(monkeypatch, tmp_path, worker_exit=1, broker_exit=None)
    assert code == 1
    exited = "! sie-worker-1 exited (exit code 1); restarting in 0.0s (restart 1)"
    assert f"{exited} (log: /logs/sie-worker-1.log)" in text
    assert "error: sie-worker-1 exited 2 times within 60s (last: exit code 1)" in text
    assert "Traceback [boom]" in text  # the log tail, printed as text, not markup
    assert events == ["start sie-worker-1", "stop sie-worker-1", "stop tritonserver", "stop kafka"]
    assert text.rstrip().endswith("stopped")


def test_sie_up_restarts_a_broker_that_exits_and_goes_on(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    code, text, events = run_fake_up(monkeypatch, tmp_path, worker_exit=None, broker_exit=-9)
    assert code == 0
    assert "! Kafka broker exited (SIGKILL); restarting in 0.0s (restart 1)" in text
    assert "Kafka broker started again (restart 1)" in text
    assert events == [
        "start kafka",
        "stop sie-worker-1",
        "stop tritonserver",
        "stop kafka",
    ]  # workers drain first


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and /dev/shm")
def test_triton_respawn_kills_the_stubs_and_shared_memory_its_killed_server_left(tmp_path: Path) -> None:
    prefix = f"sie-t{uuid.uuid4().hex[:7]}-"
    server = ManagedProcess(  # stands in for tritonserver: same kind of argv, exits at once
        name="tritonserver",
        argv=(sys.executable, "-c", "pass", f"--backend-config=python,shm-region-prefix-name={prefix}"),
        env=child_env(),
        log_path=tmp_path / "tritonserver.log",
    )
    server.popen.wait(30)
    stub_exe = tmp_path / "backends" / "python" / "triton_python_backend_stub"
    stub_exe.parent.mkdir(parents=True)
    stub_exe.symlink_to(sys.executable)
    sleeper = "import time; time.sleep(60)"
    ours = subprocess.Popen([stub_exe, "-c", sleeper, f"{prefix}model_0", "1048576"])
    other = subprocess.Popen([stub_exe, "-c", sleeper, "sie-other00-model_0", "1048576"])
    region = Path("/dev/shm") / f"{prefix}model_0"
    region.write_bytes(b"x")
    try:
        TritonProcess(server, 1, 2, 3, ("m",)).respawn()
        assert ours.wait(10) == -signal.SIGKILL
        assert other.poll() is None  # another server's stub is left alone
        assert not region.exists()
        assert server.popen.wait(30) == 0
        assert server.log_path.read_text().count("=== starting tritonserver") == 2  # started again
    finally:
        for proc in (ours, other):
            proc.kill()
            proc.wait()
        region.unlink(missing_ok=True)
        server.stop()
