"""Every Triton dtype the decoder takes: values in range, out of range, and of the wrong kind.

Each case goes through :func:`decode` and :func:`decode_many` (alone and among
valid events of the same model, which takes the batch path), and both must
agree. Values are written as JSON text so that integers past 64 bits can be
sent as they would arrive.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from engine.contract.context import DecodeContext
from engine.contract.decode import decode, decode_many
from engine.errors import Reason
from engine.modelspec import ModelSpec, TensorSpec
from engine.records import DeadLetter, Event
from engine.settings import LimitSettings
from engine.testing import raw_record

NUMPY = {
    "BOOL": np.bool_,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
INTS = [name for name in NUMPY if "INT" in name]
FLOATS = ["FP16", "FP32", "FP64"]
VALID = {"BOOL": "true", "FP16": "1.5", "FP32": "1.5", "FP64": "1.5"}  # else "7"


def _ctx(dtype: Any, dims: tuple[int, ...] = (2,)) -> DecodeContext:
    model = ModelSpec("x", 8, (TensorSpec("t", np.dtype(dtype), dims),), ())
    return DecodeContext({"x": model}, "x", LimitSettings())


def _value(name: str, literal: str) -> bytes:
    """An event whose input holds a valid element, then ``literal``."""
    return f'{{"id": "a", "features": [{VALID.get(name, "7")}, {literal}]}}'.encode()


def _outcomes(name: str, literal: str) -> list[Event | DeadLetter]:
    """The event decoded alone, by decode_many alone, and by decode_many among valid events."""
    ctx = _ctx(NUMPY[name])
    value = _value(name, literal)
    plain = _value(name, VALID.get(name, "7"))
    alone = decode(raw_record(value), ctx)
    (many,) = decode_many([raw_record(value)], ctx)
    among = decode_many([raw_record(plain), raw_record(value), raw_record(plain)], ctx)[1]
    return [alone, many, among]


def _dead(name: str, literal: str) -> DeadLetter:
    """The dead letter every path gives; they must agree."""
    outs = _outcomes(name, literal)
    assert all(isinstance(o, DeadLetter) for o in outs), outs
    letters = [o for o in outs if isinstance(o, DeadLetter)]
    assert len({(d.reason, d.message) for d in letters}) == 1, letters
    return letters[0]


def _taken(name: str, literal: str) -> np.ndarray:
    """The converted array every path gives; they must agree."""
    outs = _outcomes(name, literal)
    assert all(isinstance(o, Event) for o in outs), outs
    arrays = [o.inputs["t"] for o in outs if isinstance(o, Event)]
    for arr in arrays:
        assert arr.dtype == np.dtype(NUMPY[name]) and arr.shape == (2,)
        np.testing.assert_array_equal(arr, arrays[0])
    return arrays[0]


IN_RANGE = (
    [("BOOL", "false")]
    + [(n, str(np.iinfo(NUMPY[n]).min)) for n in INTS]
    + [(n, str(np.iinfo(NUMPY[n]).max)) for n in INTS]
    + [(n, "-3") for n in FLOATS]
    + [(n, "0.1") for n in FLOATS]
    + [("FP16", "65504"), ("FP16", "-65519.9"), ("FP32", "3.4028234e38"), ("FP64", "1.7976931348623157e308")]
)


@pytest.mark.parametrize(("name", "literal"), IN_RANGE)
def test_each_dtype_takes_values_within_its_range(name: str, literal: str) -> None:
    arr = _taken(name, literal)
    if name in INTS:
        assert int(arr[1]) == int(literal)  # exact, never through a float
    elif name == "BOOL":
        assert arr.tolist() == [True, False]
    else:
        assert np.isfinite(arr).all()


OUT_OF_RANGE = (
    [(n, str(np.iinfo(NUMPY[n]).max + 1)) for n in INTS]
    + [(n, str(np.iinfo(NUMPY[n]).min - 1)) for n in INTS]
    + [("UINT64", "1e30"), ("INT64", "-1e30"), ("FP16", "65520"), ("FP16", "-70000.5"), ("FP32", "3.5e38")]
    + [("FP16", "-9223372036854775808"), ("FP32", "-1e39")]
)


@pytest.mark.parametrize(("name", "literal"), OUT_OF_RANGE)
def test_each_dtype_rejects_values_out_of_its_range_as_bad_dtype_naming_the_element(
    name: str, literal: str
) -> None:
    letter = _dead(name, literal)
    assert letter.reason is Reason.BAD_DTYPE
    assert "input 't'[1]" in letter.message and "out of range for " + name in letter.message


WRONG_KIND = (
    [("BOOL", lit, what) for lit, what in [("1", "a number"), ("0", "a number"), ("0.0", "a number")]]
    + [(n, "true", "a boolean") for n in NUMPY if n != "BOOL"]
    + [(n, "0.5", "a float") for n in INTS]
    + [(n, "2.0", "a float") for n in INTS]  # written as a float: not an integer literal
    + [
        (n, lit, what)
        for n in NUMPY
        for lit, what in [("null", "null"), ('"1"', "a string"), ("{}", "an object")]
    ]
)


@pytest.mark.parametrize(("name", "literal", "what"), WRONG_KIND)
def test_each_dtype_rejects_values_of_the_wrong_kind_as_bad_dtype_saying_what_was_found(
    name: str, literal: str, what: str
) -> None:
    letter = _dead(name, literal)
    assert letter.reason is Reason.BAD_DTYPE
    assert f"input 't'[1] is {what}" in letter.message and name in letter.message


def test_bool_input_given_numbers_is_a_dead_letter_not_an_exception() -> None:
    ctx = _ctx(np.bool_)
    records = [raw_record(b'{"id": "a", "features": [1, 0]}', offset=i) for i in range(3)]
    outs = [decode(records[0], ctx), *decode_many(records, ctx)]
    assert all(isinstance(o, DeadLetter) and o.reason is Reason.BAD_DTYPE for o in outs), outs
    assert "BOOL takes true or false" in outs[0].message  # type: ignore[union-attr]


def test_uint64_takes_values_above_2_to_the_63_exactly() -> None:
    arr = _taken("UINT64", "18446744073709551615")
    assert arr.tolist() == [7, 2**64 - 1]
    assert _taken("UINT64", "9223372036854775809").tolist() == [7, 2**63 + 1]


def test_uint64_rejects_values_above_2_to_the_64_minus_1_as_out_of_range() -> None:
    letter = _dead("UINT64", "18446744073709551616")
    assert letter.reason is Reason.BAD_DTYPE and "out of range for UINT64" in letter.message
    assert "float" not in letter.message


def test_64_bit_extremes_of_both_signs_in_one_batch_decode_like_each_event_alone() -> None:
    values = [b"[-1, 0]", b"[9223372036854775808, 1]", b"[18446744073709551615, -9223372036854775808]"]
    for dtype in (np.int64, np.uint64):
        ctx = _ctx(dtype)
        records = [raw_record(b'{"id": "a", "features": ' + v + b"}", offset=i) for i, v in enumerate(values)]
        for alone, together in zip([decode(r, ctx) for r in records], decode_many(records, ctx), strict=True):
            assert type(alone) is type(together)
            if isinstance(alone, Event) and isinstance(together, Event):
                assert alone.inputs["t"].tolist() == together.inputs["t"].tolist()
            elif isinstance(alone, DeadLetter) and isinstance(together, DeadLetter):
                assert (alone.reason, alone.message) == (together.reason, together.message)


@pytest.mark.parametrize("dtype", [np.object_, np.bytes_, np.str_, np.complex64])
def test_inputs_of_a_dtype_events_cannot_carry_are_bad_dtype_with_a_message(dtype: Any) -> None:
    out = decode(raw_record(b'{"id": "a", "features": ["x", "y"]}'), _ctx(dtype))
    assert isinstance(out, DeadLetter) and out.reason is Reason.BAD_DTYPE
    assert "events carry only BOOL, INT, UINT and FP inputs" in out.message


@pytest.mark.parametrize("name", list(NUMPY))
def test_an_empty_array_fits_a_variable_length_input_of_any_dtype(name: str) -> None:
    out = decode(raw_record(b'{"id": "a", "features": []}'), _ctx(NUMPY[name], (-1,)))
    assert isinstance(out, Event)
    assert out.inputs["t"].dtype == np.dtype(NUMPY[name]) and out.inputs["t"].shape == (0,)


@pytest.mark.parametrize("name", list(NUMPY))
def test_a_scalar_input_checks_its_one_value(name: str) -> None:
    ctx = _ctx(NUMPY[name], ())
    good = decode(raw_record(f'{{"id": "a", "features": {VALID.get(name, "7")}}}'.encode()), ctx)
    assert isinstance(good, Event) and good.inputs["t"].shape == ()
    bad = decode(raw_record(b'{"id": "a", "features": "7"}'), ctx)
    assert isinstance(bad, DeadLetter) and bad.reason is Reason.BAD_DTYPE
    assert "input 't' is a string" in bad.message
