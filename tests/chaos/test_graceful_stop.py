"""SIGTERM under load: in-flight batches finish, outputs are produced, offsets committed.

On SIGTERM Faust pauses the partitions, waits until every consumed record is
acknowledged (our pipeline acknowledges a record only after its output is
acknowledged by the broker), commits, and only then runs the pipeline's own
drain and closes the producer. A worker restarted afterwards resumes at the
committed offsets: no event is processed twice.

The second test stops a worker while its pipeline is full: a preloaded backlog
keeps the consumer waiting on backpressure, which is where the stop cancels the
fetch task. A fetched batch was once counted as in hand before all of it
reached the pipeline, and such a worker waited for records that never would
(the benchmark saw workers ignore SIGTERM for 20 s and more after saturated
levels).
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable

import pytest

from engine.settings import Settings
from ops.stack import WorkerProcess
from tests.chaos.conftest import StartTriton
from tests.chaos.harness import (
    SteadyProducer,
    account,
    first_output_after,
    positions_read_again,
    write_report,
)
from tests.integration.conftest import StartWorker
from tests.integration.kafka import collect

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

EXIT_BOUND_S = 60.0  # the process must exit on its own well within this
BACKLOG = 40_000  # preloaded: several seconds of saturated work for one worker on this machine
SATURATED_EXIT_BOUND_S = 15.0  # records in hand are at most max_in_flight batches plus one chunk


def _terminate(worker: WorkerProcess, bound_s: float) -> int:
    """SIGTERM ``worker`` and return its exit code; fail the test if it runs past ``bound_s``."""
    worker.process.popen.send_signal(signal.SIGTERM)
    try:
        return worker.process.popen.wait(bound_s)
    except subprocess.TimeoutExpired:
        pytest.fail(f"worker still running {bound_s}s after SIGTERM:\n{worker.process.log_tail()}")


def test_sigterm_under_load_drains_commits_and_restart_duplicates_nothing(
    own_triton: StartTriton,
    fresh_settings: Callable[..., Settings],
    workers: StartWorker,
) -> None:
    settings = fresh_settings(own_triton())
    worker = workers(settings)
    t = settings.topics
    bootstrap = settings.kafka.bootstrap_servers
    producer = SteadyProducer(bootstrap, t.events, prefix="term")
    producer.start()

    producer.wait_sent(0.4)
    stopped_at = time.time()
    code = _terminate(worker, EXIT_BOUND_S)
    exited_at = time.time()
    log_tail = worker.process.log_tail(20_000)
    producer.wait_sent(0.6)
    restarted_at = time.time()
    worker.process.start()
    worker.wait_ready(timeout=120)
    producer.finish()
    acc = account(bootstrap, t.predictions, t.dlq, producer.ids)

    figures = acc.figures() | {
        "rate_per_s": producer.rate,
        "exit_code": code,
        "exit_s": round(exited_at - stopped_at, 3),
        "exit_bound_s": EXIT_BOUND_S,
        "restart_resume_s": first_output_after(acc, restarted_at),
    }
    write_report("graceful_stop", figures)

    assert code == 0, log_tail[-3000:]
    assert "unacknowledged" not in log_tail, log_tail[-3000:]
    assert acc.lost == 0, acc.missing_sample
    assert acc.dead_lettered == 0, acc.dlq_reasons
    assert acc.duplicates == 0
    log = worker.process.log_path.read_text(errors="replace")
    assert not positions_read_again([log]), positions_read_again([log])


def test_sigterm_while_the_pipeline_is_full_exits_promptly_and_loses_nothing(
    own_triton: StartTriton,
    fresh_settings: Callable[..., Settings],
    workers: StartWorker,
) -> None:
    settings = fresh_settings(own_triton())
    t = settings.topics
    bootstrap = settings.kafka.bootstrap_servers
    backlog = SteadyProducer(bootstrap, t.events, count=BACKLOG, rate=1e9, prefix="full")
    backlog.start()
    backlog.finish()
    worker = workers(settings, wait=False)
    collect(bootstrap, [t.predictions], lambda got: len(got[t.predictions]) >= 1, timeout=120)

    stopped_at = time.time()
    code = _terminate(worker, SATURATED_EXIT_BOUND_S)
    exit_s = time.time() - stopped_at
    log_tail = worker.process.log_tail(20_000)
    worker.process.start()
    worker.wait_ready(timeout=120)
    acc = account(bootstrap, t.predictions, t.dlq, backlog.ids)
    write_report(
        "graceful_stop_full_pipeline",
        acc.figures() | {"backlog": BACKLOG, "exit_code": code, "exit_s": round(exit_s, 3)},
    )

    assert code == 0, log_tail[-3000:]
    assert acc.lost == 0, acc.missing_sample
    assert acc.dead_lettered == 0, acc.dlq_reasons
    assert acc.duplicates == 0
