"""Train the repository's MLP classifiers and write them as Triton python models.

Usage::

    python model_repository/train.py [--out DIR] [--version N] [--seed S]

For each data set bundled with scikit-learn (``breast_cancer``, ``iris``) this
fits ``StandardScaler -> MLPClassifier`` on a fixed stratified split and writes::

    <out>/<name>/config.pbtxt
    <out>/<name>/reference_profile.json   # training-input/score stats for drift
    <out>/<name>/<version>/model.py       # copy of mlp_backend.py
    <out>/<name>/<version>/weights.npz    # float32 scaler + layers
    <out>/<name>/<version>/metrics.json   # held-out accuracy

``seq_trend`` is a variable-length model (input ``sequence``, dims ``[-1]``):
is a noisy line rising or falling? Its sequences (4 to 64 values) are
generated with a fixed seed; the same MLP is fitted on the length-independent
summary of each sequence computed by ``sequence_backend.py`` (its template),
and the held-out accuracy is measured through that template, batch by length
as Triton runs it. It has no ``reference_profile.json``: the drift monitor and
the event generator work on fixed feature columns, which a sequence has not.

Each trained model is then exported to ONNX beside it (``<name>_onnx``, see
``onnx_export.py``) from the weights just written.

Everything is seeded, so re-running gives the same weights and accuracy.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

if __package__ in (None, ""):  # run as a script (python model_repository/train.py): the package's root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model_repository.datasets import (  # noqa: E402
    LOADERS,
    MAX_BATCH_SIZE,
    SEQUENCE_MODELS,
    Split,
    load_split,
    split_indices,
    trend_sequences,
)
from model_repository.onnx_export import export_one  # noqa: E402

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "mlp_backend.py"
SEQUENCE_TEMPLATE = HERE / "sequence_backend.py"
MODEL_SEED = 0
HIDDEN_UNITS = 16
QUANTILE_LEVELS = tuple(round(0.1 * i, 1) for i in range(11))


def fit(split: Split, seed: int = MODEL_SEED) -> Pipeline:
    """Fit ``StandardScaler -> MLPClassifier(16 ReLU units)`` on the training rows."""
    mlp = MLPClassifier(
        hidden_layer_sizes=(HIDDEN_UNITS,),
        activation="relu",
        solver="adam",
        alpha=1.0,
        max_iter=2000,
        random_state=seed,
    )
    pipeline = Pipeline([("scaler", StandardScaler()), ("mlp", mlp)])
    pipeline.fit(split.x_train.astype(np.float64), split.y_train)
    return pipeline


def export_weights(pipeline: Pipeline) -> dict[str, np.ndarray]:
    """The pipeline as float32 arrays ``mean, scale, W0, b0, W1, b1, ...``.

    A binary MLPClassifier has one logistic output unit; it is rewritten as a
    two-unit softmax layer with logits ``[0, z]``, which gives exactly
    ``[1 - sigmoid(z), sigmoid(z)]``, so every model ends in a softmax.
    """
    scaler: StandardScaler = pipeline.named_steps["scaler"]
    mlp: MLPClassifier = pipeline.named_steps["mlp"]
    coefs = [np.asarray(w, dtype=np.float64) for w in mlp.coefs_]
    biases = [np.asarray(b, dtype=np.float64) for b in mlp.intercepts_]
    if coefs[-1].shape[1] == 1:
        coefs[-1] = np.concatenate([np.zeros_like(coefs[-1]), coefs[-1]], axis=1)
        biases[-1] = np.concatenate([np.zeros_like(biases[-1]), biases[-1]])
    arrays: dict[str, np.ndarray] = {
        "mean": np.asarray(scaler.mean_, dtype=np.float32),
        "scale": np.asarray(scaler.scale_, dtype=np.float32),
    }
    for i, (w, b) in enumerate(zip(coefs, biases, strict=True)):
        arrays[f"W{i}"] = w.astype(np.float32)
        arrays[f"b{i}"] = b.astype(np.float32)
    return arrays


def backend() -> ModuleType:
    """The ``mlp_backend`` template, imported by path via ``numpy_reference``."""
    return numpy_reference().backend_module()


def sequence_backend() -> ModuleType:
    """The ``sequence_backend`` template, imported by path via ``numpy_reference``."""
    return numpy_reference().sequence_module()


def numpy_reference() -> ModuleType:
    """``numpy_reference.py`` beside this file, imported by path."""
    spec = importlib.util.spec_from_file_location("numpy_reference", HERE / "numpy_reference.py")
    if spec is None or spec.loader is None:
        raise ImportError("numpy_reference.py not found")
    module = importlib.util.module_from_spec(spec)
    previous = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = previous
    return module


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose arg-max class equals the label."""
    return float(np.mean(np.argmax(probabilities, axis=1) == labels))


def scores(probabilities: np.ndarray) -> np.ndarray:
    """Drift score: positive-class probability (2 classes) or max probability."""
    if probabilities.shape[1] == 2:
        return np.asarray(probabilities[:, 1])
    return np.asarray(probabilities.max(axis=1))


def describe(values: np.ndarray) -> dict[str, Any]:
    """Mean, std and the 0.0, 0.1, ..., 1.0 quantiles of a 1-d sample."""
    values = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "quantiles": [float(q) for q in np.quantile(values, QUANTILE_LEVELS)],
    }


