"""Issue 13 on the real stack: no input stops a worker.

Poison first - a value over the input limit and near the broker's maximum
message size, a valid-JSON value just under the limit (both dead letters too
large to produce whole), events of mixed lengths for the variable-length
model ``seq_trend`` (batched by length; the length-1 ones Triton rejects),
events of bad shape and dtype for it - then 1,000 valid events. Every valid
event is predicted (and matches the numpy reference), every bad one is in the
DLQ with its reason, the big ones cut down to fit with headers saying so, and
the worker is the same live process throughout, healthy.
"""

from __future__ import annotations

import json
import random
import urllib.request

import numpy as np
import orjson
import pytest

from engine.dlq import record_size
from engine.records import OutRecord
from engine.settings import Settings
from model_repository.numpy_reference import load_reference, load_sequence_reference
from ops.eventgen import GeneratedEvent, generate, load_profiles
from tests.integration.conftest import MODEL_REPOSITORY, StartWorker
from tests.integration.kafka import Msg, collect, produce

pytestmark = pytest.mark.integration

VALID_AFTER = 1_000
SEQUENCES = 120
LIMIT = 1_000_000  # SIE_LIMITS__MAX_MESSAGE_BYTES, default
BIG_PRODUCER = {"message.max.bytes": "1048000"}  # the broker's default max.message.bytes is 1048588


def _poison() -> dict[bytes, tuple[bytes, str]]:
    """key -> (value, expected reason) of every bad record."""
    over = b'{"id": "over", "features": [' + b"0.5, " * 207_990 + b"0.5]}"  # ~1,040,000 bytes
    near = orjson.dumps({"id": "n" * 999_900, "model": "iris", "features": [5.1, 3.5, 1.4, 0.2]})
    bad = {b"poison-over": (over, "too_large"), b"poison-near": (near, "too_large")}
    for i in range(5):  # one value: no slope, the model rejects the batch (INVALID_ARG)
        bad[f"poison-short-{i}".encode()] = (_seq(f"short-{i}", [1.0 + i]), "inference_error")
    bad[b"poison-2d"] = (_seq("2d", [[1, 2], [3, 4]]), "bad_shape")
    bad[b"poison-str"] = (_seq("str", ["a", "b"]), "bad_dtype")
    return bad


def _seq(event_id: str, features: object) -> bytes:
    return orjson.dumps({"id": event_id, "model": "seq_trend", "features": features})


def _sequences() -> dict[str, np.ndarray]:
    rng = random.Random(13)
    out = {}
    for i in range(SEQUENCES):
        length = rng.randint(2, 40)
        slope = rng.uniform(-1, 1)
        out[f"seq-{i}"] = np.asarray([slope * t + rng.gauss(0, 0.3) for t in range(length)], np.float32)
    return out


def _seq_value(event_id: str, seq: np.ndarray, i: int) -> bytes:
    values = seq.tolist()
    if i % 2:
        return orjson.dumps({"id": event_id, "model": "seq_trend", "inputs": {"sequence": values}})
    return orjson.dumps({"id": event_id, "model": "seq_trend", "features": values})


def test_poison_events_are_dead_lettered_and_every_valid_event_is_predicted_by_the_same_worker(
    stack_settings: Settings, workers: StartWorker
) -> None:
    worker = workers(stack_settings)
    pid = worker.process.pid
    t, bootstrap = stack_settings.topics, stack_settings.kafka.bootstrap_servers
    bad = _poison()
    for key, (value, _) in bad.items():  # one by one: each big value alone in its batch
        produce(bootstrap, t.events, [(key, value, [])], BIG_PRODUCER)
    sequences = _sequences()
    produce(
        bootstrap,
        t.events,
        [(f"s{i % 7}".encode(), _seq_value(name, s, i), []) for i, (name, s) in enumerate(sequences.items())],
    )
    valid = list(generate(load_profiles(MODEL_REPOSITORY), VALID_AFTER, seed=13, keys=32, prefix="after"))
    produce(bootstrap, t.events, [(ev.key, ev.value, []) for ev in valid])

    expected = len(sequences) + len(valid)
    out = collect(
        bootstrap,
        [t.predictions, t.dlq],
        done=lambda got: len(got[t.predictions]) >= expected and len(got[t.dlq]) >= len(bad),
        timeout=300,
        settle=3.0,
    )
    _check_dead_letters(out[t.dlq], bad)
    _check_predictions(out[t.predictions], sequences, {ev.id: ev for ev in valid})

    assert worker.process.alive and worker.process.pid == pid, "the worker was never restarted"
    with urllib.request.urlopen(worker.metrics_url.replace("/metrics", "/healthz"), timeout=5) as response:
        assert response.status == 200 and json.loads(response.read()) == {"status": "alive"}
    log = worker.process.log_tail()
    assert "pipeline failed" not in log and "worker failed" not in log, log[-2000:]


def _check_dead_letters(dead: list[Msg], bad: dict[bytes, tuple[bytes, str]]) -> None:
    by_key = {m.key: m for m in dead}
    assert len(by_key) == len(dead), "a bad record was dead-lettered twice"
    assert set(by_key) == set(bad), f"missing: {sorted(set(bad) - set(by_key))}"
    for key, (value, reason) in bad.items():
        msg = by_key[key]
        assert msg.headers["error.reason"].decode() == reason, (key, msg.headers.get("error.message"))
        size = record_size_of(msg)
        assert size <= LIMIT, (key, size)
        if len(value) > 990_000:
            assert msg.headers["error.value_truncated"] == b"true", key
            assert msg.headers["error.value_size"] == str(len(value)).encode()
            assert msg.value and value.startswith(msg.value) and len(msg.value) > 990_000
        else:
            assert msg.value == value and "error.value_truncated" not in msg.headers


def record_size_of(msg: Msg) -> int:
    """Its size as the engine counts it against the limit."""
    return record_size(OutRecord(msg.topic, msg.key, msg.value, tuple(msg.headers.items())))


def _check_predictions(
    predictions: list[Msg], sequences: dict[str, np.ndarray], valid: dict[str, GeneratedEvent]
) -> None:
    docs = [json.loads(m.value or b"") for m in predictions]
    ids = [d["id"] for d in docs]
    assert len(set(ids)) == len(ids), "an event was predicted twice"
    wanted = set(sequences) | set(valid)
    assert set(ids) == wanted, (
        f"missing: {sorted(wanted - set(ids))[:5]}, extra: {sorted(set(ids) - wanted)[:5]}"
    )
    seq_reference = load_sequence_reference(MODEL_REPOSITORY / "seq_trend")
    references = {m: load_reference(MODEL_REPOSITORY / m) for m in ("breast_cancer", "iris")}
    for doc in docs:
        got = np.asarray(doc["outputs"]["probabilities"], np.float32)
        if doc["id"] in sequences:
            want = seq_reference(sequences[doc["id"]])[0]
        else:
            ev = valid[doc["id"]]
            want = references[ev.model](ev.features[None, :])[0]
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0, err_msg=doc["id"])
