"""Decoding and validation of events against a model's input spec."""

from __future__ import annotations

from unittest import mock

import numpy as np
import orjson
import pytest

import engine.contract.json_input as json_input
from engine.contract.context import DecodeContext
from engine.contract.decode import decode, decode_many
from engine.contract.outputs import encode_prediction
from engine.errors import Reason
from engine.records import DeadLetter, Event
from engine.settings import LimitSettings
from engine.testing import model_spec, raw_record

CTX = DecodeContext(
    models={"m": model_spec("m", 3), "other": model_spec("other", 2)},
    default_model="m",
    limits=LimitSettings(max_message_bytes=2000, max_elements=100, max_id_length=32),
)


def _decode(value: object) -> Event | DeadLetter:
    data = value if isinstance(value, bytes) else orjson.dumps(value)
    return decode(raw_record(data), CTX)


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
        ({"id": None, "features": [1, 2, 3]}, Reason.MISSING_ID),
        ({"id": 7, "features": [1, 2, 3]}, Reason.INVALID_EVENT),
        ({"id": ["a"], "features": [1, 2, 3]}, Reason.INVALID_EVENT),
        ({"id": "x" * 33, "features": [1, 2, 3]}, Reason.TOO_LARGE),
        ({"id": "a", "model": "nope", "features": [1, 2, 3]}, Reason.UNKNOWN_MODEL),
        ({"id": "a", "model": 3, "features": [1, 2, 3]}, Reason.INVALID_EVENT),
        ({"id": "a"}, Reason.MISSING_INPUT),
        ({"id": "a", "inputs": None}, Reason.MISSING_INPUT),
        ({"id": "a", "features": None}, Reason.MISSING_INPUT),
        ({"id": "a", "inputs": [[1, 2, 3]]}, Reason.INVALID_EVENT),
        ({"id": "a", "inputs": "features"}, Reason.INVALID_EVENT),
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
    out = decode(raw_record(None), CTX)
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


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"id": "a", "inputs": [[1, 2, 3]]}, "'inputs' must be an object of input name -> array, got array"),
        ({"id": 7, "features": [1, 2, 3]}, "'id' must be a non-empty string, got int"),
        ({"features": [1, 2, 3]}, "'id' is missing: every event needs a non-empty string 'id'"),
        ({"id": "a"}, "the event has neither 'inputs' nor 'features'"),
        ({"id": "a", "features": "1,2,3"}, "input 'features' must be an array, got string"),
        ({"id": "a", "features": [1, 2]}, "input 'features' has 2 rows, expected shape [3]"),
        ({"id": "a", "features": [1, "2", 3]}, "input 'features'[1] is a string ('2'); FP32 takes numbers"),
        ({"id": "a", "features": [1, 2, True]}, "input 'features'[2] is a boolean; FP32 takes numbers"),
    ],
)
def test_dead_letter_messages_say_what_was_wrong(value: object, message: str) -> None:
    out = _decode(value)
    assert isinstance(out, DeadLetter) and out.message == message


def test_a_field_set_to_null_counts_as_absent() -> None:
    out = _decode({"id": "a", "model": None, "inputs": None, "features": [1, 2, 3]})
    assert isinstance(out, Event) and out.model == "m"
    assert isinstance(_decode({"id": "a", "inputs": {"features": [1, 2, 3]}, "features": None}), Event)


EVIL = "\n\x1b[31mFAKE LOG LINE\r\u202e" + "x" * 200_000


@pytest.mark.parametrize(
    "value",
    [
        {"id": "a", "model": EVIL, "features": [1, 2, 3]},
        {"id": "a", "inputs": {"features": [1, 2, 3], EVIL: [1]}},
        {"id": "a", "inputs": {"features": [1, 2, 3], **{f"{EVIL[:50]}{i}": [1] for i in range(50)}}},
        {"id": "a", "features": [1, EVIL[:1000], 3]},
    ],
)
def test_text_from_the_event_in_a_message_is_escaped_and_bounded(value: object) -> None:
    ctx = DecodeContext(CTX.models, "m", LimitSettings(max_message_bytes=1_000_000))
    out = decode(raw_record(orjson.dumps(value)), ctx)
    assert isinstance(out, DeadLetter)
    assert out.message.isprintable() and "\x1b" not in out.message and "\n" not in out.message
    assert len(out.message) <= 300
    assert "\\x1b[31mFAKE" in out.message  # shown, escaped


def test_an_unforeseen_failure_is_a_dead_letter_not_an_exception(caplog: pytest.LogCaptureFixture) -> None:
    records = [raw_record(orjson.dumps({"id": f"e{i}", "features": [i, 2, 3]}), offset=i) for i in range(3)]
    with mock.patch.object(json_input, "to_tensor", side_effect=ZeroDivisionError("boom")):
        outs = [decode(records[0], CTX), *decode_many(records[:1], CTX)]
    with mock.patch.object(json_input, "stacked", side_effect=MemoryError()):
        outs.extend(decode_many(records, CTX))  # the batch path falls back to each event alone
    letters = [o for o in outs[:2] if isinstance(o, DeadLetter)]
    assert len(letters) == 2 and all(d.reason is Reason.INVALID_EVENT for d in letters)
    assert letters[0].message == "event could not be decoded (ZeroDivisionError)"
    assert all(isinstance(o, Event) for o in outs[2:])
    assert "ZeroDivisionError" in caplog.text and "boom" not in caplog.text
