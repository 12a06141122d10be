"""Routing on real servers: topic default, A/B between two versions, a good and a broken shadow.

Its own tritonserver serves breast_cancer versions 1 and 2 side by side (the
session Triton other tests share keeps serving version 1 only).
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.routing import Router
from engine.settings import Settings
from inference.repository import deploy
from inference.version_policy import write_version_policy
from model_repository.numpy_reference import load_reference
from ops.embedded import KafkaBroker, TritonProcess, create_topics, free_port, start_triton
from ops.eventgen import generate, load_profiles
from ops.stack import copy_model_repository
from tests.integration.conftest import MODEL_REPOSITORY, StartWorker
from tests.integration.kafka import collect, produce
from tests.integration.test_model_rollout import version_two

pytestmark = pytest.mark.integration

CANCER, IRIS = 1200, 300


@pytest.fixture
def two_version_triton(tmp_path: Path) -> Iterator[tuple[TritonProcess, Path]]:
    repository = copy_model_repository(MODEL_REPOSITORY, tmp_path)
    deploy(repository, "breast_cancer", version_two(repository / "breast_cancer" / "1", tmp_path / "v2"))
    write_version_policy(repository / "breast_cancer", [1, 2])
    triton = start_triton(
        repository,
        tmp_path / "triton",
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
    )
    yield triton, repository
    triton.stop()


def routing(iris_topic: str, shadow_topic: str) -> dict:
    return {
        "topic_models": {iris_topic: "iris"},
        "experiments": {
            "breast_cancer": [
                {"name": "control", "model": "breast_cancer", "version": "1", "weight": 1},
                {"name": "treatment", "model": "breast_cancer", "version": "2", "weight": 1},
            ]
        },
        "shadows": {
            "breast_cancer": [{"model": "breast_cancer", "version": "2"}],
            "iris": [{"model": "nope"}],
        },
        "shadow_topic": shadow_topic,
    }


def test_ab_arms_topic_defaults_and_shadows_on_real_servers(
    broker: KafkaBroker,
    two_version_triton: tuple[TritonProcess, Path],
    workers: StartWorker,
    tmp_path: Path,
) -> None:
    triton, repository = two_version_triton
    tag = uuid.uuid4().hex[:8]
    iris_topic, shadow_topic = f"ev-iris-{tag}", f"shadow-{tag}"
    settings = Settings(
        kafka={"bootstrap_servers": broker.bootstrap, "group_id": f"rt-{tag}", "session_timeout_s": 6.0},
        topics={"events": f"ev-{tag}", "predictions": f"pred-{tag}", "dlq": f"dlq-{tag}", "partitions": 4},
        triton={"url": triton.grpc_url, "http_url": triton.http_url},
        routing=routing(iris_topic, shadow_topic),
        data_dir=tmp_path / "data",
    )
    t = settings.topics
    create_topics(
        broker.bootstrap, {name: 4 for name in (t.events, iris_topic, t.predictions, t.dlq, shadow_topic)}
    )
    worker = workers(settings)

    cancer = list(generate(load_profiles(MODEL_REPOSITORY, ["breast_cancer"]), CANCER, seed=4, keys=50))
    iris = list(generate(load_profiles(MODEL_REPOSITORY, ["iris"]), IRIS, seed=5, keys=20, prefix="iris"))
    produce(broker.bootstrap, t.events, [(e.key, e.value, []) for e in cancer])
    no_model = [(e.key, orjson.dumps({"id": e.id, "features": e.features.tolist()}), []) for e in iris]
    produce(broker.bootstrap, iris_topic, no_model)

    out = collect(
        broker.bootstrap,
        [t.predictions, t.dlq, shadow_topic],
        done=lambda got: len(got[t.predictions]) >= CANCER + IRIS,
        timeout=180,
        settle=3.0,
    )
    assert out[t.dlq] == []
    docs = [json.loads(m.value or b"") for m in out[t.predictions]]
    assert sorted(d["id"] for d in docs) == sorted(e.id for e in cancer + iris)
    by_id = {d["id"]: d for d in docs}

    # Topic default: keyless-model events on the iris topic went to iris, outside the experiment.
    assert all(by_id[e.id]["model"] == "iris" and "arm" not in by_id[e.id] for e in iris)

    # A/B: the arm follows the key, names the version, and the output is that version's.
    router = Router(settings.routing, settings.triton.default_model)
    arm_of_key: dict[bytes, set[str]] = defaultdict(set)
    refs = {v: load_reference(repository / "breast_cancer", int(v)) for v in ("1", "2")}
    for e in cancer:
        doc = by_id[e.id]
        arm_of_key[e.key].add(doc["arm"])
        assert doc["arm"] == router.route(t.events, "breast_cancer", e.key).arm
        assert doc["model_version"] == {"control": "1", "treatment": "2"}[doc["arm"]]
        expected = refs[doc["model_version"]](e.features[None, :])[0]
        np.testing.assert_allclose(doc["outputs"]["probabilities"], expected, atol=1e-5, rtol=0)
    assert all(len(arms) == 1 for arms in arm_of_key.values()), "a key was split across arms"
    arms = Counter(by_id[e.id]["arm"] for e in cancer)
    assert set(arms) == {"control", "treatment"}

    # Shadows: copies on their own topic only; the broken shadow changed nothing above.
    shadow = [json.loads(m.value or b"") for m in out[shadow_topic]]
    assert shadow, "the working shadow produced nothing"
    assert all(d["model"] == "breast_cancer" and d["model_version"] == "2" for d in shadow)
    assert {d["shadow_of"] for d in shadow} == {"breast_cancer"}
    assert {d["id"] for d in shadow} <= {e.id for e in cancer}
    assert not any("shadow_of" in d for d in docs)

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(
            urllib.request.urlopen(worker.metrics_url, timeout=10).read().decode()
        )
        for s in f.samples
    }
    for arm, version in (("control", "1"), ("treatment", "2")):
        key = ("sie_ab_predictions_total", (("arm", arm), ("model", "breast_cancer"), ("version", version)))
        assert samples[key] == arms[arm]
    broken = sum(
        samples.get(("sie_shadow_predictions_total", (("model", "nope"), ("outcome", o))), 0)
        for o in ("error", "dropped")
    )
    assert broken == IRIS
    outcomes = {
        o: samples.get(("sie_shadow_predictions_total", (("model", "breast_cancer"), ("outcome", o))), 0)
        for o in ("ok", "error", "dropped")
    }
    assert outcomes["ok"] == len(shadow) and sum(outcomes.values()) == CANCER, outcomes
    print(
        f"\nrouting: arms {dict(arms)}; shadow copies delivered {len(shadow)}/{CANCER}; "
        f"broken shadow {broken:.0f}"
    )
