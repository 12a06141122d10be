"""Export the repository's trained models to ONNX, from their ``weights.npz`` (no retraining).

Usage::

    python model_repository/onnx_export.py [--repository DIR]

For each trained model ``<name>`` (``breast_cancer``, ``iris``, ``seq_trend``)
this writes a production-shaped ONNX model beside it::

    <repository>/<name>_onnx/config.pbtxt        # platform "onnxruntime_onnx", dynamic batching
    <repository>/<name>_onnx/1/model.onnx        # the same math as <name>/1/model.py
    <repository>/<name>_onnx/calibration.npz     # training inputs, for INT8 calibration

No ``reference_profile.json`` is copied: the ONNX models are served beside the
numpy ones (the drift monitor and the demo producer keep to those); events
name ``<name>_onnx`` to reach them.

The graphs are built with ``onnx.helper`` from the float32 arrays: scaler
(``(x - mean) / scale``), dense layers with ReLU, softmax. ``seq_trend``'s
length-independent summary (slope, correlation with time, mean step, log
length; ``sequence_backend.summarize``) is computed in float64 inside the
graph, as numpy does, then cast to float32 for the MLP. Opset 17 and IR
version 8, which every ONNX Runtime since 1.14 (Triton 23.x and later) loads.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

if __package__ in (None, ""):  # run as a script (python model_repository/onnx_export.py): the package's root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference.variants import CALIBRATION_FILE, save_calibration  # noqa: E402
from model_repository.datasets import (  # noqa: E402
    MAX_BATCH_SIZE,
    SEQUENCE_MODELS,
    load_split,
    split_indices,
    trend_sequences,
)

HERE = Path(__file__).resolve().parent
OPSET = 17
IR_VERSION = 8
SUFFIX = "_onnx"
CALIBRATION_ROWS = 512  # at most this many training inputs are kept for calibration
MLP_MODELS = ("breast_cancer", "iris")


def _const(name: str, value: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def mlp_nodes(
    arrays: dict[str, np.ndarray], source: str, output: str
) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """Nodes ``source -> (x - mean) / scale -> dense/ReLU ... -> softmax -> output`` and their weights."""
    n_layers = sum(1 for k in arrays if k.startswith("W"))
    inits = [
        _const("mean", arrays["mean"].astype(np.float32)),
        _const("scale", arrays["scale"].astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Sub", [source, "mean"], ["centred_x"], name="scaler_sub"),
        helper.make_node("Div", ["centred_x", "scale"], ["h0"], name="scaler_div"),
    ]
    h = "h0"
    for i in range(n_layers):
        inits += [_const(f"W{i}", arrays[f"W{i}"].astype(np.float32))]
        inits += [_const(f"b{i}", arrays[f"b{i}"].astype(np.float32))]
        nodes.append(helper.make_node("MatMul", [h, f"W{i}"], [f"mm{i}"], name=f"dense{i}_matmul"))
        nodes.append(helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"z{i}"], name=f"dense{i}_add"))
        h = f"z{i}"
        if i < n_layers - 1:
            nodes.append(helper.make_node("Relu", [h], [f"a{i}"], name=f"dense{i}_relu"))
            h = f"a{i}"
    nodes.append(helper.make_node("Softmax", [h], [output], name="softmax", axis=1))
    return nodes, inits


def summary_nodes(source: str, output: str) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """``sequence_backend.summarize`` as nodes: ``source [N, L]`` float32 -> ``output [N, 4]`` float32."""
    d = TensorProto.DOUBLE
    inits = [
        _const("one_i", np.array(1, np.int64)),
        _const("zero_i", np.array(0, np.int64)),
        _const("one_d", np.array(1.0)),
        _const("half_d", np.array(0.5)),
        _const("zero_d", np.array(0.0)),
        _const("tiny_d", np.array(1e-300)),
        _const("axis1", np.array([1], np.int64)),
    ]
    n = helper.make_node
    nodes = [
        n("Cast", [source], ["xd"], to=d),
        n("Shape", ["xd"], ["shape"]),
        n("Gather", ["shape", "one_i"], ["length"], axis=0),
        n("Cast", ["length"], ["length_d"], to=d),
        n("Range", ["zero_i", "length", "one_i"], ["steps"]),
        n("Cast", ["steps"], ["steps_d"], to=d),
        n("Sub", ["length_d", "one_d"], ["length_m1"]),
        n("Mul", ["length_m1", "half_d"], ["middle"]),
        n("Sub", ["steps_d", "middle"], ["t"]),
        n("Mul", ["t", "t"], ["t2"]),
        n("ReduceSum", ["t2"], ["sxx"], keepdims=0),
        n("ReduceMean", ["xd"], ["row_mean"], axes=[1], keepdims=1),
        n("Sub", ["xd", "row_mean"], ["centred"]),
        n("MatMul", ["centred", "t"], ["ct"]),
        n("Div", ["ct", "sxx"], ["slope"]),
        n("Mul", ["centred", "centred"], ["c2"]),
        n("ReduceSum", ["c2", "axis1"], ["c2sum"], keepdims=0),
        n("Sqrt", ["c2sum"], ["spread"]),
        n("Sqrt", ["sxx"], ["sqrt_sxx"]),
        n("Max", ["spread", "tiny_d"], ["spread_safe"]),
        n("Mul", ["sqrt_sxx", "spread_safe"], ["denominator"]),
        n("Div", ["ct", "denominator"], ["raw_corr"]),
        n("Greater", ["spread", "zero_d"], ["has_spread"]),
        n("Where", ["has_spread", "raw_corr", "zero_d"], ["correlation"]),
        n("Sub", ["length", "one_i"], ["last"]),
        n("Gather", ["xd", "last"], ["x_last"], axis=1),
        n("Gather", ["xd", "zero_i"], ["x_first"], axis=1),
        n("Sub", ["x_last", "x_first"], ["rise"]),
        n("Div", ["rise", "length_m1"], ["step"]),
        n("Log", ["length_d"], ["log_len"]),
        n("Shape", ["slope"], ["rows"]),
        n("Expand", ["log_len", "rows"], ["log_length"]),
    ]
    columns = ["slope", "correlation", "step", "log_length"]
    for col in columns:
        nodes.append(n("Unsqueeze", [col, "axis1"], [f"{col}_col"]))
    nodes.append(n("Concat", [f"{c}_col" for c in columns], ["summary_d"], axis=1))
    nodes.append(n("Cast", ["summary_d"], [output], to=TensorProto.FLOAT))
    for i, node in enumerate(nodes):
        node.name = node.name or f"summary_{i}_{node.op_type.lower()}"
    return nodes, inits


def build_model(arrays: dict[str, np.ndarray], *, sequence: bool, name: str) -> onnx.ModelProto:
    """The ONNX model of one set of weights (``sequence``: the variable-length ``seq_trend`` kind)."""
    n_classes = int(arrays[f"b{sum(1 for k in arrays if k.startswith('W')) - 1}"].shape[0])
    dims: list[str | int]
    if sequence:
        input_name, dims = "sequence", ["batch", "length"]
        pre, pre_inits = summary_nodes(input_name, "summary")
        nodes, inits = mlp_nodes(arrays, "summary", "probabilities")
        nodes, inits = pre + nodes, pre_inits + inits
    else:
        input_name, dims = "features", ["batch", int(arrays["mean"].shape[0])]
        nodes, inits = mlp_nodes(arrays, input_name, "probabilities")
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", n_classes])],
        initializer=inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="sie-onnx-export"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def render_onnx_config(name: str, input_name: str, dims: int, n_classes: int, max_batch_size: int) -> str:
    """A production ``config.pbtxt`` for an ONNX model (onnxruntime platform, dynamic batching)."""
    return f"""# Generated by model_repository/onnx_export.py - do not edit by hand.
