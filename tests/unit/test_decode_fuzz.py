"""Property-based tests of the real decode path: every input is a valid event or a dead letter.

Generated values (over 10,000 across the tests): arbitrary bytes and invalid
UTF-8, arbitrary JSON documents, near-valid events with one to three faults
(wrong types at every level, missing and extra fields, NaN/Infinity literals,
empty, huge and deeply nested arrays, huge ids, nulls), oversized values,
elements of every Triton dtype in and out of range (integers past 64 bits
included), and records whose key and headers are arbitrary bytes, under and
over their limits. Batches are decoded with a small held-bytes budget, so they
are split into several groups. The expected outcome comes from
:func:`expected_reason`, the event contract written as a checklist in the
decoder's order of checks; the tensor part is derived from the nested lists
themselves, not from numpy.
"""

from __future__ import annotations

import json
from typing import Any
from unittest import mock

import numpy as np
import orjson
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

import engine.contract.json_input as json_input
from engine.contract.context import DecodeContext
from engine.contract.decode import decode, decode_many
from engine.contract.input_checks import MAX_MESSAGE_CHARS
from engine.contract.wire import BINARY_CONTENT_TYPE, CONTENT_TYPE_HEADER, HEADER_LENGTH_HEADER
from engine.errors import Reason
from engine.modelspec import ModelSpec, TensorSpec
from engine.records import DeadLetter, Event, Headers
from engine.settings import LimitSettings
from engine.testing import model_spec, raw_record

LIMITS = LimitSettings(
    max_message_bytes=4000,
    max_elements=64,
    max_id_length=40,
    max_key_bytes=24,
    max_headers=4,
    max_header_bytes=80,
    max_held_value_bytes=600,
)
DTYPES = [np.dtype(t) for t in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8)] + [
    np.dtype(t) for t in (np.uint16, np.uint32, np.uint64, np.float16, np.float32, np.float64)
]
PAIR = ModelSpec(
    name="pair",
    max_batch_size=8,
    inputs=(
        TensorSpec("a", np.dtype(np.float32), (2,)),
        TensorSpec("b", np.dtype(np.int32), (2, -1)),
    ),
    outputs=(TensorSpec("y", np.dtype(np.float32), (1,)),),
)
MODELS: dict[str, ModelSpec] = {"m": model_spec("m", 3), "pair": PAIR}
MODELS.update(
    {
        f"d_{d.name}": ModelSpec(f"d_{d.name}", 8, (TensorSpec("t", d, (2, -1)),), ())
        for d in [*DTYPES, np.dtype(object)]
    }
)
CTX = DecodeContext(models=MODELS, default_model="m", limits=LIMITS)

FUZZ = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


# ----------------------------------------------------------------- the oracle


def _shape(value: Any) -> tuple[int, ...] | None:
    """Shape of regular nested lists (a non-list is a scalar); None when ragged."""
    if not isinstance(value, list):
        return ()
    if not value:
        return (0,)
    inner = {_shape(item) for item in value}
    if len(inner) != 1:
        return None
    (sub,) = inner
    return None if sub is None else (len(value), *sub)


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, list):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]


def _leaf_count(value: Any) -> int:
    """Elements as the decoder counts them: scalars and empty lists."""
    if isinstance(value, list) and value:
        return sum(_leaf_count(item) for item in value)
    return 1


def element_ok(x: Any, dtype: np.dtype[Any]) -> bool:
    """Whether one parsed JSON element converts exactly to ``dtype`` (the README's dtype table)."""
    if isinstance(x, bool):
        return dtype.kind == "b"
    if dtype.kind == "b" or not isinstance(x, int | float):
        return False
    if dtype.kind == "f":
        with np.errstate(over="ignore"):
            return bool(np.isfinite(dtype.type(x)))  # stays finite once rounded
    info = np.iinfo(dtype)
    return isinstance(x, int) and info.min <= x <= info.max  # integers past 64 bits parse as floats


def _tensor_reason(value: Any, t: TensorSpec) -> Reason | None:
    if t.dtype not in DTYPES:
        return Reason.BAD_DTYPE
    if not isinstance(value, list):
        return Reason.BAD_SHAPE
    if _leaf_count(value) > LIMITS.max_elements:
        return Reason.TOO_LARGE
    shape = _shape(value)
    if shape is None or not t.shape_matches(shape):
        return Reason.BAD_SHAPE
    if not all(element_ok(x, t.dtype) for x in _leaves(value)):
        return Reason.BAD_DTYPE
    return None


