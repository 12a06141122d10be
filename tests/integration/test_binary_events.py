"""Binary tensor events beside JSON events in one topic, on the real broker and Triton (issue 15)."""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from engine.contract.wire import CONTENT_TYPE_HEADER, HEADER_LENGTH_HEADER, decode_binary_value
from engine.settings import Settings
from model_repository.numpy_reference import load_reference
from ops.embedded import ManagedProcess, child_env, free_port
from ops.embedded.process import http_ok
from ops.eventgen import generate, load_profiles
from ops.stack import settings_env
from tests.chaos.harness import scrape
from tests.integration.conftest import MODEL_REPOSITORY, StartWorker
from tests.integration.kafka import Msg, collect, produce

pytestmark = pytest.mark.integration

TOTAL = 6_000


def mixed_events(
    total: int, seed: int = 11
) -> tuple[list[tuple[bytes | None, bytes, list]], dict[str, tuple]]:
    """Every third event binary, one malformed binary event in fifty; id -> (format, features, model)."""
    profiles = load_profiles(MODEL_REPOSITORY)
    as_json = generate(profiles, total, seed=seed, keys=40, prefix="j")
    as_binary = generate(profiles, total, seed=seed + 1, keys=40, prefix="b", fmt="binary")
    records: list[tuple[bytes | None, bytes, list]] = []
    expected: dict[str, tuple] = {}
    for i, (j, b) in enumerate(zip(as_json, as_binary, strict=True)):
        if i % 3:
            records.append((j.key, j.value, []))
            expected[j.id] = ("json", j.features, j.model)
        elif i % 50 == 0:  # the header says 30 floats, the body holds 29
            cut = b.value[:-4]
            records.append((b.key, cut, list(b.headers)))
            expected[b.id] = ("dead", None, b.model)
        else:
            records.append((b.key, b.value, list(b.headers)))
            expected[b.id] = ("binary", b.features, b.model)
    return records, expected


def _outputs(msg: Msg) -> tuple[dict, np.ndarray]:
    if msg.headers.get(CONTENT_TYPE_HEADER, b"").startswith(b"application/vnd.kserve.v2.binary"):
        doc, tensors = decode_binary_value(msg.value or b"", int(msg.headers[HEADER_LENGTH_HEADER]))
        return doc | {"format": "binary"}, tensors["probabilities"]
    doc = json.loads(msg.value or b"")
    return doc | {"format": "json"}, np.asarray(doc["outputs"]["probabilities"])


def test_json_and_binary_events_in_one_topic_each_get_one_answer_in_their_format(
    stack_settings: Settings, workers: StartWorker
) -> None:
    records, expected = mixed_events(TOTAL)
    workers(stack_settings)
    t = stack_settings.topics
    produce(stack_settings.kafka.bootstrap_servers, t.events, records)
    dead_ids = {i for i, (fmt, _, _) in expected.items() if fmt == "dead"}
    out = collect(
        stack_settings.kafka.bootstrap_servers,
        [t.predictions, t.dlq],
        done=lambda got: len(got[t.predictions]) + len(got[t.dlq]) >= TOTAL,
        timeout=240,
        settle=2.0,
    )
    predictions, dead = out[t.predictions], out[t.dlq]
    assert len(dead) == len(dead_ids)
    for msg in dead:
        assert msg.headers["error.reason"] == b"invalid_event"
        assert b"ends inside" in msg.headers["error.message"]

    references = {m: load_reference(MODEL_REPOSITORY / m) for m in {m for _, _, m in expected.values()}}
    seen: set[str] = set()
    per_model: dict[str, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
    for msg in predictions:
        doc, probabilities = _outputs(msg)
        fmt, features, model = expected[doc["id"]]
        assert doc["id"] not in seen, "an event was predicted twice"
        seen.add(doc["id"])
        assert doc["format"] == fmt, doc["id"]
        assert doc["model"] == model and set(doc["timing_ms"]) == {"queue", "inference", "total"}
        per_model[model].append((features, probabilities))
    assert seen == set(expected) - dead_ids
    for model, pairs in per_model.items():
        x = np.stack([p[0] for p in pairs])
        got = np.stack([p[1] for p in pairs])
        np.testing.assert_allclose(got, references[model](x), atol=1e-5, rtol=0)


def test_worker_processes_share_the_group_and_each_serves_its_own_metrics(
    stack_settings: Settings, tmp_path: Path
) -> None:

    base_port = free_port()
    settings = stack_settings.model_copy(update={"metrics_port": base_port})
    process = ManagedProcess(
        name="sie-worker-processes",
        argv=(sys.executable, "-m", "ops.cli", "worker", "--processes", "2"),
        env=child_env(settings_env(settings) | {"PYTHONUNBUFFERED": "1"}),
        log_path=tmp_path / "processes.log",
    )
    try:
        ports = (base_port, base_port + 1)
        process.wait_ready(lambda: all(http_ok(f"http://127.0.0.1:{p}/readyz") for p in ports), timeout=180)
        records, expected = mixed_events(2_000, seed=5)
        t = settings.topics
        produce(settings.kafka.bootstrap_servers, t.events, records)
        out = collect(
            settings.kafka.bootstrap_servers,
            [t.predictions, t.dlq],
            done=lambda got: len(got[t.predictions]) + len(got[t.dlq]) >= len(records),
            timeout=180,
            settle=1.0,
        )
        ids = [_outputs(m)[0]["id"] for m in out[t.predictions]]
        assert len(ids) + len(out[t.dlq]) == len(records) and len(set(ids)) == len(ids)
        consumed = [scrape(f"http://127.0.0.1:{p}/metrics")["sie_events_consumed_total"] for p in ports]
        assert all(n > 0 for n in consumed), consumed  # both processes took partitions
        assert sum(consumed) == len(records)
    finally:
        started = time.monotonic()
        process.stop(timeout=60)
    assert process.popen.returncode == 0, process.log_tail()
    assert time.monotonic() - started < 60
