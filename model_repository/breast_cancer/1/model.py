"""Triton python-backend model: a small MLP classifier evaluated in pure numpy.

This file is the single template for every model in this repository;
``train.py`` copies it to ``<model>/<version>/model.py``. The module-level
functions :func:`load_weights` and :func:`forward` hold the whole forward-pass
math and need nothing but numpy, so ``numpy_reference.py`` imports them from
here to compute the exact same probabilities outside Triton.

``triton_python_backend_utils`` only exists inside the Triton stub process; it
is imported lazily by :class:`TritonPythonModel`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

INPUT_NAME = "features"
OUTPUT_NAME = "probabilities"
WEIGHTS_FILE = "weights.npz"
SLEEP_PARAMETER = "sleep_ms_per_batch"


@dataclass(frozen=True)
class MLPWeights:
    """Scaler statistics and dense layers (``x @ W + b``) of one MLP, float32."""

    mean: np.ndarray
    scale: np.ndarray
    layers: tuple[tuple[np.ndarray, np.ndarray], ...]

    @property
    def n_features(self) -> int:
        """Number of input features."""
        return int(self.mean.shape[0])

    @property
    def n_classes(self) -> int:
        """Number of output probabilities."""
        return int(self.layers[-1][1].shape[0])


def load_weights(path: Path | str) -> MLPWeights:
    """Read ``weights.npz`` (keys ``mean``, ``scale``, ``W0``, ``b0``, ``W1``, ...)."""
    with np.load(Path(path)) as data:
        n_layers = sum(1 for key in data.files if key.startswith("W"))
        layers = tuple(
            (
                np.asarray(data[f"W{i}"], dtype=np.float32),
                np.asarray(data[f"b{i}"], dtype=np.float32),
            )
            for i in range(n_layers)
        )
        mean = np.asarray(data["mean"], dtype=np.float32)
        scale = np.asarray(data["scale"], dtype=np.float32)
    if not layers:
        raise ValueError(f"{path}: no layers")
    return MLPWeights(mean=mean, scale=scale, layers=layers)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise numerically stable softmax."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def forward(weights: MLPWeights, x: np.ndarray) -> np.ndarray:
    """Class probabilities (float32, shape ``[n, n_classes]``) for rows ``x``."""
    h = (np.asarray(x, dtype=np.float32) - weights.mean) / weights.scale
    last = len(weights.layers) - 1
    for i, (w, b) in enumerate(weights.layers):
        h = h @ w + b
        if i < last:
            h = np.maximum(h, 0.0)
    return softmax(h).astype(np.float32)


def validate_batch(x: np.ndarray, n_features: int) -> str | None:
    """Why ``x`` cannot be scored, or ``None`` when it can."""
    if x.ndim != 2 or x.shape[1] != n_features:
        return f"'{INPUT_NAME}' must have shape [batch, {n_features}], got {list(x.shape)}"
    if x.dtype != np.float32:
        return f"'{INPUT_NAME}' must be FP32, got {x.dtype}"
    if not np.isfinite(x).all():
        return f"'{INPUT_NAME}' contains NaN or infinite values"
    return None


def sleep_seconds(model_config: dict[str, Any]) -> float:
    """The optional ``sleep_ms_per_batch`` model parameter, in seconds (0 if unset)."""
    param = model_config.get("parameters", {}).get(SLEEP_PARAMETER)
    if not param:
        return 0.0
    value = param.get("string_value", "0") if isinstance(param, dict) else param
    return max(0.0, float(value) / 1000.0)


class TritonPythonModel:
    """Triton entry point: batches all requests of one ``execute`` call together."""

    def initialize(self, args: dict[str, str]) -> None:
        """Load ``weights.npz`` from this model version's directory."""
        version_dir = Path(args["model_repository"]) / str(args["model_version"])
        self.weights = load_weights(version_dir / WEIGHTS_FILE)
        self.sleep_s = sleep_seconds(json.loads(args["model_config"]))

    def execute(self, requests: list[Any]) -> list[Any]:
        """Score every valid request in one matrix product; bad ones get errors."""
        import triton_python_backend_utils as pb_utils

        if self.sleep_s > 0:
            time.sleep(self.sleep_s)
        inputs: list[np.ndarray | None] = []
        errors: list[str | None] = []
        for request in requests:
            x, error = self._read_input(pb_utils, request)
            inputs.append(x)
            errors.append(error)
        try:
            outputs = self._score(inputs)
        except Exception as exc:  # never crash the stub: answer every request
            return [_error_response(pb_utils, f"inference failed: {exc}") for _ in requests]
        responses = []
        for out, error in zip(outputs, errors, strict=True):
            if out is None:
                responses.append(_error_response(pb_utils, error or "missing input"))
            else:
                tensor = pb_utils.Tensor(OUTPUT_NAME, np.ascontiguousarray(out))
                responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
        return responses

    def finalize(self) -> None:
        """Nothing to release."""

    def _read_input(self, pb_utils: Any, request: Any) -> tuple[np.ndarray | None, str | None]:
        try:
            tensor = pb_utils.get_input_tensor_by_name(request, INPUT_NAME)
            if tensor is None:
                return None, f"missing input '{INPUT_NAME}'"
            x = tensor.as_numpy()
        except Exception as exc:
            return None, f"cannot read input '{INPUT_NAME}': {exc}"
        error = validate_batch(x, self.weights.n_features)
        return (None, error) if error else (x, None)

    def _score(self, inputs: list[np.ndarray | None]) -> list[np.ndarray | None]:
        valid = [x for x in inputs if x is not None]
        if not valid:
            return [None] * len(inputs)
        probs = forward(self.weights, np.concatenate(valid, axis=0))
        outputs: list[np.ndarray | None] = []
        start = 0
        for x in inputs:
            if x is None:
                outputs.append(None)
                continue
            outputs.append(probs[start : start + x.shape[0]])
            start += x.shape[0]
        return outputs


def _error_response(pb_utils: Any, message: str) -> Any:
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    error = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)