def _envelope_reason(key: bytes | None, headers: Headers) -> Reason | None:
    if key is not None and len(key) > LIMITS.max_key_bytes:
        return Reason.TOO_LARGE
    if len(headers) > LIMITS.max_headers:
        return Reason.TOO_LARGE
    if sum(len(k.encode("utf-8", "surrogatepass")) + len(v) for k, v in headers) > LIMITS.max_header_bytes:
        return Reason.TOO_LARGE
    return None


def _content_type(headers: Headers) -> bytes:
    """The media type of the last ``content-type`` header, lower case, without parameters (b"": none)."""
    values = [v for k, v in headers if k == CONTENT_TYPE_HEADER and v is not None]
    return values[-1].split(b";", 1)[0].strip().lower() if values else b""


def expected_reason(value: bytes | None, key: bytes | None = b"k", headers: Headers = ()) -> Reason | None:
    """The event contract as a checklist; None means a valid event. A field set to null is absent."""
    envelope = _envelope_reason(key, headers)
    if envelope is not None:
        return envelope
    kind = _content_type(headers)
    if kind == BINARY_CONTENT_TYPE.encode():  # a JSON value read as a binary event
        assume(not any(k == HEADER_LENGTH_HEADER for k, _ in headers))  # (a fuzzed twin of both names)
        too_large = value is not None and len(value) > LIMITS.max_message_bytes
        return Reason.TOO_LARGE if too_large else Reason.INVALID_EVENT  # no header length given
    if kind not in (b"", b"application/json"):
        return Reason.INVALID_EVENT  # a content-type the engine does not read
    if value is None:
        return Reason.INVALID_JSON
    if len(value) > LIMITS.max_message_bytes:
        return Reason.TOO_LARGE
    try:
        doc = orjson.loads(value)  # RFC 8259: no NaN/Infinity, UTF-8 only
    except orjson.JSONDecodeError:
        return Reason.INVALID_JSON
    if not isinstance(doc, dict):
        return Reason.INVALID_EVENT
    event_id = doc.get("id")
    if event_id is None or event_id == "":
        return Reason.MISSING_ID
    if not isinstance(event_id, str):
        return Reason.INVALID_EVENT
    if len(event_id) > LIMITS.max_id_length:
        return Reason.TOO_LARGE
    model = doc.get("model")
    if model is not None and not isinstance(model, str):
        return Reason.INVALID_EVENT
    target = MODELS.get(model if model is not None else CTX.default_model)
    if target is None:
        return Reason.UNKNOWN_MODEL
    inputs, features = doc.get("inputs"), doc.get("features")
    if inputs is not None and features is not None:
        return Reason.INVALID_EVENT
    if features is not None:
        if len(target.inputs) != 1:
            return Reason.INVALID_EVENT
        tensors = {target.inputs[0].name: features}
    else:
        if inputs is None:
            return Reason.MISSING_INPUT
        if not isinstance(inputs, dict):
            return Reason.INVALID_EVENT
        tensors = inputs
        names = {t.name for t in target.inputs}
        if names - tensors.keys():
            return Reason.MISSING_INPUT
        if tensors.keys() - names:
            return Reason.INVALID_EVENT
    for t in target.inputs:
        reason = _tensor_reason(tensors[t.name], t)
        if reason is not None:
            return reason
    return None


def check(value: bytes | None, key: bytes | None = b"k", headers: Headers = ()) -> Event | DeadLetter:
    """Decode ``value`` (with ``key`` and ``headers``) and assert the outcome is the contract's."""
    out = decode(raw_record(value, key=key, headers=headers), CTX)
    want = expected_reason(value, key, headers)
    event(f"outcome: {want.value if want else 'event'}")
    if want is None:
        assert isinstance(out, Event), (value, out)
        doc = orjson.loads(value or b"")
        assert out.id == doc["id"]
        for t in MODELS[out.model].inputs:
            arr = out.inputs[t.name]
            assert arr.dtype == t.dtype and t.shape_matches(arr.shape)
            given = (doc.get("inputs") or {t.name: doc.get("features")})[t.name]
            if t.dtype.kind == "f":
                assert np.isfinite(arr).all()
                np.testing.assert_allclose(arr.astype(np.float64), np.array(given, np.float64), 2**-10, 1e-7)
            else:  # booleans and integers exactly, never through a float
                assert arr.tolist() == np.array(given, dtype=object).astype(t.dtype).tolist()
    else:
        assert isinstance(out, DeadLetter), (value, want, out)
        assert out.reason is want, (value, want, out.reason, out.message)
        assert out.message and len(out.message) <= MAX_MESSAGE_CHARS + 40
        assert out.message.isprintable(), out.message  # escaped: no newline or escape code
        assert out.record.value is value  # the original bytes go to the DLQ unchanged
    return out


