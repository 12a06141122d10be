"""Triton python-backend model: a classifier of variable-length sequences, in pure numpy.

The template of the repository's variable-length models (input dims ``[-1]``);
``train.py`` copies it to ``<model>/<version>/model.py``, as it copies
``mlp_backend.py`` for the fixed-size ones. Each sequence is summarised by a
few length-independent statistics (:func:`summarize`: least-squares slope,
its correlation with time, mean step, log length), which go through the same
kind of MLP as the other models (``weights.npz``: scaler, then dense layers,
then a softmax). :func:`load_weights` and :func:`predict` hold the whole math
and need nothing but numpy, so ``numpy_reference.py`` imports them from here.

Triton batches only requests of one length together; a batch is
``[batch, length]``. Sequences shorter than :data:`MIN_LENGTH` have no slope
and are answered with an error (INVALID_ARG), as are non-FP32 or non-finite
values. Python 3.10 and numpy 1.x compatible (the NGC Triton image).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

INPUT_NAME = "sequence"
OUTPUT_NAME = "probabilities"
WEIGHTS_FILE = "weights.npz"
MIN_LENGTH = 2
SUMMARY_NAMES = ("slope", "trend_correlation", "mean_step", "log_length")


@dataclass(frozen=True)
class SequenceWeights:
    """Scaler statistics of the summary features and dense layers (``h @ W + b``), float32."""

    mean: np.ndarray
    scale: np.ndarray
    layers: tuple[tuple[np.ndarray, np.ndarray], ...]

    @property
    def n_classes(self) -> int:
        """Number of output probabilities."""
        return int(self.layers[-1][1].shape[0])


def load_weights(path: Path | str) -> SequenceWeights:
    """Read ``weights.npz`` (keys ``mean``, ``scale``, ``W0``, ``b0``, ``W1``, ...)."""
    with np.load(Path(path)) as data:
        n_layers = sum(1 for key in data.files if key.startswith("W"))
        layers = tuple(
            (np.asarray(data[f"W{i}"], dtype=np.float32), np.asarray(data[f"b{i}"], dtype=np.float32))
            for i in range(n_layers)
        )
        mean = np.asarray(data["mean"], dtype=np.float32)
        scale = np.asarray(data["scale"], dtype=np.float32)
    if not layers or mean.shape != (len(SUMMARY_NAMES),):
        raise ValueError(f"{path}: expected {len(SUMMARY_NAMES)} summary features and some layers")
    return SequenceWeights(mean=mean, scale=scale, layers=layers)


def summarize(x: np.ndarray) -> np.ndarray:
    """The summary features (float32 ``[batch, 4]``) of sequences ``x`` (``[batch, length]``, length >= 2)."""
    x = np.asarray(x, dtype=np.float64)
    n, length = x.shape
    t = np.arange(length, dtype=np.float64) - (length - 1) / 2.0
    sxx = float(t @ t)
    centred = x - x.mean(axis=1, keepdims=True)
    slope = centred @ t / sxx
    spread = np.sqrt((centred * centred).sum(axis=1))
    correlation = np.where(spread > 0, centred @ t / (np.sqrt(sxx) * np.maximum(spread, 1e-300)), 0.0)
    step = (x[:, -1] - x[:, 0]) / (length - 1)
    log_length = np.full(n, np.log(length))
    return np.stack([slope, correlation, step, log_length], axis=1).astype(np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise numerically stable softmax."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def classify(weights: SequenceWeights, features: np.ndarray) -> np.ndarray:
    """Class probabilities (float32 ``[batch, n_classes]``) of summary ``features``."""
    h = (np.asarray(features, dtype=np.float32) - weights.mean) / weights.scale
    last = len(weights.layers) - 1
    for i, (w, b) in enumerate(weights.layers):
        h = h @ w + b
        if i < last:
            h = np.maximum(h, 0.0)
    return softmax(h).astype(np.float32)


def predict(weights: SequenceWeights, x: np.ndarray) -> np.ndarray:
    """Class probabilities of sequences ``x`` (``[batch, length]``)."""
    return classify(weights, summarize(x))


def validate_batch(x: np.ndarray) -> str | None:
    """Why ``x`` cannot be scored, or ``None`` when it can."""
    if x.ndim != 2:
        return f"'{INPUT_NAME}' must have shape [batch, length], got {list(x.shape)}"
    if x.shape[1] < MIN_LENGTH:
        return f"'{INPUT_NAME}' must hold at least {MIN_LENGTH} values, got {x.shape[1]}"
    if x.dtype != np.float32:
        return f"'{INPUT_NAME}' must be FP32, got {x.dtype}"
    if not np.isfinite(x).all():
        return f"'{INPUT_NAME}' contains NaN or infinite values"
    return None


class TritonPythonModel:
    """Triton entry point: scores each request (one length per request) on its own."""

    def initialize(self, args: dict[str, str]) -> None:
        """Load ``weights.npz`` from this model version's directory."""
        version_dir = Path(args["model_repository"]) / str(args["model_version"])
        self.weights = load_weights(version_dir / WEIGHTS_FILE)

    def execute(self, requests: list[Any]) -> list[Any]:
        """One response per request; a bad request gets an error, never the stub's crash."""
        import triton_python_backend_utils as pb_utils

        return [self._respond(pb_utils, request) for request in requests]

    def finalize(self) -> None:
        """Nothing to release."""

    def _respond(self, pb_utils: Any, request: Any) -> Any:
        try:
            tensor = pb_utils.get_input_tensor_by_name(request, INPUT_NAME)
            if tensor is None:
                return _error_response(pb_utils, f"missing input '{INPUT_NAME}'")
            x = tensor.as_numpy()
            error = validate_batch(x)
            if error:
                return _error_response(pb_utils, error)
            probs = predict(self.weights, x)
        except Exception as exc:
            return _error_response(pb_utils, f"inference failed: {exc}")
        tensor = pb_utils.Tensor(OUTPUT_NAME, np.ascontiguousarray(probs))
        return pb_utils.InferenceResponse(output_tensors=[tensor])


def _error_response(pb_utils: Any, message: str) -> Any:
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    error = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)