def reference_profile(split: Split, train_probs: np.ndarray, version: int) -> dict[str, Any]:
    """Per-feature and score statistics of the training inputs, for drift checks."""
    n_classes = train_probs.shape[1]
    score_name = "positive_class_probability" if n_classes == 2 else "max_probability"
    return {
        "model": split.name,
        "version": version,
        "n_samples": int(split.x_train.shape[0]),
        "quantile_levels": list(QUANTILE_LEVELS),
        "classes": list(split.class_names),
        "features": [
            {"index": i, "name": name, **describe(split.x_train[:, i])}
            for i, name in enumerate(split.feature_names)
        ],
        "score": {"name": score_name, **describe(scores(train_probs))},
    }


def render_config(
    name: str,
    n_features: int,
    n_classes: int,
    *,
    sleep_ms_per_batch: int | None = None,
    input_name: str = "features",
) -> str:
    """The ``config.pbtxt`` text; ``sleep_ms_per_batch`` makes a slow model for chaos tests.

    ``n_features`` -1 declares a variable-length input (Triton batches requests of one length).
    """
    parameters = ""
    if sleep_ms_per_batch is not None:
        parameters = (
            "\nparameters: {\n"
            f'  key: "sleep_ms_per_batch"\n'
            f'  value: {{ string_value: "{sleep_ms_per_batch}" }}\n'
            "}\n"
        )
    return f"""# Generated by model_repository/train.py - do not edit by hand.
name: "{name}"
backend: "python"
max_batch_size: {MAX_BATCH_SIZE}
input [
  {{
    name: "{input_name}"
    data_type: TYPE_FP32
    dims: [ {n_features} ]
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
# CPU instance; use KIND_GPU on GPU hosts.
instance_group [
  {{
    kind: KIND_CPU
    count: 1
  }}
]
version_policy: {{ latest: {{ num_versions: 1 }} }}
{parameters}"""


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as stable, indented JSON."""
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def train_one(name: str, out: Path, version: int, seed: int = MODEL_SEED) -> float:
    """Train one model, write its files under ``out/name``; return held-out accuracy."""
    if name in SEQUENCE_MODELS:
        return train_sequence_model(name, out, version, seed)
    split = load_split(name)
    arrays = export_weights(fit(split, seed))
    model_dir = out / name
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    np.savez(version_dir / "weights.npz", **arrays)
    shutil.copyfile(TEMPLATE, version_dir / "model.py")
    mlp = backend()
    weights = mlp.load_weights(version_dir / "weights.npz")
    test_accuracy = accuracy(mlp.forward(weights, split.x_test), split.y_test)
    train_probs = mlp.forward(weights, split.x_train)
    write_json(
        version_dir / "metrics.json",
        {
            "model": name,
            "version": version,
            "test_accuracy": test_accuracy,
            "train_accuracy": accuracy(train_probs, split.y_train),
            "n_train": int(split.x_train.shape[0]),
            "n_test": int(split.x_test.shape[0]),
        },
    )
    write_json(model_dir / "reference_profile.json", reference_profile(split, train_probs, version))
    config = render_config(name, weights.n_features, weights.n_classes)
    (model_dir / "config.pbtxt").write_text(config)
    return test_accuracy


def predict_by_length(
    predict: Callable[[np.ndarray], np.ndarray], sequences: Sequence[np.ndarray]
) -> np.ndarray:
    """``predict`` over ``sequences`` one batch per length (as Triton batches them), in input order."""
    by_length: dict[int, list[int]] = {}
    for i, seq in enumerate(sequences):
        by_length.setdefault(len(seq), []).append(i)
    out: list[np.ndarray | None] = [None] * len(sequences)
    for rows in by_length.values():
        probs = predict(np.stack([sequences[i] for i in rows]))
        for i, p in zip(rows, probs, strict=True):
            out[i] = p
    return np.stack(out)  # type: ignore[arg-type]


def train_sequence_model(name: str, out: Path, version: int, seed: int = MODEL_SEED) -> float:
    """Train a variable-length model on generated sequences; write its files; return held-out accuracy."""
    template = sequence_backend()
    sequences, labels = trend_sequences()
    train_idx, test_idx = split_indices(labels)
    summary = np.concatenate([template.summarize(s[None, :]) for s in sequences])
    split = Split(
        name=name,
        x_train=summary[train_idx],
        x_test=summary[test_idx],
        y_train=labels[train_idx],
        y_test=labels[test_idx],
        feature_names=tuple(template.SUMMARY_NAMES),
        class_names=("falling", "rising"),
    )
    version_dir = out / name / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    np.savez(version_dir / "weights.npz", **export_weights(fit(split, seed)))
    shutil.copyfile(SEQUENCE_TEMPLATE, version_dir / "model.py")
    weights = template.load_weights(version_dir / "weights.npz")

    def evaluate(idx: np.ndarray) -> float:
        probs = predict_by_length(lambda x: template.predict(weights, x), [sequences[i] for i in idx])
        return accuracy(probs, labels[idx])

    test_accuracy = evaluate(test_idx)
    metrics = {"model": name, "version": version, "test_accuracy": test_accuracy}
    metrics |= {"train_accuracy": evaluate(train_idx), "n_train": len(train_idx), "n_test": len(test_idx)}
    write_json(version_dir / "metrics.json", metrics)
    config = render_config(name, -1, weights.n_classes, input_name=template.INPUT_NAME)
    (out / name / "config.pbtxt").write_text(config)
    return test_accuracy


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="model repository directory")
    parser.add_argument("--version", type=int, default=1, help="model version to write")
    parser.add_argument("--seed", type=int, default=MODEL_SEED, help="weight initialisation seed")
    args = parser.parse_args(argv)
    for name in (*LOADERS, *SEQUENCE_MODELS):
        acc = train_one(name, args.out, args.version, args.seed)
        onnx_dir = export_one(args.out, name, args.version)
        print(f"{name}: held-out accuracy {acc:.4f}")
        print(f"{name}: exported to ONNX as {onnx_dir.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