# Production Triton serves this with its onnxruntime backend; the local stack (`sie up`, the
# tests) with ONNX Runtime inside a python-backend model (inference/onnxruntime_backend.py).
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [
  {{
    name: "{input_name}"
    data_type: TYPE_FP32
    dims: [ {dims} ]
  }}
]
output [
  {{
    name: "probabilities"
    data_type: TYPE_FP32
    dims: [ {n_classes} ]
  }}
]
dynamic_batching {{
  preferred_batch_size: [ 64, 128 ]
  max_queue_delay_microseconds: 500
}}
# CPU instance; on GPU hosts see docs/models.md (KIND_GPU with TensorRT FP16).
instance_group [
  {{
    kind: KIND_CPU
    count: 1
  }}
]
version_policy: {{ latest: {{ num_versions: 1 }} }}
"""


def calibration_batches(name: str) -> list[np.ndarray]:
    """Training inputs of ``name`` (at most ``CALIBRATION_ROWS``), batched by shape."""
    rng = np.random.default_rng(0)
    if name in SEQUENCE_MODELS:
        sequences, labels = trend_sequences()
        train_idx, _ = split_indices(labels)
        chosen = rng.choice(train_idx, min(CALIBRATION_ROWS, len(train_idx)), replace=False)
        by_length: dict[int, list[np.ndarray]] = {}
        for i in sorted(chosen):
            by_length.setdefault(len(sequences[i]), []).append(sequences[i])
        return [np.stack(v) for _, v in sorted(by_length.items())]
    x_train = load_split(name).x_train
    rows = rng.choice(len(x_train), min(CALIBRATION_ROWS, len(x_train)), replace=False)
    return [x_train[np.sort(rows)]]


def export_one(repository: Path, name: str, version: int = 1) -> Path:
    """Write ``<name>_onnx`` from ``<name>/<version>/weights.npz``; returns its model directory."""
    source = Path(repository) / name
    with np.load(source / str(version) / "weights.npz") as data:
        arrays = {k: data[k] for k in data.files}
    sequence = name in SEQUENCE_MODELS
    target = Path(repository) / f"{name}{SUFFIX}"
    (target / "1").mkdir(parents=True, exist_ok=True)
    model = build_model(arrays, sequence=sequence, name=f"{name}{SUFFIX}")
    onnx.save(model, target / "1" / "model.onnx")
    n_classes = int(model.graph.output[0].type.tensor_type.shape.dim[1].dim_value)
    dims = -1 if sequence else int(arrays["mean"].shape[0])
    input_name = model.graph.input[0].name
    config = render_onnx_config(target.name, input_name, dims, n_classes, MAX_BATCH_SIZE)
    (target / "config.pbtxt").write_text(config)
    save_calibration(target / CALIBRATION_FILE, calibration_batches(name))
    return target


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=HERE, help="model repository directory")
    args = parser.parse_args(argv)
    for name in (*MLP_MODELS, *SEQUENCE_MODELS):
        target = export_one(args.repository, name)
        size = (target / "1" / "model.onnx").stat().st_size
        print(f"{name}: wrote {target / '1' / 'model.onnx'} ({size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
