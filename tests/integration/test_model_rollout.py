"""Issue 5's acceptance test: deploy and promote a new model version under steady load.

A worker serves a steady stream (thousands of events/s) from a real broker
through its own tritonserver (a private repository copy, so the session Triton
other tests share is untouched). Mid-stream, version 2 of ``breast_cancer``
(version 1's weights with the output layer scaled: same classes, sharper
probabilities) is deployed and promoted. Every event must be answered exactly
once, none dead-lettered, each prediction must carry the version that really
computed it, versions never go back within a partition, every event sent after
the promote returned is served by version 2, and the worker's metrics show
the switch.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.settings import Settings
from inference.model_control import ModelControl
from inference.repository import deploy
from model_repository.numpy_reference import load_reference
from ops.embedded import KafkaBroker, TritonProcess, create_topics, free_port, start_triton
from ops.eventgen import GeneratedEvent, generate, load_profiles
from ops.stack import copy_model_repository
from tests.integration.conftest import MODEL_REPOSITORY, StartWorker
from tests.integration.kafka import Msg, collect, produce

pytestmark = pytest.mark.integration

RATE = 2500  # events/s offered
DURATION_S = 15.0
PROMOTE_AT_S = 5.0
MODEL = "breast_cancer"
OUTPUT_SCALE = 1.5  # version 2 = version 1 with the last layer scaled


@pytest.fixture
def own_triton(tmp_path: Path) -> Iterator[tuple[TritonProcess, Path]]:
    repository = copy_model_repository(MODEL_REPOSITORY, tmp_path)
    triton = start_triton(
        repository,
        tmp_path / "triton",
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
    )
    yield triton, repository
    triton.stop()


def version_two(source: Path, target: Path) -> Path:
    """A deterministic new version: the output layer of ``source``'s weights scaled."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    with np.load(source / "weights.npz") as data:
        arrays = {k: data[k] for k in data.files}
    last = max(int(k[1:]) for k in arrays if k.startswith("W"))
    arrays[f"W{last}"] = arrays[f"W{last}"] * np.float32(OUTPUT_SCALE)
    arrays[f"b{last}"] = arrays[f"b{last}"] * np.float32(OUTPUT_SCALE)
    np.savez(target / "weights.npz", **arrays)
    return target


