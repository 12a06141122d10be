"""A worker killed (SIGKILL) while a second one runs, then restarted: nothing is lost.

Offsets are committed only below records whose output the broker has
acknowledged, so the partitions that move to the survivor resume from the
last committed offset. Records the dead worker had consumed and not yet
committed are processed again: at-least-once, duplicates bounded by the
uncommitted window.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from engine.settings import Settings
from tests.chaos.conftest import StartTriton
from tests.chaos.harness import (
    SteadyProducer,
    account,
    caught_up_at,
    longest_stall,
    positions_read_again,
    write_report,
)
from tests.chaos.test_triton_outage import pending_bound
from tests.integration.conftest import StartWorker

pytestmark = [pytest.mark.chaos, pytest.mark.integration]


def uncommitted_window(settings: Settings, rate: float) -> int:
    """Most records a killed worker can have consumed without committing them.

    What its pipeline held (``pending_bound``), one fetched batch being handed to it, and what it
    answered since the last commit (one commit interval at the input rate). Records fetched and
    not yet handed to the pipeline are never answered, so they are not answered twice.
    """
    k = settings.kafka
    return pending_bound(settings, 2) + k.max_poll_records + int(rate * k.commit_interval_s)


def test_worker_killed_while_another_runs_then_restarted_loses_nothing(
    own_triton: StartTriton,
    fresh_settings: Callable[..., Settings],
    workers: StartWorker,
) -> None:
    settings = fresh_settings(own_triton())
    first = workers(settings)
    second = workers(settings)
    t = settings.topics
    bootstrap = settings.kafka.bootstrap_servers
    producer = SteadyProducer(bootstrap, t.events, prefix="wk")
    producer.start()

    producer.wait_sent(0.3)
    killed_at = time.time()
    first.process.kill()
    producer.wait_sent(0.6)
    restarted_at = time.time()
    first.process.start()
    first.wait_ready(timeout=120)
    producer.finish()
    acc = account(bootstrap, t.predictions, t.dlq, producer.ids)

    window = uncommitted_window(settings, producer.rate)
    figures = acc.figures() | {
        "rate_per_s": producer.rate,
        "killed_to_restarted_s": round(restarted_at - killed_at, 3),
        "longest_partition_stall_s": longest_stall(acc, killed_at - 1.0),
        "caught_up_after_kill_s": caught_up_at(acc, producer.sent_at, killed_at),
        "session_timeout_s": settings.kafka.session_timeout_s,
        "duplicate_bound": window,
    }
    write_report("worker_kill", figures)

    assert acc.lost == 0, acc.missing_sample
    assert acc.dead_lettered == 0, acc.dlq_reasons
    assert acc.duplicates <= window, (acc.duplicates, window)
    logs = [w.process.log_path.read_text(errors="replace") for w in (first, second)]
    assert not positions_read_again(logs), positions_read_again(logs)
