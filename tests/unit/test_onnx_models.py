"""The ONNX models: exported from the trained weights, equal to the numpy reference, checked against
their configs, reproducible; and their compressed variants (inference/variants.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from inference.onnx_graph import GraphMismatch, check_graph, config_as_dict
from inference.repository import RepositoryError, parse_config, validate_model
from inference.variants import KINDS, VariantError, make_variant, variant_name
from model_repository import train
from model_repository.numpy_reference import load_reference, load_sequence_reference
from model_repository.onnx_export import build_model, export_one
from ops.stack import refuse_invalid_models

REPO = Path(__file__).resolve().parents[2]
MODEL_REPOSITORY = REPO / "model_repository"
MLP_MODELS = ("breast_cancer", "iris")


def session(model_dir: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("model", MLP_MODELS)
def test_onnx_export_equals_the_numpy_reference_on_every_row(model: str) -> None:
    split = train.load_split(model)
    x = np.concatenate([split.x_train, split.x_test])
    got = session(MODEL_REPOSITORY / f"{model}_onnx").run(None, {"features": x})[0]
    want = load_reference(MODEL_REPOSITORY / model)(x)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_onnx_sequence_export_equals_the_numpy_reference_at_every_length() -> None:
    sequences, _ = train.trend_sequences(count=400, seed=11)
    onnx_model = session(MODEL_REPOSITORY / "seq_trend_onnx")
    reference = load_sequence_reference(MODEL_REPOSITORY / "seq_trend")
    got = train.predict_by_length(lambda x: onnx_model.run(None, {"sequence": x})[0], sequences)
    want = train.predict_by_length(reference, sequences)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    flat = np.full((2, 7), 3.0, np.float32)  # no spread: correlation 0, as numpy
    np.testing.assert_allclose(onnx_model.run(None, {"sequence": flat})[0], reference(flat), atol=1e-6)


@pytest.mark.parametrize("model", [*MLP_MODELS, "seq_trend"])
def test_export_reproduces_the_committed_onnx_files_exactly(model: str, tmp_path: Path) -> None:
    shutil.copytree(MODEL_REPOSITORY / model, tmp_path / model)
    out = export_one(tmp_path, model)
    committed = MODEL_REPOSITORY / out.name
    for name in ("config.pbtxt", "1/model.onnx"):
        assert (out / name).read_bytes() == (committed / name).read_bytes(), name
    with np.load(out / "calibration.npz") as new, np.load(committed / "calibration.npz") as old:
        assert new.files == old.files
        for key in old.files:
            np.testing.assert_array_equal(new[key], old[key])


@pytest.mark.parametrize("model", [*MLP_MODELS, "seq_trend"])
def test_committed_onnx_models_are_production_shaped_and_valid(model: str) -> None:
    model_dir = MODEL_REPOSITORY / f"{model}_onnx"
    config = parse_config(model_dir / "config.pbtxt")
    assert config.platform == "onnxruntime_onnx" and config.HasField("dynamic_batching")
    assert config.max_batch_size == train.MAX_BATCH_SIZE
    assert validate_model(model_dir) == []
    assert onnx.load(str(model_dir / "1" / "model.onnx")).ir_version <= 8  # Triton 23.x's ONNX Runtime


def mismatched(tmp_path: Path, n_features: int = 31) -> Path:
    """breast_cancer_onnx whose graph takes ``n_features`` inputs while its config says 30."""
    model_dir = tmp_path / "breast_cancer_onnx"
    shutil.copytree(MODEL_REPOSITORY / "breast_cancer_onnx", model_dir)
    with np.load(MODEL_REPOSITORY / "breast_cancer" / "1" / "weights.npz") as data:
        arrays = {k: data[k] for k in data.files}
    arrays["mean"] = np.zeros(n_features, np.float32)
    arrays["scale"] = np.ones(n_features, np.float32)
    arrays["W0"] = np.zeros((n_features, arrays["W0"].shape[1]), np.float32)
    onnx.save(build_model(arrays, sequence=False, name="wrong"), model_dir / "1" / "model.onnx")
    return model_dir


def test_a_graph_whose_input_differs_from_its_config_is_refused_naming_the_mismatch(tmp_path: Path) -> None:
    model_dir = mismatched(tmp_path)
    config = config_as_dict(parse_config(model_dir / "config.pbtxt"))
    with pytest.raises(GraphMismatch) as caught:
        check_graph(config, model_dir / "1" / "model.onnx")
    assert "input 'features': the config says FP32 [?, 30], the graph has FP32 [?, 31]" in str(caught.value)
    [problem] = validate_model(model_dir)
    assert problem.field == "input/output" and "[?, 31]" in problem.message
    with pytest.raises(RepositoryError) as refused:  # sie up stops here, before starting Triton
        refuse_invalid_models(tmp_path)
    assert "breast_cancer_onnx/1/model.onnx: input/output: the graph does not match" in str(refused.value)


def test_an_output_renamed_in_the_config_is_named_on_both_sides(tmp_path: Path) -> None:
    model_dir = tmp_path / "iris_onnx"
    shutil.copytree(MODEL_REPOSITORY / "iris_onnx", model_dir)
    text = (model_dir / "config.pbtxt").read_text()
    (model_dir / "config.pbtxt").write_text(text.replace('name: "probabilities"', 'name: "scores"'))
    with pytest.raises(GraphMismatch) as caught:
        check_graph(config_as_dict(parse_config(model_dir / "config.pbtxt")), model_dir / "1" / "model.onnx")
    message = str(caught.value)
    assert "output 'scores' is in the config but not in the graph (graph outputs: 'probabilities')" in message
    assert "output 'probabilities' is in the graph but not in the config" in message


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("variants")
    for model in MLP_MODELS:
        shutil.copytree(MODEL_REPOSITORY / f"{model}_onnx", repo / f"{model}_onnx")
        for kind in KINDS:
            make_variant(repo, f"{model}_onnx", kind)
    return repo


@pytest.mark.parametrize("model", MLP_MODELS)
@pytest.mark.parametrize("kind", KINDS)
def test_variants_keep_fp32_io_and_agree_with_the_original_on_held_out_rows(
    variants: Path, model: str, kind: str
) -> None:
    split = train.load_split(model)
    name = variant_name(f"{model}_onnx", kind)
    config = parse_config(variants / name / "config.pbtxt")
    assert config.name == name and config.platform == "onnxruntime_onnx"
    assert validate_model(variants / name) == []
    original = session(variants / f"{model}_onnx").run(None, {"features": split.x_test})[0]
    got = session(variants / name).run(None, {"features": split.x_test})[0]
    assert got.dtype == np.float32
    assert np.mean(got.argmax(1) == original.argmax(1)) >= 0.99
    assert np.abs(got - original).max() < 0.1
    assert abs(train.accuracy(got, split.y_test) - train.accuracy(original, split.y_test)) <= 0.01


def test_int8_static_variant_holds_quantize_dequantize_nodes(variants: Path) -> None:
    ops = {n.op_type for n in onnx.load(str(variants / "iris_onnx_int8" / "1" / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_variants_of_a_python_backend_model_or_without_calibration_are_refused(tmp_path: Path) -> None:
    shutil.copytree(MODEL_REPOSITORY / "iris", tmp_path / "iris")
    with pytest.raises(VariantError, match="is not ONNX"):
        make_variant(tmp_path, "iris", "fp16")
    shutil.copytree(MODEL_REPOSITORY / "iris_onnx", tmp_path / "iris_onnx")
    (tmp_path / "iris_onnx" / "calibration.npz").unlink()
    with pytest.raises(VariantError, match="no calibration data"):
        make_variant(tmp_path, "iris_onnx", "int8")
    with pytest.raises(VariantError, match="unknown variant kind"):
        make_variant(tmp_path, "iris_onnx", "int4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iris", "iris_onnx"]
