"""Binary tensor events (KServe v2 binary layout): the same contract, reasons and limits as JSON events."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.contract.context import DecodeContext
from engine.contract.decode import decode, decode_many
from engine.contract.outputs import BinaryPredictions
from engine.contract.wire import (
    BINARY_CONTENT_TYPE,
    CONTENT_TYPE_HEADER,
    HEADER_LENGTH_HEADER,
    decode_binary_value,
    encode_binary_event,
)
from engine.errors import Reason
from engine.modelspec import ModelSpec, TensorSpec
from engine.records import DeadLetter, Event, RawRecord
from engine.routing import Router
from engine.settings import LimitSettings, RoutingSettings
from engine.testing import model_spec, raw_record

PAIR = ModelSpec(
    "pair",
    8,
    (TensorSpec("a", np.dtype(np.float32), (2,)), TensorSpec("b", np.dtype(np.int64), (-1,))),
    (TensorSpec("y", np.dtype(np.float32), (1,)),),
)
FLAGS = ModelSpec("flags", 8, (TensorSpec("f", np.dtype(np.bool_), (3,)),), ())
CTX = DecodeContext(
    models={"m": model_spec("m", 3), "pair": PAIR, "flags": FLAGS},
    default_model="m",
    limits=LimitSettings(max_message_bytes=2000, max_elements=100, max_id_length=32, max_key_bytes=16),
)
F3 = np.array([1.0, 2.5, -3.0], dtype=np.float32)


def binary(
    event_id: Any = "a",
    inputs: dict[str, np.ndarray] | None = None,
    model: str | None = None,
    *,
    header: dict[str, Any] | None = None,
    body: bytes | None = None,
    offset: int = 0,
    key: bytes | None = b"k",
    length: bytes | None = None,
) -> RawRecord:
    """A binary event; ``header``/``body`` replace what the encoder wrote, to build faults."""
    value, headers = encode_binary_event(event_id, {"features": F3} if inputs is None else inputs, model)
    size = int(dict(headers)[HEADER_LENGTH_HEADER])
    head, rest = value[:size], value[size:]
    if header is not None:
        head = orjson.dumps(header)
    if body is not None:
        rest = body
    hdrs = (
        (CONTENT_TYPE_HEADER, BINARY_CONTENT_TYPE.encode()),
        (HEADER_LENGTH_HEADER, length or b"%d" % len(head)),
    )
    return raw_record(head + rest, offset=offset, key=key, headers=hdrs)


def described(name: str, datatype: str, shape: list[int], size: int) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": size}}


def reason_of(record: RawRecord) -> Reason:
    out = decode(record, CTX)
    assert isinstance(out, DeadLetter), out
    many = decode_many([record, record], CTX)
    assert all(isinstance(d, DeadLetter) and d.reason == out.reason for d in many)  # both paths agree
    return out.reason


def test_binary_event_decodes_to_the_same_tensor_as_its_json_twin() -> None:
    out = decode(binary(), CTX)
    twin = decode(raw_record(orjson.dumps({"id": "a", "features": F3.tolist()})), CTX)
    assert isinstance(out, Event) and isinstance(twin, Event)
    assert out.binary and not twin.binary
    assert out.inputs["features"].dtype == np.float32
    np.testing.assert_array_equal(out.inputs["features"], twin.inputs["features"])


def test_a_chunk_mixing_json_and_binary_events_decodes_in_order_like_one_by_one() -> None:
    records = []
    for i in range(40):
        if i % 3 == 0:
            records.append(raw_record(orjson.dumps({"id": f"j{i}", "features": [i, 1, 2]}), offset=i))
        else:
            records.append(binary(f"b{i}", {"features": np.array([i, 1, 2], np.float32)}, offset=i))
    records[7] = binary("bad", {"features": np.array([np.nan, 1, 2], np.float32)}, offset=7)
    many = decode_many(records, CTX)
    single = [decode(r, CTX) for r in records]
    assert len(many) == len(records)
    for i, (a, b) in enumerate(zip(many, single, strict=True)):
        assert type(a) is type(b)
        if isinstance(a, Event):
            assert isinstance(b, Event) and a.id == b.id and a.binary == b.binary
            assert a.inputs["features"][0] == i
            np.testing.assert_array_equal(a.inputs["features"], b.inputs["features"])
        else:
            assert isinstance(b, DeadLetter) and (a.reason, a.message) == (b.reason, b.message)
    assert isinstance(many[7], DeadLetter) and many[7].reason == Reason.BAD_DTYPE
    assert "[0] is nan" in many[7].message


def test_two_inputs_with_a_variable_dim_decode_in_header_order() -> None:
    b = np.array([5, 6, 7, 8], np.int64)
    out = decode(binary(inputs={"b": b, "a": np.array([1, 2], np.float32)}, model="pair"), CTX)
    assert isinstance(out, Event) and out.model == "pair"
    np.testing.assert_array_equal(out.inputs["b"], b)
    np.testing.assert_array_equal(out.inputs["a"], [1, 2])


def test_events_naming_different_models_in_one_chunk_keep_their_models_and_order() -> None:
    records = [
        binary(
            f"e{i}",
            model="pair" if i % 2 else None,
            inputs={"a": np.ones(2, np.float32), "b": np.arange(i, dtype=np.int64)} if i % 2 else None,
            offset=i,
        )
        for i in range(6)
    ]
    out = decode_many(records, CTX)
    assert [e.model for e in out if isinstance(e, Event)] == ["m", "pair", "m", "pair", "m", "pair"]


F = {"features": F3}


@pytest.mark.parametrize(
    ("record", "reason", "words"),
    [
        (binary(length=b"x1"), Reason.INVALID_EVENT, HEADER_LENGTH_HEADER),
        (binary(length=b"99999"), Reason.INVALID_EVENT, HEADER_LENGTH_HEADER),
        (binary(header=None, body=b"", length=b"3"), Reason.INVALID_JSON, "not valid JSON"),
        (binary(event_id=""), Reason.MISSING_ID, "'id'"),
        (binary(event_id=7), Reason.INVALID_EVENT, "'id'"),
        (binary(event_id="x" * 40), Reason.TOO_LARGE, "'id'"),
        (binary(model="nope"), Reason.UNKNOWN_MODEL, "nope"),
        (binary(key=b"k" * 17), Reason.TOO_LARGE, "key"),
        (binary(inputs={"features": F3.astype(np.float64)}), Reason.BAD_DTYPE, "FP64"),
        (binary(inputs={"features": np.ones(4, np.float32)}), Reason.BAD_SHAPE, "shape [4]"),
        (binary(inputs={"features": np.ones((1, 3), np.float32)}), Reason.BAD_SHAPE, "shape [1, 3]"),
        (binary(inputs={}), Reason.MISSING_INPUT, "features"),
        (binary(inputs={**F, "extra": F3}), Reason.INVALID_EVENT, "unknown inputs"),
        (binary(header={"id": "a", "inputs": "x"}), Reason.INVALID_EVENT, "'inputs'"),
        (binary(header={"id": "a"}), Reason.MISSING_INPUT, "no 'inputs'"),
        (
            binary(header={"id": "a", "inputs": [described("features", "FP32", [3], 8)]}),
            Reason.INVALID_EVENT,
            "binary_data_size must be 12",
        ),
        (
            binary(header={"id": "a", "inputs": [described("features", "FP32", [3], 12)] * 2}),
            Reason.INVALID_EVENT,
            "listed twice",
        ),
        (binary(body=F3.tobytes() + b"\0"), Reason.INVALID_EVENT, "1 bytes follow"),
        (binary(body=F3.tobytes()[:-1]), Reason.INVALID_EVENT, "ends inside"),
        (binary(inputs={"features": np.array([1, np.inf, 2], np.float32)}), Reason.BAD_DTYPE, "[1] is inf"),
        (
            binary(
                inputs={"f": np.array([1, 0, 2], np.uint8)},
                model="flags",
                header={"id": "a", "model": "flags", "inputs": [described("f", "BOOL", [3], 3)]},
            ),
            Reason.BAD_DTYPE,
            "[2] is byte 2",
        ),
        (
            binary(inputs={"a": np.ones(2, np.float32), "b": np.ones(200, np.int64)}, model="pair"),
            Reason.TOO_LARGE,
            "200 elements",
        ),
    ],
)
def test_faulty_binary_events_get_the_json_contract_reasons(
    record: RawRecord, reason: Reason, words: str
) -> None:
    assert reason_of(record) == reason
    letter = decode(record, CTX)
    assert isinstance(letter, DeadLetter) and words in letter.message


def test_an_unknown_content_type_is_dead_lettered_and_json_ones_are_json() -> None:
    body = orjson.dumps({"id": "a", "features": [1, 2, 3]})
    refused = raw_record(body, headers=((CONTENT_TYPE_HEADER, b"text/plain\n\x1b[31m"),))
    letter = decode(refused, CTX)
    assert isinstance(letter, DeadLetter) and letter.reason == Reason.INVALID_EVENT
    assert "content-type" in letter.message and "\x1b" not in letter.message
    for kind in (b"application/json", b"Application/JSON; charset=utf-8", b""):
        assert isinstance(decode(raw_record(body, headers=((CONTENT_TYPE_HEADER, kind),)), CTX), Event)


def test_binary_predictions_round_trip_per_row() -> None:
    outputs = {
        "probabilities": np.array([[0.1, 0.9], [0.7, 0.3]], np.float32),
        "label": np.array([[1], [0]], np.int64),
    }
    encoder = BinaryPredictions("3", outputs)
    event = decode(binary("e1"), CTX)
    assert isinstance(event, Event)
    value, headers = encoder.encode(event, 1, {"total": 1.5})
    assert dict(headers)[CONTENT_TYPE_HEADER] == BINARY_CONTENT_TYPE.encode()
    doc, tensors = decode_binary_value(value, int(dict(headers)[HEADER_LENGTH_HEADER]))
    assert doc["id"] == "e1" and doc["model_version"] == "3" and doc["timing_ms"] == {"total": 1.5}
    np.testing.assert_allclose(tensors["probabilities"], [0.7, 0.3], rtol=1e-6)
    assert tensors["label"].tolist() == [0] and tensors["label"].dtype == np.int64


FUZZ = settings(deadline=None, database=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(
    values=st.lists(st.binary(max_size=300), min_size=1, max_size=8),
    lengths=st.lists(
        st.one_of(st.none(), st.binary(max_size=6), st.integers(-3, 320).map(lambda n: b"%d" % n)),
        min_size=8,
        max_size=8,
    ),
)
def test_arbitrary_bytes_as_binary_events_become_dead_letters_never_errors(
    values: list[bytes], lengths: list[bytes | None]
) -> None:
    records = []
    for i, value in enumerate(values):
        hdrs: tuple[tuple[str, bytes], ...] = ((CONTENT_TYPE_HEADER, BINARY_CONTENT_TYPE.encode()),)
        if lengths[i] is not None:
            hdrs += ((HEADER_LENGTH_HEADER, lengths[i]),)
        records.append(raw_record(value, offset=i, headers=hdrs))
    many = decode_many(records, CTX)
    assert len(many) == len(records)
    for record, item in zip(records, many, strict=True):
        single = decode(record, CTX)
        assert type(single) is type(item) and item.record is record
        if isinstance(item, DeadLetter):
            assert isinstance(single, DeadLetter) and item.reason == single.reason


@FUZZ
@given(
    data=st.data(),
    n=st.integers(1, 6),
)
def test_near_valid_binary_events_with_one_fault_agree_between_batch_and_single_decoding(
    data: st.DataObject, n: int
) -> None:
    records = []
    for i in range(n):
        values = data.draw(
            st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=2, max_size=4)
        )
        header = {
            "id": data.draw(st.sampled_from(["a", "", "b" * 40, 5])),
            "inputs": [
                described(
                    "features",
                    data.draw(st.sampled_from(["FP32", "FP16", "INT32"])),
                    [len(values)],
                    4 * len(values),
                )
            ],
        }
        records.append(binary(header=header, body=np.array(values, np.float32).tobytes(), offset=i))
    many = decode_many(records, CTX)
    for record, item in zip(records, many, strict=True):
        single = decode(record, CTX)
        assert type(item) is type(single)
        if isinstance(item, Event):
            assert isinstance(single, Event)
            np.testing.assert_array_equal(item.inputs["features"], single.inputs["features"])
            assert np.isfinite(item.inputs["features"]).all()
        else:
            assert isinstance(single, DeadLetter) and (item.reason, item.message) == (
                single.reason,
                single.message,
            )


def test_binary_events_follow_a_b_routing_like_json_events() -> None:
    experiments = {
        "m": [
            {"name": "control", "model": "m", "version": "1"},
            {"name": "new", "model": "m", "version": "2"},
        ]
    }
    router = Router(RoutingSettings.model_validate({"experiments": experiments}), "m")
    ctx = DecodeContext(CTX.models, "m", CTX.limits, router=router)
    keys = [f"key-{i}".encode() for i in range(30)]
    out = decode_many([binary(f"e{i}", key=k, offset=i) for i, k in enumerate(keys)], ctx)
    twins = [
        decode(raw_record(orjson.dumps({"id": f"e{i}", "features": [1, 2, 3]}), key=k), ctx)
        for i, k in enumerate(keys)
    ]
    assert all(isinstance(e, Event) for e in out)
    assert [(e.arm, e.version) for e in out] == [(t.arm, t.version) for t in twins]  # type: ignore[union-attr]
    assert {e.arm for e in out} == {"control", "new"}  # type: ignore[union-attr]


def test_a_header_layout_seen_before_in_a_chunk_cannot_smuggle_a_different_id() -> None:
    listed = [described("features", "FP32", [3], 12)]
    sneaky = [
        binary(header={"id": f"first-{i}", "inputs": listed}, offset=i)  # a plain layout, remembered
        for i in range(3)
    ]
    for i in range(3, 6):  # a second "id" after the first: JSON's last one wins, as orjson reads it
        head = b'{"id":"x%d","inputs":%s,"id":"real-%d"}' % (i, orjson.dumps(listed), i)
        hdrs = (
            (CONTENT_TYPE_HEADER, BINARY_CONTENT_TYPE.encode()),
            (HEADER_LENGTH_HEADER, b"%d" % len(head)),
        )
        sneaky.append(raw_record(head + F3.tobytes(), offset=i, headers=hdrs))
    out = decode_many(sneaky, CTX)
    assert [e.id for e in out if isinstance(e, Event)] == [
        "first-0",
        "first-1",
        "first-2",
        "real-3",
        "real-4",
        "real-5",
    ]
    assert [e.id for e in (decode(r, CTX) for r in sneaky) if isinstance(e, Event)] == [
        e.id for e in out if isinstance(e, Event)
    ]


def test_the_readme_producer_example_writes_an_event_the_engine_decodes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import re
    from pathlib import Path

    import confluent_kafka

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    example = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "kserve.v2.binary" in b)
    sent: list[dict[str, Any]] = []

    class Producer:
        def __init__(self, _config: dict[str, str]) -> None:
            pass

        def produce(self, topic: str, **kwargs: Any) -> None:
            sent.append({"topic": topic, **kwargs})

    monkeypatch.setattr(confluent_kafka, "Producer", Producer)
    row = np.linspace(0.1, 3.0, 30)
    exec(example, {"row": row})  # noqa: S102 - the README's own example
    (record,) = sent
    ctx = DecodeContext({"breast_cancer": model_spec("breast_cancer", 30)}, "breast_cancer", LimitSettings())
    out = decode(raw_record(record["value"], key=record["key"], headers=tuple(record["headers"])), ctx)
    assert isinstance(out, Event) and out.id == "order-17" and out.binary
    np.testing.assert_allclose(out.inputs["features"], row.astype(np.float32))
