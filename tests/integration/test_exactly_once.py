"""Exactly-once workers on the real broker: one answer per event for a ``read_committed`` reader,
outputs invisible to it until their transaction commits, and a fenced worker that stops."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from engine.settings import Settings
from ops.embedded import free_port
from ops.eventgen import generate, load_profiles
from ops.stack import start_worker
from tests.chaos.harness import account, scrape
from tests.integration.conftest import MODEL_REPOSITORY, StartWorker
from tests.integration.kafka import produce

pytestmark = pytest.mark.integration

EVENTS = 3_000
MALFORMED = 30


def _exactly_once(settings: Settings) -> Settings:
    kafka = settings.kafka.model_copy(update={"processing_guarantee": "exactly_once"})
    return settings.model_copy(update={"kafka": kafka})


def _events(prefix: str, count: int) -> tuple[list[tuple[bytes | None, bytes, list]], list[str]]:
    events = list(generate(load_profiles(MODEL_REPOSITORY), count, seed=5, keys=20, prefix=prefix))
    records: list[tuple[bytes | None, bytes, list]] = [(e.key, e.value, []) for e in events]
    ids = [e.id for e in events]
    for n in range(MALFORMED):  # dead letters are written in the same transactions
        bad = f'{{"id": "{prefix}-bad-{n}", "features": [1.0, 2.0]}}'  # bad_shape: a dead letter
        records.insert(n * 97, (None, bad.encode(), []))
        ids.append(f"{prefix}-bad-{n}")
    return records, ids


def test_exactly_once_worker_answers_each_event_once_in_committed_transactions(
    stack_settings: Settings, workers: StartWorker
) -> None:
    settings = _exactly_once(stack_settings)
    worker = workers(settings)
    t = settings.topics
    records, ids = _events("eos", EVENTS)
    produce(settings.kafka.bootstrap_servers, t.events, records)

    acc = account(settings.kafka.bootstrap_servers, t.predictions, t.dlq, ids, timeout=180)
    metrics = scrape(worker.metrics_url)

    assert (acc.lost, acc.duplicates) == (0, 0), acc.missing_sample
    assert acc.predicted == EVENTS and acc.dead_lettered == MALFORMED, acc.figures()
    assert metrics.get("sie_transactions_total", 0.0) >= 1, metrics
    assert metrics.get("sie_transaction_aborts_total", 0.0) == 0, metrics
    # The positions went into the transactions: the group's committed offsets reach the end.
    assert metrics.get("sie_commit_lag_records", 0.0) == 0, metrics


def test_a_worker_fenced_by_a_newer_one_with_its_transactional_id_stops_with_one_clear_line(
    stack_settings: Settings, workers: StartWorker, tmp_path: Path
) -> None:
    settings = _exactly_once(stack_settings)
    first = workers(settings)
    # A second process with the first one's name, so its transactional.id (a zombie's successor).
    twin_settings = first.settings.model_copy(
        update={"metrics_port": free_port(), "data_dir": tmp_path / "twin"}
    )
    twin = start_worker(twin_settings, tmp_path, "twin")
    try:
        twin.wait_ready(timeout=180)
        t = settings.topics
        records, ids = _events("fence", 500)
        produce(settings.kafka.bootstrap_servers, t.events, records)
        deadline = time.monotonic() + 60
        while first.process.alive and time.monotonic() < deadline:
            time.sleep(0.2)
        log = first.process.log_path.read_text(errors="replace")
        assert not first.process.alive, "the fenced worker went on"
        assert first.process.popen.returncode == 70  # type: ignore[union-attr]
        assert log.count("this worker's producer was fenced, stopping") == 1, log[-3000:]
        # Its partitions go to the twin, which answers every event once.
        acc = account(settings.kafka.bootstrap_servers, t.predictions, t.dlq, ids, timeout=180)
        assert (acc.lost, acc.duplicates) == (0, 0), acc.figures()
    finally:
        twin.stop()
