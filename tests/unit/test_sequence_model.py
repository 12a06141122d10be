"""The variable-length model ``seq_trend``: a [-1] input, trained reproducibly, scored by length."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from google.protobuf.json_format import MessageToDict
from tritonclient.grpc import model_config_pb2 as mc

from engine.modelspec import spec_from_config
from inference.repository import errors, validate_model
from model_repository import train
from model_repository.numpy_reference import load_sequence_reference, sequence_module

MODEL_REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
MODEL = MODEL_REPOSITORY / "seq_trend"


@pytest.fixture(scope="module")
def retrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("seq")
    train.train_one("seq_trend", out, 1)
    return out / "seq_trend"


def test_config_declares_one_variable_length_input_with_dynamic_batching() -> None:
    config = text_format.Parse((MODEL / "config.pbtxt").read_text(), mc.ModelConfig())
    assert [(i.name, list(i.dims), mc.DataType.Name(i.data_type)) for i in config.input] == [
        ("sequence", [-1], "TYPE_FP32")
    ]
    assert [(o.name, list(o.dims)) for o in config.output] == [("probabilities", [2])]
    assert config.max_batch_size == 256 and config.HasField("dynamic_batching")
    assert errors(validate_model(MODEL)) == []


def test_engine_reads_the_input_as_variable_length() -> None:
    config = text_format.Parse((MODEL / "config.pbtxt").read_text(), mc.ModelConfig())
    spec = spec_from_config(MessageToDict(config, preserving_proto_field_name=True))
    assert spec.inputs[0].dims == (-1,) and spec.inputs[0].max_elements is None
    assert spec.inputs[0].shape_matches((3,)) and spec.inputs[0].shape_matches((64,))


def test_held_out_accuracy_is_at_least_ninety_percent_scored_one_batch_per_length() -> None:
    metrics = json.loads((MODEL / "1" / "metrics.json").read_text())
    assert metrics["model"] == "seq_trend" and metrics["n_test"] >= 500
    assert metrics["test_accuracy"] >= 0.9


def test_retraining_reproduces_the_committed_model_exactly(retrained: Path) -> None:
    with np.load(retrained / "1" / "weights.npz") as new, np.load(MODEL / "1" / "weights.npz") as committed:
        assert new.files == committed.files
        for key in committed.files:
            np.testing.assert_array_equal(new[key], committed[key], err_msg=key)
    for name in ("config.pbtxt", "1/model.py"):
        assert (retrained / name).read_text() == (MODEL / name).read_text(), name
    new, old = (json.loads((p / "1" / "metrics.json").read_text()) for p in (retrained, MODEL))
    assert new == {k: pytest.approx(v) if isinstance(v, float) else v for k, v in old.items()}
    assert not (MODEL / "reference_profile.json").exists(), "drift and eventgen expect fixed feature columns"


def test_model_file_is_the_sequence_template() -> None:
    assert (MODEL / "1" / "model.py").read_bytes() == (MODEL_REPOSITORY / "sequence_backend.py").read_bytes()


def test_rising_and_falling_lines_of_any_length_are_told_apart() -> None:
    predict = load_sequence_reference(MODEL)
    for length in (2, 4, 17, 64, 300):
        t = np.arange(length, dtype=np.float32)
        rising, falling = predict(np.stack([3 + 0.5 * t, 3 - 0.5 * t]))
        assert rising.argmax() == 1 and falling.argmax() == 0, length
        assert rising.sum() == pytest.approx(1.0, abs=1e-5)


def test_a_batch_of_one_length_scores_each_row_as_if_alone() -> None:
    predict = load_sequence_reference(MODEL)
    rows = np.random.default_rng(3).normal(size=(5, 9)).astype(np.float32)
    together = predict(rows)
    alone = np.concatenate([predict(row) for row in rows])
    np.testing.assert_allclose(together, alone, rtol=1e-6)


@pytest.mark.parametrize(
    ("x", "problem"),
    [
        (np.zeros((2, 1), np.float32), "at least 2 values"),
        (np.zeros((2, 0), np.float32), "at least 2 values"),
        (np.zeros((2, 3, 1), np.float32), "shape [batch, length]"),
        (np.zeros((2, 3), np.float64), "FP32"),
        (np.array([[1.0, np.nan]], np.float32), "NaN"),
    ],
)
def test_the_model_rejects_what_it_cannot_score(x: np.ndarray, problem: str) -> None:
    error = sequence_module().validate_batch(x)
    assert error is not None and problem in error