# ---------------------------------------------------------------- strategies

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=6), inner, max_size=5),
    max_leaves=12,
)
numbers = st.one_of(
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), st.integers(min_value=-1000, max_value=1000)
)
ids = st.text(min_size=1, max_size=LIMITS.max_id_length)


def _nested(depth: int, leaf: Any) -> Any:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


# One fault each: (name, value or strategy). Faults replace a part of a valid document.
bad_values = st.one_of(
    json_values,
    st.lists(numbers, min_size=0, max_size=5),
    st.lists(numbers, min_size=LIMITS.max_elements + 1, max_size=LIMITS.max_elements + 40),
    st.lists(st.lists(numbers, min_size=8, max_size=8), min_size=9, max_size=12),  # nested, too many
    st.integers(min_value=1, max_value=60).map(lambda d: _nested(d, 1.0)),  # deep nesting
    st.lists(st.sampled_from([1e39, -1e39, 3.5e38, 2**40, True, None, "1", {}, []]), min_size=3, max_size=3),
)


tensor_scalars = st.one_of(
    numbers,
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.sampled_from([1e39, -3.5e38, 3.4e38, 2**31, -(2**31) - 1, 0.5, True, False, None, "", "1", {}, []]),
)


leaves = st.one_of(numbers, numbers, numbers, numbers, numbers, numbers, tensor_scalars)


