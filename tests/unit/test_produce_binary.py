"""``sie produce --format binary``: JSON lines become binary tensor events the engine decodes alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson

from engine.contract.context import DecodeContext
from engine.contract.decode import decode
from engine.records import DeadLetter, Event
from engine.settings import LimitSettings
from engine.testing import raw_record
from ops.binary_events import BinaryConverter
from ops.loadgen import prediction_id

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"


def test_json_lines_convert_to_binary_events_with_the_models_dtypes() -> None:
    converter = BinaryConverter.from_repository(REPOSITORY, "breast_cancer")
    ctx = DecodeContext(converter.specs, "breast_cancer", LimitSettings())
    lines = [
        (orjson.dumps({"id": "a", "features": list(range(30))}), b"a"),
        (orjson.dumps({"id": "b", "model": "iris", "inputs": {"features": [5.1, 3.5, 1.4, 0.2]}}), b"b"),
        (b"{not json", None),
        (orjson.dumps({"id": "c", "features": ["x"] * 30}), b"c"),
    ]
    out = list(converter.convert_all(lines))
    assert [dict(h).get("content-type") for _, _, h in out] == [
        b"application/vnd.kserve.v2.binary",
        b"application/vnd.kserve.v2.binary",
        None,  # sent as is: the engine dead-letters it with its reason
        None,
    ]
    decoded = [decode(raw_record(v, key=k, headers=tuple(h)), ctx) for v, k, h in out]
    first, second = decoded[0], decoded[1]
    assert isinstance(first, Event) and first.binary and first.inputs["features"].dtype == np.float32
    np.testing.assert_array_equal(first.inputs["features"], np.arange(30))
    assert isinstance(second, Event) and second.model == "iris"
    assert [d.reason.value for d in decoded[2:] if isinstance(d, DeadLetter)] == ["invalid_json", "bad_dtype"]


def test_the_load_generators_monitor_reads_ids_of_json_and_binary_predictions() -> None:
    from engine.contract.outputs import BinaryPredictions

    converter = BinaryConverter.from_repository(REPOSITORY, "breast_cancer")
    ctx = DecodeContext(converter.specs, "breast_cancer", LimitSettings())
    value, headers = converter.convert(orjson.dumps({"id": "ev-7", "features": list(range(30))})) or (b"", ())
    event = decode(raw_record(value, headers=tuple(headers)), ctx)
    assert isinstance(event, Event)
    out, out_headers = BinaryPredictions("1", {"probabilities": np.zeros((1, 2), np.float32)}).encode(
        event, 0, {}
    )
    assert prediction_id(out, list(out_headers)) == "ev-7"
    assert prediction_id(b'{"id": "ev-8", "outputs": {}}', None) == "ev-8"
    assert prediction_id(b"\x00not json", [("content-type", b"application/json")]) is None
