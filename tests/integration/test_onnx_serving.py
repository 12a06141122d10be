"""ONNX on real servers: an ONNX model and its INT8 variant served by tritonserver, answering through
the engine; the INT8 variant shadowing the original, its agreement read from the live worker's
metrics; a graph that does not match its config refused at load.

Its own tritonserver serves ``breast_cancer_onnx`` (committed) and ``breast_cancer_onnx_int8``
(made by ``inference.variants`` in this test's copy of the repository; ~4 kB).
"""

from __future__ import annotations

import json
import shutil
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from engine.settings import Settings
from inference.model_control import ModelControl
from inference.repository import RepositoryError
from inference.variants import make_variant
from model_repository.numpy_reference import load_reference
from ops.embedded import KafkaBroker, TritonProcess, create_topics, free_port, start_triton
from ops.eventgen import encode_event, generate, load_profiles
from ops.stack import copy_model_repository
from tests.integration.conftest import MODEL_REPOSITORY, StartWorker
from tests.integration.kafka import collect, produce
from tests.unit.test_onnx_models import mismatched

pytestmark = pytest.mark.integration

ONNX, INT8 = "breast_cancer_onnx", "breast_cancer_onnx_int8"
PER_MODEL = 600
INT8_THRESHOLD = 0.97


@pytest.fixture
def onnx_triton(tmp_path: Path) -> Iterator[tuple[TritonProcess, Path]]:
    repository = copy_model_repository(MODEL_REPOSITORY, tmp_path)
    make_variant(repository, ONNX, "int8")
    triton = start_triton(
        repository,
        tmp_path / "triton",
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        models=[ONNX, INT8],
    )
    yield triton, repository
    triton.stop()


def metric_samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_onnx_model_and_its_int8_variant_answer_through_the_engine_and_the_shadow_agreement_is_exported(
    broker: KafkaBroker,
    onnx_triton: tuple[TritonProcess, Path],
    workers: StartWorker,
    tmp_path: Path,
) -> None:
    triton, _ = onnx_triton
    tag = uuid.uuid4().hex[:8]
    shadow_topic = f"shadow-{tag}"
    settings = Settings(
        kafka={"bootstrap_servers": broker.bootstrap, "group_id": f"onnx-{tag}", "session_timeout_s": 6.0},
        topics={"events": f"ev-{tag}", "predictions": f"pred-{tag}", "dlq": f"dlq-{tag}", "partitions": 4},
        triton={"url": triton.grpc_url, "http_url": triton.http_url, "default_model": ONNX},
        routing={
            "shadows": {ONNX: [{"model": INT8}]},
            "shadow_topic": shadow_topic,
            "shadow_min_agreement": {INT8: INT8_THRESHOLD},
        },
        data_dir=tmp_path / "data",
    )
    t = settings.topics
    create_topics(broker.bootstrap, {n: 4 for n in (t.events, t.predictions, t.dlq, shadow_topic)})
    worker = workers(settings)

    profile = load_profiles(MODEL_REPOSITORY, ["breast_cancer"], data_rows=True)
    events = list(generate(profile, 2 * PER_MODEL, seed=8, keys=40))
    model_of = {e.id: (ONNX if i % 2 == 0 else INT8) for i, e in enumerate(events)}
    records = [(e.key, encode_event(e.id, e.features, model_of[e.id]), []) for e in events]
    produce(broker.bootstrap, t.events, records)
    out = collect(
        broker.bootstrap,
        [t.predictions, t.dlq, shadow_topic],
        done=lambda got: len(got[t.predictions]) >= len(events),
        timeout=180,
        settle=3.0,
    )
    assert out[t.dlq] == []
    docs = {d["id"]: d for d in (json.loads(m.value or b"") for m in out[t.predictions])}
    assert sorted(docs) == sorted(model_of)

    # Both models answered their own events; ONNX FP32 equals the numpy model, INT8 is close to it.
    reference = load_reference(MODEL_REPOSITORY / "breast_cancer")
    features = {e.id: e.features for e in events}
    want = {i: reference(features[i][None, :])[0] for i in docs}
    got = {i: np.asarray(d["outputs"]["probabilities"]) for i, d in docs.items()}
    assert all(docs[i]["model"] == model_of[i] for i in docs)
    fp32 = [i for i in docs if model_of[i] == ONNX]
    int8 = [i for i in docs if model_of[i] == INT8]
    for i in fp32:
        np.testing.assert_allclose(got[i], want[i], rtol=0, atol=1e-5)
    same_class = np.mean([got[i].argmax() == want[i].argmax() for i in int8])
    assert same_class >= INT8_THRESHOLD
    assert max(float(np.abs(got[i] - want[i]).max()) for i in int8) < 0.1

    # The INT8 shadow of the ONNX model: its copies on the shadow topic, agreement on the worker.
    shadow = [json.loads(m.value or b"") for m in out[shadow_topic]]
    assert shadow and all(d["model"] == INT8 and d["shadow_of"] == ONNX for d in shadow)
    agreed = sum(np.argmax(d["outputs"]["probabilities"]) == got[d["id"]].argmax() for d in shadow)
    diffs = [np.abs(np.subtract(d["outputs"]["probabilities"], got[d["id"]])).max() for d in shadow]
    largest = float(max(diffs))
    labels = (("model", ONNX), ("shadow", INT8))
    samples = metric_samples(worker.metrics_url)
    assert samples[("sie_shadow_compared_rows_total", labels)] == len(shadow)
    assert samples[("sie_shadow_agreed_rows_total", labels)] == agreed
    assert samples[("sie_shadow_agreement_ratio", labels)] == pytest.approx(agreed / len(shadow))
    assert samples[("sie_shadow_max_abs_diff", labels)] == pytest.approx(largest, abs=1e-6)
    assert samples[("sie_shadow_min_agreement", labels)] == INT8_THRESHOLD
    print(
        f"\nonnx: {len(fp32)} FP32 and {len(int8)} INT8 predictions (INT8 same class as numpy "
        f"{same_class:.2%}); shadow rows compared {len(shadow)}, agreement {agreed / len(shadow):.2%}, "
        f"max abs diff {largest:.4f}"
    )


def test_a_graph_that_does_not_match_its_config_is_refused_at_load_naming_the_mismatch(
    onnx_triton: tuple[TritonProcess, Path], tmp_path: Path
) -> None:
    triton, repository = onnx_triton
    bad = mismatched(tmp_path / "bad")
    shutil.copytree(bad, repository / "bad_onnx")
    text = (repository / "bad_onnx" / "config.pbtxt").read_text()
    (repository / "bad_onnx" / "config.pbtxt").write_text(text.replace(f'name: "{ONNX}"', 'name: "bad_onnx"'))

    # Through sie models promote: refused before Triton is asked.
    control = ModelControl(Settings(triton={"url": triton.grpc_url}).triton, repository)
    try:
        with pytest.raises(RepositoryError, match=r"input 'features': the config says FP32 \[\?, 30\]"):
            control.promote("bad_onnx")
    finally:
        control.close()

    # Straight to Triton: the backend refuses the load with the same message; the others keep serving.
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    try:
        with pytest.raises(InferenceServerException) as refused:
            client.load_model("bad_onnx")
        message = refused.value.message()
        assert "does not match the config.pbtxt of 'bad_onnx'" in message
        assert "input 'features': the config says FP32 [?, 30], the graph has FP32 [?, 31]" in message
        assert not client.is_model_ready("bad_onnx")
        assert client.is_model_ready(ONNX) and client.is_model_ready(INT8)
    finally:
        client.close()