def _reshape(flat: list[Any], shape: list[int]) -> Any:
    if len(shape) == 1:
        return flat
    step = len(flat) // shape[0] if shape[0] else 0
    return [_reshape(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


@st.composite
def tensor_for(draw: st.DrawFn, dims: tuple[int, ...]) -> Any:
    """A value for an input of ``dims``: right or wrong shape, ragged, deep, huge, empty, scalar."""
    shape = [d if d >= 0 else draw(st.integers(0, 4)) for d in dims]
    mode = draw(st.sampled_from(["exact"] * 4 + ["reshaped", "ragged", "scalar", "deep", "huge", "empty"]))
    if mode == "scalar":
        return draw(tensor_scalars | json_values)
    if mode == "empty":
        return []
    if mode == "huge":
        return [0.5] * draw(st.integers(LIMITS.max_elements + 1, LIMITS.max_elements + 50))
    if mode == "reshaped":
        shape = draw(st.lists(st.integers(0, 5), min_size=1, max_size=3))
    n = 1
    for d in shape:
        n *= d
    value = _reshape(draw(st.lists(leaves, min_size=n, max_size=n)), shape)
    if mode == "ragged" and value:
        i = draw(st.integers(0, len(value) - 1))
        value[i] = value[i] + [1.0] if isinstance(value[i], list) else [value[i]]
    if mode == "deep":
        for _ in range(draw(st.integers(1, 40))):
            value = [value]
    return value


@st.composite
def tensor_events(draw: st.DrawFn) -> bytes:
    """A well-formed event whose tensors come from :func:`tensor_for`."""
    if draw(st.booleans()):
        return orjson.dumps({"id": "t", "features": draw(tensor_for((3,)))})
    inputs = {"a": draw(tensor_for((2,))), "b": draw(tensor_for((2, -1)))}
    return orjson.dumps({"id": "t", "model": "pair", "inputs": inputs})


def _edges(dtype: np.dtype[Any]) -> list[Any]:
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return [int(info.min) - 1, int(info.min), int(info.max), int(info.max) + 1]
    if dtype.kind == "f":
        top = float(np.finfo(dtype).max)
        return [top, -top, top * (1 + 2**-12), 65519.0, 65520, -70000]
    return [True, False]


EDGES = sorted({x for d in DTYPES for x in _edges(d) if not isinstance(x, bool)}, key=float)
wide_elements = st.one_of(
    st.integers(min_value=-(2**66), max_value=2**66),  # past 64 bits: JSON has no limit, orjson makes floats
    st.sampled_from(EDGES),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([True, False, None, "1", {}, [], 0.5, 2.0, -0.0]),
)


def elements_for(dtype: np.dtype[Any]) -> st.SearchStrategy[Any]:
    """Elements ``dtype`` takes, mostly, and anything at all, sometimes."""
    if dtype.kind == "b":
        fitting: st.SearchStrategy[Any] = st.booleans()
    elif dtype.kind == "f":
        fitting = st.floats(width=16 if dtype.itemsize == 2 else 32, allow_nan=False, allow_infinity=False)
    else:
        info = np.iinfo(dtype)
        fitting = st.integers(min_value=int(info.min), max_value=int(info.max))
    return st.one_of(fitting, fitting, fitting, st.sampled_from(_edges(dtype)), wide_elements)


@st.composite
def dtype_events(draw: st.DrawFn) -> bytes:
    """An event for a ``(2, -1)`` input of any dtype, elements near and past its limits, as JSON text."""
    dtype = draw(st.sampled_from([*DTYPES, np.dtype(object)]))
    cols = draw(st.integers(min_value=0, max_value=5))
    elements = elements_for(dtype) if dtype in DTYPES else wide_elements
    rows = [draw(st.lists(elements, min_size=cols, max_size=cols)) for _ in range(2)]
    doc = {"id": "d", "model": f"d_{dtype.name}", "inputs": {"t": rows}}
    return json.dumps(doc).encode()  # json, not orjson: integers past 64 bits are written as they are


header_names = st.one_of(
    st.sampled_from(["traceparent", "tracestate", "x", CONTENT_TYPE_HEADER]), st.text(max_size=12)
)
headers_lists = st.lists(st.tuples(header_names, st.binary(max_size=40)), max_size=LIMITS.max_headers + 2)
keys = st.one_of(st.none(), st.binary(max_size=LIMITS.max_key_bytes + 16))


@st.composite
def near_valid_events(draw: st.DrawFn) -> bytes:
    """A valid event for one of the models, then one to three faults."""
    model = draw(st.sampled_from(["m", "pair", None]))
    doc: dict[str, Any] = {"id": draw(ids)}
    if model == "pair":
        doc["model"] = "pair"
        rows = draw(st.integers(min_value=0, max_value=4))
        ints = st.integers(min_value=-(2**31), max_value=2**31 - 1)
        doc["inputs"] = {
            "a": draw(st.lists(numbers, min_size=2, max_size=2)),
            "b": draw(st.lists(st.lists(ints, min_size=rows, max_size=rows), min_size=2, max_size=2)),
        }
    else:
        if model:
            doc["model"] = model
        features = draw(st.lists(numbers, min_size=3, max_size=3))
        if draw(st.booleans()):
            doc["features"] = features
        else:
            doc["inputs"] = {"features": features}
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        fault = draw(
            st.sampled_from(
                ["drop", "retype", "extra", "input", "element", "huge_id", "null_model", "unknown_model"]
            )
        )
        _apply(draw, doc, fault)
    return orjson.dumps(doc)


def _apply(draw: st.DrawFn, doc: dict[str, Any], fault: str) -> None:
    keys = ["id", "model", "inputs", "features"]
    if fault == "drop":
        doc.pop(draw(st.sampled_from(keys)), None)
    elif fault == "retype":
        doc[draw(st.sampled_from(keys))] = draw(json_values)
    elif fault == "extra":
        doc[draw(st.text(max_size=8))] = draw(json_values)
    elif fault == "huge_id":
        doc["id"] = "x" * draw(st.integers(min_value=LIMITS.max_id_length + 1, max_value=400))
    elif fault == "null_model":
        doc["model"] = None
    elif fault == "unknown_model":
        doc["model"] = draw(st.text(max_size=70))
    else:
        tensors = doc.get("inputs") if isinstance(doc.get("inputs"), dict) else None
        if fault == "input" and tensors is not None:
            tensors[draw(st.sampled_from(["features", "a", "b", "zz"]))] = draw(bad_values)
        elif fault == "element":
            target = doc.get("features", tensors and next(iter(tensors.values()), None))
            if isinstance(target, list) and target:
                target[draw(st.integers(0, len(target) - 1))] = draw(bad_values | scalars)


def valid_events_alone() -> st.SearchStrategy[bytes]:
    """Valid events of the one-input model."""
    return st.builds(
        lambda i, xs: orjson.dumps({"id": f"e{i}", "features": xs}),
        st.integers(0, 10**6),
        st.lists(numbers, min_size=3, max_size=3),
    )


# --------------------------------------------------------------------- tests


@settings(FUZZ, max_examples=2500)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_an_event_or_a_dead_letter(value: bytes) -> None:
    check(value)


@settings(FUZZ, max_examples=1500)
@given(st.binary(min_size=1, max_size=40), st.integers(min_value=0, max_value=60))
def test_invalid_utf8_inside_a_valid_event_is_invalid_json(junk: bytes, at: int) -> None:
    valid = orjson.dumps({"id": "abc", "features": [1.0, 2.0, 3.0], "note": "x" * 20})
    at = min(at, len(valid))
    value = valid[:at] + b"\xff" + junk + valid[at:]
    out = check(value)
    assert isinstance(out, DeadLetter) and out.reason is Reason.INVALID_JSON


@settings(FUZZ, max_examples=1000)
@given(json_values)
def test_arbitrary_json_documents_follow_the_contract(doc: Any) -> None:
    check(orjson.dumps(doc))


@settings(FUZZ, max_examples=2500)
@given(tensor_events())
def test_tensors_of_any_shape_and_element_type_get_the_right_reason(value: bytes) -> None:
    check(value)


@settings(FUZZ, max_examples=2000)
@given(near_valid_events())
def test_near_valid_events_with_faults_get_the_right_reason(value: bytes) -> None:
    check(value)


@settings(FUZZ, max_examples=1500)
@given(dtype_events())
def test_elements_of_every_dtype_near_and_past_its_limits_get_the_right_reason(value: bytes) -> None:
    out = check(value)
    if isinstance(out, DeadLetter) and out.reason is Reason.BAD_DTYPE:
        assert "input 't'" in out.message


@settings(FUZZ, max_examples=800)
@given(st.one_of(valid_events_alone(), near_valid_events(), st.none()), keys, headers_lists)
def test_any_key_and_headers_of_arbitrary_bytes_follow_the_contract(
    value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes]]
) -> None:
    check(value, key, tuple(headers))


