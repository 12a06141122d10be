"""Decoding and validation of events against a model's input spec."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from engine.errors import Reason
from engine.records import DeadLetter, Event
from engine.settings import LimitSettings
from streams.codec import DecodeContext, decode, encode_prediction
from tests.unit.fakes import raw, spec

CTX = DecodeContext(
    models={"m": spec("m", 3), "other": spec("other", 2)},
    default_model="m",
    limits=LimitSettings(max_message_bytes=2000, max_elements=100, max_id_length=32),
)


def _decode(value: object) -> Event | DeadLetter:
    data = value if isinstance(value, bytes) else orjson.dumps(value)
    return decode(raw(data), CTX)


def _reason(value: object) -> Reason:
    out = _decode(value)
    assert isinstance(out, DeadLetter), out
    return out.reason


def test_valid_event_with_inputs_decodes_to_model_dtype() -> None:
    out = _decode({"id": "a", "inputs": {"features": [1, 2.5, 3]}})
    assert isinstance(out, Event)
    assert out.id == "a" and out.model == "m"
    assert out.inputs["features"].dtype == np.float32
    np.testing.assert_array_equal(out.inputs["features"], [1, 2.5, 3])


def test_features_shorthand_and_explicit_model() -> None:
    out = _decode({"id": "a", "model": "other", "features": [1, 2]})
    assert isinstance(out, Event) and out.model == "other"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{not json", Reason.INVALID_JSON),
        (b"\xff\xfe\x00", Reason.INVALID_JSON),
        (b'{"id": "a", "features": [NaN, 1, 2]}', Reason.INVALID_JSON),
        ([1, 2, 3], Reason.INVALID_EVENT),
        ({"features": [1, 2, 3]}, Reason.MISSING_ID),
        ({"id": "", "features": [1, 2, 3]}, Reason.MISSING_ID),
        ({"id": 7, "features": [1, 2, 3]}, Reason.MISSING_ID),
        ({"id": "x" * 33, "features": [1, 2, 3]}, Reason.TOO_LARGE),
        ({"id": "a", "model": "nope", "features": [1, 2, 3]}, Reason.UNKNOWN_MODEL),
        ({"id": "a", "model": 3, "features": [1, 2, 3]}, Reason.INVALID_EVENT),
        ({"id": "a"}, Reason.MISSING_INPUT),
        ({"id": "a", "inputs": {"other": [1, 2, 3]}}, Reason.MISSING_INPUT),
        ({"id": "a", "inputs": {"features": [1, 2, 3], "x": [1]}}, Reason.INVALID_EVENT),
        ({"id": "a", "inputs": {"features": [1]}, "features": [1]}, Reason.INVALID_EVENT),
        ({"id": "a", "features": [1, 2]}, Reason.BAD_SHAPE),
        ({"id": "a", "features": []}, Reason.BAD_SHAPE),
        ({"id": "a", "features": [[1, 2, 3]]}, Reason.BAD_SHAPE),
        ({"id": "a", "features": [[1], [2, 3], 4]}, Reason.BAD_SHAPE),
        ({"id": "a", "features": 5}, Reason.BAD_SHAPE),
        ({"id": "a", "features": ["1", "2", "3"]}, Reason.BAD_DTYPE),
        ({"id": "a", "features": [True, False, True]}, Reason.BAD_DTYPE),
        ({"id": "a", "features": [1, None, 3]}, Reason.BAD_DTYPE),
        ({"id": "a", "features": [1e300, 1, 3]}, Reason.BAD_DTYPE),
        ({"id": "a", "features": list(range(101))}, Reason.TOO_LARGE),
        ({"id": "a", "features": [1, 2, 3], "pad": "x" * 3000}, Reason.TOO_LARGE),
    ],
)
def test_bad_events_become_dead_letters_with_reason(value: object, reason: Reason) -> None:
    assert _reason(value) is reason


def test_tombstone_is_a_dead_letter() -> None:
    out = decode(raw(None), CTX)
    assert isinstance(out, DeadLetter) and out.reason is Reason.INVALID_JSON


def test_extra_top_level_fields_are_ignored() -> None:
    assert isinstance(_decode({"id": "a", "features": [1, 2, 3], "note": {"x": 1}}), Event)


def test_encode_prediction_contract() -> None:
    event = _decode({"id": "a", "features": [1, 2, 3]})
    assert isinstance(event, Event)
    value = encode_prediction(
        event,
        "2",
        {"probabilities": np.array([0.25, 0.75], np.float32)},
        {"queue": 1.0, "inference": 2.0, "total": 3.5},
    )
    doc = orjson.loads(value)
    assert doc == {
        "id": "a",
        "model": "m",
        "model_version": "2",
        "outputs": {"probabilities": [0.25, 0.75]},
        "timing_ms": {"queue": 1.0, "inference": 2.0, "total": 3.5},
    }