class PacedEvents:
    """Yields records at ``RATE``/s and remembers when each was handed to the producer."""

    def __init__(self, events: list[GeneratedEvent]) -> None:
        self.events = events
        self.sent_at: dict[str, float] = {}
        self.started = threading.Event()

    def __iter__(self) -> Iterator[tuple[bytes, bytes, list]]:
        t0 = time.monotonic()
        self.started.set()
        for i, ev in enumerate(self.events):
            due = t0 + i / RATE
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            self.sent_at[ev.id] = time.monotonic()
            yield ev.key, ev.value, []


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def metric(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: dict, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def test_promote_under_load_switches_versions_without_losing_an_event(
    broker: KafkaBroker, own_triton: tuple[TritonProcess, Path], workers: StartWorker, tmp_path: Path
) -> None:
    triton, repository = own_triton
    tag = uuid.uuid4().hex[:8]
    settings = Settings(
        kafka={"bootstrap_servers": broker.bootstrap, "group_id": f"ro-{tag}", "session_timeout_s": 6.0},
        topics={"events": f"ev-{tag}", "predictions": f"pred-{tag}", "dlq": f"dlq-{tag}", "partitions": 4},
        triton={"url": triton.grpc_url, "http_url": triton.http_url},
        drift={"reference_dir": repository},
        data_dir=tmp_path / "data",
    )
    t = settings.topics
    create_topics(broker.bootstrap, {t.events: 4, t.predictions: 4, t.dlq: 4})
    worker = workers(settings)
    new_version = version_two(repository / MODEL / "1", tmp_path / "candidate")

    events = list(generate(load_profiles(MODEL_REPOSITORY), int(RATE * DURATION_S), seed=21, keys=64))
    paced = PacedEvents(events)
    producer = threading.Thread(target=produce, args=(broker.bootstrap, t.events, paced), daemon=True)
    producer.start()
    paced.started.wait(30)
    time.sleep(PROMOTE_AT_S)
    deployed = deploy(repository, MODEL, new_version)
    control = ModelControl(settings.triton, repository)
    promote_started, promote_wall = time.monotonic(), time.time()
    switch = control.promote(MODEL, deployed.version)
    promote_done = time.monotonic()
    control.close()
    producer.join(timeout=DURATION_S * 4)
    assert not producer.is_alive(), "the producer did not finish"

    out = collect(
        broker.bootstrap,
        [t.predictions, t.dlq],
        done=lambda got: len(got[t.predictions]) >= len(events),
        timeout=300,
        settle=3.0,
    )
    predictions, dead = out[t.predictions], out[t.dlq]
    assert dead == [], f"{len(dead)} dead letters, e.g. {dead[0].headers if dead else None}"
    assert (deployed.version, switch.before, switch.after) == (2, (1,), (2,))

    docs = {d["id"]: d for d in (json.loads(m.value or b"") for m in predictions)}
    assert len(docs) == len(predictions), "an event was answered twice"
    assert set(docs) == {ev.id for ev in events}, "an event was not answered"

    served = _check_outputs_match_the_version_that_served_them(events, docs, repository)
    _check_versions_never_go_back_per_partition(predictions)
    late_v1 = [
        ev.id
        for ev in events
        if ev.model == MODEL and paced.sent_at[ev.id] > promote_done and served[ev.id] != "2"
    ]
    assert late_v1 == [], f"{len(late_v1)} events sent after the promote returned were not served by v2"

    samples = scrape(worker.metrics_url)
    by_version = Counter(served[ev.id] for ev in events if ev.model == MODEL)
    for version in ("1", "2"):
        assert metric(samples, "sie_predictions_total", model=MODEL, version=version) == by_version[version]
    assert metric(samples, "sie_model_version_info", model=MODEL, version="2") == 1
    assert metric(samples, "sie_model_version_info", model=MODEL, version="1") == 0
    assert metric(samples, "sie_model_version_info", model="iris", version="1") == 1
    assert total(samples, "sie_dead_letters_total") == 0
    assert total(samples, "sie_triton_errors_total") == 0

    retries = total(samples, "sie_retries_total")
    print(
        _figures(events, paced, served, predictions, (promote_started, promote_done, promote_wall), retries)
    )


def _figures(
    events: list[GeneratedEvent],
    paced: PacedEvents,
    served: dict[str, str],
    predictions: list[Msg],
    promote: tuple[float, float, float],
    retries: float,
) -> str:
    """The swap, in words: promote time, events sent meanwhile, when each version was last/first seen."""
    started, done, wall = promote
    sent = sorted((paced.sent_at[ev.id] - started, served[ev.id]) for ev in events if ev.model == MODEL)
    out: dict[str, list[float]] = defaultdict(list)
    for msg in predictions:
        doc = json.loads(msg.value or b"")
        if doc["model"] == MODEL:
            out[doc["model_version"]].append(msg.timestamp_ms / 1000.0 - wall)
    during = sum(started <= paced.sent_at[e.id] <= done for e in events)
    elapsed = max(paced.sent_at.values()) - min(paced.sent_at.values())
    counts = Counter(v for _, v in sent)
    return (
        f"\nrollout: {len(events)} events in {elapsed:.1f}s ({len(events) / elapsed:.0f}/s offered); "
        f"promote took {done - started:.2f}s, {during} events sent meanwhile; {MODEL} answered by "
        f"v1 {counts['1']} / v2 {counts['2']}; by send time (s after the promote started): last v1 "
        f"{max(t for t, v in sent if v == '1'):+.2f}, first v2 {min(t for t, v in sent if v == '2'):+.2f}; "
        f"by output time: last v1 {max(out['1']):+.2f}, first v2 {min(out['2']):+.2f}; retries {retries:.0f}"
    )


def _check_outputs_match_the_version_that_served_them(
    events: list[GeneratedEvent], docs: dict[str, dict], repository: Path
) -> dict[str, str]:
    """Each prediction's probabilities are those of the version it names; returns id -> version."""
    refs = {
        (MODEL, "1"): load_reference(repository / MODEL, 1),
        (MODEL, "2"): load_reference(repository / MODEL, 2),
        ("iris", "1"): load_reference(repository / "iris", 1),
    }
    groups: dict[tuple[str, str], list[GeneratedEvent]] = defaultdict(list)
    for ev in events:
        groups[(ev.model, docs[ev.id]["model_version"])].append(ev)
    assert set(groups) <= set(refs), f"unexpected model versions {sorted(groups)}"
    assert {(MODEL, "1"), (MODEL, "2"), ("iris", "1")} == set(groups), "expected both versions to serve"
    for key, evs in groups.items():
        got = np.array([docs[ev.id]["outputs"]["probabilities"] for ev in evs])
        np.testing.assert_allclose(got, refs[key](np.stack([ev.features for ev in evs])), atol=1e-5, rtol=0)
    return {ev.id: docs[ev.id]["model_version"] for ev in events}


def _check_versions_never_go_back_per_partition(predictions: list[Msg]) -> None:
    per_partition: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for msg in predictions:
        doc = json.loads(msg.value or b"")
        if doc["model"] == MODEL:
            per_partition[msg.partition].append((msg.offset, int(doc["model_version"])))
    for partition, seq in per_partition.items():
        versions = [v for _, v in sorted(seq)]
        assert versions == sorted(versions), f"partition {partition}: a v1 output follows a v2 output"