@settings(FUZZ, max_examples=500)
@given(
    st.sampled_from(["NaN", "-NaN", "Infinity", "-Infinity", "1e400", "-1e999"]),
    st.integers(min_value=0, max_value=2),
    st.sampled_from(["features", "id", "model"]),
)
def test_nan_and_infinity_literals_are_invalid_json(literal: str, position: int, field: str) -> None:
    values = ["1.0", "2.0", "3.0"]
    values[position] = literal
    features = "[" + ", ".join(values) + "]"
    doc = {"features": features, "id": '"a"', "model": '"m"'}
    doc[field] = literal if field != "features" else features
    value = ("{" + ", ".join(f'"{k}": {v}' for k, v in doc.items()) + "}").encode()
    out = check(value)
    assert isinstance(out, DeadLetter) and out.reason is Reason.INVALID_JSON


@settings(FUZZ, max_examples=500)
@given(st.integers(min_value=LIMITS.max_message_bytes + 1, max_value=5 * LIMITS.max_message_bytes))
def test_values_over_the_byte_limit_are_too_large_before_parsing(size: int) -> None:
    head = b'{"id": "a", "features": [1, 2, 3], "pad": "'
    value = head + b"x" * (size - len(head) - 2) + b'"}'
    with mock.patch.object(json_input.orjson, "loads", side_effect=AssertionError("parsed over the limit")):
        out = decode(raw_record(value), CTX)
    assert isinstance(out, DeadLetter) and out.reason is Reason.TOO_LARGE


@settings(FUZZ, max_examples=500)
@given(
    st.integers(min_value=1, max_value=30),
    st.integers(min_value=2, max_value=40),
    st.integers(min_value=1, max_value=4),
)
def test_inputs_over_the_element_limit_are_too_large_before_any_array_is_made(
    rows: int, cols: int, depth: int
) -> None:
    features = _nested(depth - 1, [[0.5] * cols for _ in range(rows)])
    value = orjson.dumps({"id": "a", "features": features})
    with mock.patch.object(json_input.np, "asarray", wraps=np.asarray) as asarray:
        out = check(value)
    if rows * cols > LIMITS.max_elements:
        assert isinstance(out, DeadLetter) and out.reason is Reason.TOO_LARGE
        assert not asarray.called, "an array was built for an input over the element limit"
    else:
        assert isinstance(out, DeadLetter) and out.reason is Reason.BAD_SHAPE  # [30] wanted


