"""Output records of the event contract: predictions (JSON or binary) and shadow predictions.

* a *prediction* (JSON): ``{"id", "model", "model_version", "outputs", "timing_ms"}``, plus
  ``"arm"`` when an A/B experiment routed the event (engine/routing.py);
* a *binary prediction* (for binary events, see ``topics.output_format``): the same fields in a
  JSON header whose ``outputs`` describe the tensors, then their bytes (:mod:`engine.contract.wire`);
* a *shadow prediction* (``routing.shadow_topic``, see :mod:`models.shadow`): a prediction of the
  shadow model for an event another model served: ``{"id", "model", "model_version",
  "shadow_of", "outputs"}``, ``model`` being the shadow and ``shadow_of`` the model that served
  the event.

JSON outputs are numpy arrays written as nested lists (:data:`JSON_OPTIONS`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from engine.contract.wire import binary_headers, tensor_description, wire_name
from engine.records import Event, Headers, InferenceResult

JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY  # numpy arrays as nested lists


def dumps_output(doc: Mapping[str, Any]) -> bytes:
    """The JSON value of an output record's document (numpy arrays as nested lists)."""
    return orjson.dumps(doc, option=JSON_OPTIONS)


def encode_prediction(
    event: Event,
    model_version: str,
    outputs: Mapping[str, np.ndarray],
    timing_ms: Mapping[str, float],
) -> bytes:
    """The JSON value of one prediction record (with ``arm`` when A/B routing chose one)."""
    doc: dict[str, Any] = {
        "id": event.id,
        "model": event.model,
        "model_version": model_version,
        "outputs": outputs,
        "timing_ms": timing_ms,
    }
    if event.arm:
        doc["arm"] = event.arm
    return dumps_output(doc)


class BinaryPredictions:
    """Binary predictions of one batch: the outputs described and laid out once, sliced per event."""

    def __init__(self, model_version: str, outputs: Mapping[str, np.ndarray]) -> None:
        self._version = model_version
        arrays = [np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")) for a in outputs.values()]
        self._described = [
            tensor_description(name, wire_name(a.dtype), list(a.shape[1:]), a[0].nbytes if len(a) else 0)
            for name, a in zip(outputs, arrays, strict=True)
        ]
        self._blobs = [(a.tobytes(), a[0].nbytes if len(a) else 0) for a in arrays]

    def encode(self, event: Event, row: int, timing_ms: Mapping[str, float]) -> tuple[bytes, Headers]:
        """The value and headers of the prediction for ``event``, the batch's row ``row``."""
        doc: dict[str, Any] = {"id": event.id, "model": event.model, "model_version": self._version}
        if event.arm:
            doc["arm"] = event.arm
        doc["timing_ms"] = timing_ms
        doc["outputs"] = self._described
        header = orjson.dumps(doc)
        parts = [header]
        parts += [blob[row * size : (row + 1) * size] for blob, size in self._blobs]
        return b"".join(parts), binary_headers(len(header))


def encode_shadow_prediction(
    event: Event, result: InferenceResult, outputs: Mapping[str, np.ndarray]
) -> bytes:
    """A shadow prediction: like a prediction, plus ``shadow_of`` (the model that served the event)."""
    doc = {
        "id": event.id,
        "model": result.model,
        "model_version": result.model_version,
        "shadow_of": event.model,
        "outputs": outputs,
    }
    return dumps_output(doc)
