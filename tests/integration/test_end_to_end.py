"""Issue 2's acceptance test: 10,000 events (100 malformed) through a real broker and Triton."""

from __future__ import annotations

import json
import random
from collections import defaultdict

import numpy as np
import pytest

from engine.settings import Settings
from model_repository.numpy_reference import load_reference
from ops.eventgen import GeneratedEvent, generate, load_profiles
from tests.integration.conftest import MODEL_REPOSITORY, StartWorker
from tests.integration.kafka import Msg, collect, produce

pytestmark = pytest.mark.integration

TOTAL = 10_000
MALFORMED = 100


def malformed_event(n: int) -> tuple[bytes, str]:
    """The ``n``-th malformed value (each one unique) and the reason it must be dead-lettered with."""
    features = json.dumps([0.5] * 30)
    cases: list[tuple[str, str]] = [
        (f'{{"id": "bad-{n}", "features": [1, 2', "invalid_json"),
        (f"not json at all {n}", "invalid_json"),
        (f'[{n}, "an array, not an object"]', "invalid_event"),
        (f'{{"features": {features}, "n": {n}}}', "missing_id"),
        (f'{{"id": "", "features": {features}, "n": {n}}}', "missing_id"),
        (f'{{"id": {n}, "features": {features}}}', "invalid_event"),  # id of the wrong type
        (f'{{"id": "bad-{n}", "model": "no_such_model", "features": {features}}}', "unknown_model"),
        (f'{{"id": "bad-{n}", "features": [1.0, 2.0, 3.0]}}', "bad_shape"),
        (f'{{"id": "bad-{n}", "features": [[1.0], [2.0]]}}', "bad_shape"),
        (f'{{"id": "bad-{n}", "features": {json.dumps(["x"] * 30)}}}', "bad_dtype"),
        (f'{{"id": "bad-{n}", "features": {json.dumps([None] * 30)}}}', "bad_dtype"),
        (f'{{"id": "bad-{n}", "inputs": {{}}}}', "missing_input"),
        (f'{{"id": "bad-{n}", "features": {json.dumps([0] * 70_000)}}}', "too_large"),
    ]
    value, reason = cases[n % len(cases)]
    return value.encode(), reason


def build_input(seed: int = 7) -> tuple[list[tuple[bytes | None, bytes, list]], list[GeneratedEvent], dict]:
    """Records to publish (valid and malformed interleaved), the valid events, value->reason."""
    valid = list(generate(load_profiles(MODEL_REPOSITORY), TOTAL - MALFORMED, seed=seed, keys=50))
    bad = {}
    records: list[tuple[bytes | None, bytes, list]] = [
        (ev.key, ev.value, [("traceparent", f"00-{i:032x}-{i:016x}-01".encode())])
        for i, ev in enumerate(valid, 1)
    ]
    positions = sorted(random.Random(seed).sample(range(TOTAL), MALFORMED))
    for n, pos in enumerate(positions):
        value, reason = malformed_event(n)
        bad[value] = reason
        records.insert(pos, (f"k{n % 50}".encode() if n % 2 else None, value, []))
    return records, valid, bad


def test_every_event_yields_one_prediction_or_one_dead_letter(
    stack_settings: Settings, workers: StartWorker
) -> None:
    records, valid, bad = build_input()
    assert len(records) == TOTAL
    workers(stack_settings)
    t = stack_settings.topics
    produce(stack_settings.kafka.bootstrap_servers, t.events, records)

    out = collect(
        stack_settings.kafka.bootstrap_servers,
        [t.predictions, t.dlq],
        done=lambda got: len(got[t.predictions]) >= len(valid) and len(got[t.dlq]) >= len(bad),
        timeout=300,
        settle=3.0,
    )
    predictions, dead = out[t.predictions], out[t.dlq]

    _check_dead_letters(dead, bad, t.events)
    _check_predictions(predictions, valid)
    assert len(predictions) == TOTAL - MALFORMED
    assert len(dead) == MALFORMED


def _check_dead_letters(dead: list[Msg], bad: dict[bytes, str], source_topic: str) -> None:
    seen = [m.value for m in dead]
    assert len(set(seen)) == len(seen), "a malformed event was dead-lettered twice"
    assert set(seen) == set(bad), f"missing dead letters: {len(set(bad) - set(seen))}"
    for msg in dead:
        assert msg.headers["error.reason"].decode() == bad[msg.value], msg.headers
        assert msg.headers["error.message"]
        assert msg.headers["source.topic"].decode() == source_topic
        assert int(msg.headers["source.offset"]) >= 0
        assert 0 <= int(msg.headers["source.partition"]) < 4


def _check_predictions(predictions: list[Msg], valid: list[GeneratedEvent]) -> None:
    by_id = {ev.id: ev for ev in valid}
    docs = [json.loads(m.value or b"") for m in predictions]
    ids = [d["id"] for d in docs]
    assert len(set(ids)) == len(ids), "an event was predicted twice"
    assert set(ids) == set(by_id), f"missing predictions: {sorted(set(by_id) - set(ids))[:5]}"

    references = {m: load_reference(MODEL_REPOSITORY / m) for m in {ev.model for ev in valid}}
    per_model: dict[str, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
    for msg, doc in zip(predictions, docs, strict=True):
        ev = by_id[doc["id"]]
        assert msg.key == ev.key
        assert msg.headers["traceparent"].startswith(b"00-")
        assert doc["model"] == ev.model and doc["model_version"] == "1"
        assert set(doc["timing_ms"]) == {"queue", "inference", "total"}
        per_model[ev.model].append((ev.features, np.asarray(doc["outputs"]["probabilities"])))
    for model, pairs in per_model.items():
        x = np.stack([p[0] for p in pairs])
        got = np.stack([p[1] for p in pairs])
        np.testing.assert_allclose(got, references[model](x), atol=1e-5, rtol=0)

    _check_key_order(predictions, docs, valid)


def _check_key_order(predictions: list[Msg], docs: list[dict], valid: list[GeneratedEvent]) -> None:
    sent: dict[bytes, list[str]] = defaultdict(list)
    for ev in valid:
        sent[ev.key].append(ev.id)
    received: dict[bytes, list[tuple[int, int, str]]] = defaultdict(list)
    for msg, doc in zip(predictions, docs, strict=True):
        received[msg.key or b""].append((msg.partition, msg.offset, doc["id"]))
    for key, ids in sent.items():
        got = sorted(received[key])
        assert len({p for p, _, _ in got}) == 1, f"key {key!r} spread over partitions"
        assert [i for _, _, i in got] == ids, f"key {key!r} out of order"