def test_null_key_and_null_value_are_handled() -> None:
    assert isinstance(
        decode(raw_record(orjson.dumps({"id": "a", "features": [1, 2, 3]}), key=None), CTX), Event
    )
    out = decode(raw_record(None, key=None), CTX)
    assert isinstance(out, DeadLetter) and out.reason is Reason.INVALID_JSON


def test_depth_past_the_json_parser_limit_is_invalid_json() -> None:
    value = b'{"id": "a", "features": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    out = decode(raw_record(value), DecodeContext(MODELS, "m", LimitSettings()))
    assert isinstance(out, DeadLetter) and out.reason is Reason.INVALID_JSON


# ------------------------------------------------------- batches (decode_many)


def check_batch(values: list[bytes], envelopes: list[tuple[bytes | None, Headers]] | None = None) -> None:
    """``decode_many`` gives each value of a batch the outcome ``decode`` gives it alone.

    ``envelopes``: (key, headers) of each record, else key ``b"k"`` and no headers.
    """
    envelopes = envelopes or [(b"k", ())] * len(values)
    records = [
        raw_record(v, offset=i, key=k, headers=h)
        for i, (v, (k, h)) in enumerate(zip(values, envelopes, strict=True))
    ]
    outs = decode_many(records, CTX)
    assert len(outs) == len(values)
    for record, out in zip(records, outs, strict=True):
        alone = decode(record, CTX)
        assert out.record is record
        if isinstance(alone, DeadLetter):
            assert isinstance(out, DeadLetter) and out.reason is alone.reason, (record.value, alone, out)
        else:
            assert isinstance(out, Event), (record.value, out)
            assert (out.id, out.model) == (alone.id, alone.model)
            for name, arr in alone.inputs.items():
                assert out.inputs[name].dtype == arr.dtype
                np.testing.assert_array_equal(out.inputs[name], arr)


valid_events = st.builds(
    lambda i, xs: orjson.dumps({"id": f"e{i}", "features": xs}),
    st.integers(0, 10**6),
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=3, max_size=3),
)


@settings(FUZZ, max_examples=600)
@given(st.lists(st.one_of(valid_events, tensor_events(), near_valid_events()), min_size=1, max_size=12))
def test_a_batch_of_mixed_events_decodes_like_each_event_alone(values: list[bytes]) -> None:
    check_batch(values)


@settings(FUZZ, max_examples=300)
@given(
    st.lists(
        st.tuples(st.one_of(valid_events, dtype_events(), near_valid_events()), keys, headers_lists),
        min_size=1,
        max_size=16,
    )
)
def test_a_batch_with_any_keys_headers_and_dtypes_decodes_like_each_event_alone(
    records: list[tuple[bytes, bytes | None, list[tuple[str, bytes]]]],
) -> None:
    check_batch([v for v, _, _ in records], [(k, tuple(h)) for _, k, h in records])


@settings(FUZZ, max_examples=300)
@given(st.lists(valid_events, min_size=2, max_size=40), st.integers(0, 39), tensor_events())
def test_one_bad_tensor_in_a_valid_batch_gets_its_own_reason(
    values: list[bytes], at: int, odd: bytes
) -> None:
    values[at % len(values)] = odd
    check_batch(values)


def test_a_valid_batch_is_converted_in_one_piece() -> None:
    values = [orjson.dumps({"id": f"e{i}", "features": [i, 2.5, -1.0]}) for i in range(50)]
    ctx = DecodeContext(MODELS, "m", LIMITS.model_copy(update={"max_held_value_bytes": 1_000_000}))
    with mock.patch.object(json_input, "to_tensor", side_effect=AssertionError("per-event path used")):
        outs = decode_many([raw_record(v) for v in values], ctx)
    assert all(isinstance(o, Event) for o in outs)
    assert [o.inputs["features"][0] for o in outs if isinstance(o, Event)] == list(range(50))
