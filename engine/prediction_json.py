"""JSON output records of the event contract beside :func:`engine.codec.encode_prediction`.

A *shadow prediction* (``routing.shadow_topic``, see :mod:`models.shadow`) is a prediction of
the shadow model for an event another model served: ``{"id", "model", "model_version",
"shadow_of", "outputs"}``, ``model`` being the shadow and ``shadow_of`` the model that served
the event. Outputs are numpy arrays, written as nested JSON lists (:data:`JSON_OPTIONS`, as
predictions are).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from engine.records import Event, InferenceResult

JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY  # numpy arrays as nested lists


def dumps_output(doc: Mapping[str, Any]) -> bytes:
    """The JSON value of an output record's document (numpy arrays as nested lists)."""
    return orjson.dumps(doc, option=JSON_OPTIONS)


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
