"""Offline figures of an ONNX model and its variants: held-out accuracy, agreement, size.

Every model file is run by ONNX Runtime in this process on the model's
held-out rows (the same fixed split ``model_repository/train.py`` measured;
``seq_trend`` batched by length, as Triton batches it) and compared with the
original FP32 export, row by row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from model_repository import train
from model_repository.datasets import split_indices
from model_repository.numpy_reference import load_reference, load_sequence_reference

Predict = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Quality:
    """One model file measured against the original."""

    model: str  # the Triton model name
    variant: str  # numpy | fp32 | fp16 | int8 | int8_dynamic
    accuracy: float
    agreement: float  # share of held-out rows with the original's class
    max_abs_diff: float  # largest absolute difference of an output probability
    size_bytes: int
    size_ratio: float  # of the FP32 ONNX file

    def as_dict(self) -> dict[str, float | str | int]:
        """JSON-ready."""
        return asdict(self)


@dataclass(frozen=True)
class HeldOut:
    """The held-out rows of one data set and a way to score them with any ``x -> probabilities``."""

    labels: np.ndarray
    score: Callable[[Predict], np.ndarray]


def held_out(name: str) -> HeldOut:
    """Held-out rows of ``name`` (``breast_cancer``, ``iris`` or ``seq_trend``)."""
    if name in train.SEQUENCE_MODELS:
        sequences, labels = train.trend_sequences()
        _, test_idx = split_indices(labels)
        rows = [sequences[i] for i in test_idx]
        return HeldOut(labels[test_idx], lambda predict: train.predict_by_length(predict, rows))
    split = train.load_split(name)
    return HeldOut(split.y_test, lambda predict: np.asarray(predict(split.x_test)))


def onnx_predict(path: Path) -> Predict:
    """``x -> probabilities`` of an ONNX file (ONNX Runtime, CPU, one thread)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: np.asarray(session.run(None, {name: x})[0])


def numpy_predict(repository: Path, name: str) -> Predict:
    """``x -> probabilities`` of the numpy python-backend model ``name``."""
    if name in train.SEQUENCE_MODELS:
        return load_sequence_reference(repository / name)
    return load_reference(repository / name)


def measure(
    data: HeldOut, original: np.ndarray, model: str, variant: str, predict: Predict, size: int, base: int
) -> Quality:
    """Quality of one model against the original's held-out probabilities."""
    probs = data.score(predict)
    return Quality(
        model=model,
        variant=variant,
        accuracy=round(train.accuracy(probs, data.labels), 6),
        agreement=round(float(np.mean(probs.argmax(1) == original.argmax(1))), 6),
        max_abs_diff=float(np.abs(probs - original).max()),
        size_bytes=size,
        size_ratio=round(size / base, 4),
    )


def quality_table(repository: Path, name: str, variants: dict[str, str]) -> list[Quality]:
    """The numpy model, the FP32 ONNX export and each variant (``kind -> Triton model``) of ``name``."""
    data = held_out(name)
    fp32_file = repository / f"{name}_onnx" / "1" / "model.onnx"
    original = data.score(onnx_predict(fp32_file))
    base = fp32_file.stat().st_size
    weights = repository / name / "1" / "weights.npz"
    rows = [
        measure(data, original, name, "numpy", numpy_predict(repository, name), weights.stat().st_size, base),
        measure(data, original, f"{name}_onnx", "fp32", onnx_predict(fp32_file), base, base),
    ]
    for kind, model in variants.items():
        path = repository / model / "1" / "model.onnx"
        rows.append(measure(data, original, model, kind, onnx_predict(path), path.stat().st_size, base))
    return rows
