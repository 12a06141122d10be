"""``sie worker --processes N``: children's settings, stop on a signal, stop all when one exits."""

from __future__ import annotations

import signal
from pathlib import Path

from engine.settings import Settings
from ops.processes import ProcessGroup, child_settings, run_processes, supervise


class FakeChild:
    """A child that exits when told (SIGTERM) or when the test says so."""

    def __init__(self, pid: int, exits_on_term: bool = True) -> None:
        self.pid = pid
        self.status: int | None = None
        self.signals: list[int] = []
        self.killed = False
        self._exits_on_term = exits_on_term

    def poll(self) -> int | None:
        return self.status

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)
        if self._exits_on_term:
            self.status = 0

    def kill(self) -> None:
        self.killed = True
        self.status = -9


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        self.t += dt


def test_each_child_has_its_own_name_metrics_port_and_data_dir_in_the_same_group() -> None:
    base = Settings(worker_name="w", metrics_port=9300, data_dir=Path("/data"))
    children = [child_settings(base, i) for i in (1, 2, 3)]
    assert [c.worker_name for c in children] == ["w-1", "w-2", "w-3"]
    assert [c.metrics_port for c in children] == [9300, 9301, 9302]
    assert [c.data_dir for c in children] == [Path("/data/w-1"), Path("/data/w-2"), Path("/data/w-3")]
    assert {c.kafka.group_id for c in children} == {base.kafka.group_id}
    assert child_settings(Settings(metrics_port=0), 2).metrics_port == 0


def test_n_children_are_started_and_a_stop_reaches_all_of_them() -> None:
    started: list[Settings] = []
    children: list[FakeChild] = []
    clock = Clock()

    def spawn(settings: Settings) -> FakeChild:
        started.append(settings)
        children.append(FakeChild(len(children) + 100))
        return children[-1]

    def sleep(dt: float) -> None:  # the operator presses Ctrl-C after a second
        clock.sleep(dt)
        if clock.t >= 1.0 and not children[0].signals:
            signal.raise_signal(signal.SIGINT)

    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        status = run_processes(Settings(worker_name="w"), 3, spawn=spawn, sleep=sleep, clock=clock)
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
    assert status == 0
    assert [s.worker_name for s in started] == ["w-1", "w-2", "w-3"]
    assert all(c.signals == [signal.SIGTERM] for c in children)


def test_a_child_that_exits_on_its_own_stops_the_others_and_sets_the_exit_status() -> None:
    children = [FakeChild(1), FakeChild(2), FakeChild(3)]
    clock = Clock()

    def sleep(dt: float) -> None:
        clock.sleep(dt)
        if clock.t > 0.5 and children[1].status is None:
            children[1].status = 70  # the pipeline failed: the worker exits 70

    assert supervise(ProcessGroup(children), sleep, clock) == 70
    assert children[0].signals == [signal.SIGTERM] and children[2].signals == [signal.SIGTERM]
    assert children[1].signals == []


def test_a_child_that_does_not_stop_in_time_is_killed() -> None:
    stuck = FakeChild(1, exits_on_term=False)
    group = ProcessGroup([stuck, FakeChild(2)], stopping=True)
    group.signal_all(signal.SIGTERM)
    clock = Clock()
    supervise(group, clock.sleep, clock)
    assert stuck.killed and clock.t >= 60.0
