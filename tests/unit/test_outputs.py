"""engine/contract/outputs.py: shadow predictions, encoded by the core beside predictions."""

from __future__ import annotations

import numpy as np
import orjson

from engine.contract.outputs import encode_shadow_prediction
from engine.records import Event, InferenceResult
from engine.testing import raw_record


def test_a_shadow_prediction_names_the_shadow_and_the_model_it_shadows() -> None:
    event = Event("ev-17", "breast_cancer", {"x": np.zeros(3, np.float32)}, raw_record({}), arm="a")
    result = InferenceResult("challenger", "2", {"probabilities": np.array([[0.25, 0.75]], np.float32)})
    value = encode_shadow_prediction(event, result, {"probabilities": result.outputs["probabilities"][0]})
    assert value == (
        b'{"id":"ev-17","model":"challenger","model_version":"2","shadow_of":"breast_cancer",'
        b'"outputs":{"probabilities":[0.25,0.75]}}'
    )
    assert "arm" not in orjson.loads(value) and "timing_ms" not in orjson.loads(value)
