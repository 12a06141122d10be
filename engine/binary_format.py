"""Binary tensor events: KServe v2's binary tensor extension, carried in a Kafka record.

A record whose ``content-type`` header is :data:`BINARY_CONTENT_TYPE` holds

* a JSON *inference header* of ``inference-header-content-length`` bytes (a
  Kafka header, as Triton's HTTP header of the same name)::

    {"id": "ev-1", "model": "breast_cancer",
     "inputs": [{"name": "input__0", "datatype": "FP32", "shape": [30],
                 "parameters": {"binary_data_size": 120}}]}

  (``model`` optional as in JSON events; ``shape`` is one event's, without the
  batch axis; every model input once);
* then each input's elements as raw little-endian bytes, in the header's
  order, ``binary_data_size`` bytes each, nothing after the last.

Predictions of binary events are binary too (``outputs`` described the same
way, then their bytes), unless ``SIE_TOPICS__OUTPUT_FORMAT`` says otherwise.
This module writes both (events for producers, predictions for the pipeline)
and reads them back; :mod:`engine.binary_codec` decodes and checks events.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from engine.dtypes import triton_name
from engine.modelspec import WIRE_DTYPES
from engine.records import Event, Headers

BINARY_CONTENT_TYPE = "application/vnd.kserve.v2.binary"
JSON_CONTENT_TYPE = "application/json"
CONTENT_TYPE_HEADER = "content-type"
HEADER_LENGTH_HEADER = "inference-header-content-length"
_BINARY = BINARY_CONTENT_TYPE.encode()


def encode_binary_event(
    event_id: str, inputs: Mapping[str, np.ndarray], model: str | None = None
) -> tuple[bytes, Headers]:
    """A binary event's value and headers (for producers; ``inputs`` in the model's dtypes)."""
    return _encode({"id": event_id} | ({"model": model} if model else {}), "inputs", inputs)


class BinaryPredictions:
    """Binary predictions of one batch: the outputs described and laid out once, sliced per event."""

    def __init__(self, model_version: str, outputs: Mapping[str, np.ndarray]) -> None:
        self._version = model_version
        arrays = [np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")) for a in outputs.values()]
        self._described = [
            {
                "name": name,
                "datatype": _wire_name(a.dtype),
                "shape": list(a.shape[1:]),
                "parameters": {"binary_data_size": a[0].nbytes if len(a) else 0},
            }
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
        length = b"%d" % len(header)
        return b"".join(parts), ((CONTENT_TYPE_HEADER, _BINARY), (HEADER_LENGTH_HEADER, length))


def _wire_name(dtype: np.dtype[Any]) -> str:
    return triton_name(dtype.newbyteorder("="))


def _encode(doc: dict[str, Any], key: str, tensors: Mapping[str, np.ndarray]) -> tuple[bytes, Headers]:
    arrays = [np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")) for a in tensors.values()]
    doc[key] = [
        {
            "name": name,
            "datatype": _wire_name(a.dtype),
            "shape": list(a.shape),
            "parameters": {"binary_data_size": a.nbytes},
        }
        for name, a in zip(tensors, arrays, strict=True)
    ]
    header = orjson.dumps(doc)
    value = b"".join([header, *(a.tobytes() for a in arrays)])
    return value, ((CONTENT_TYPE_HEADER, _BINARY), (HEADER_LENGTH_HEADER, str(len(header)).encode()))


def media_type(content_type: bytes) -> bytes:
    """A ``content-type`` value without parameters, lower case (``b"application/json"``)."""
    return content_type.split(b";", 1)[0].strip().lower()


def binary_header_length(headers: Sequence[tuple[str, bytes | None]]) -> int | None:
    """The JSON header's length of a binary record (its headers as a Kafka client gives them); None
    for a record that is not binary or whose length header is not a number."""
    kinds = [v for k, v in headers if k == CONTENT_TYPE_HEADER and v is not None]
    if not kinds or media_type(kinds[-1]) != _BINARY:
        return None
    lengths = [v for k, v in headers if k == HEADER_LENGTH_HEADER and v is not None]
    return int(lengths[-1]) if lengths and lengths[-1].strip().isdigit() else None


def decode_binary_value(value: bytes, header_length: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(header, tensors by name) of a binary event or prediction (for consumers of the outputs)."""
    doc = orjson.loads(value[:header_length])
    key = "outputs" if "outputs" in doc else "inputs"
    tensors, at = {}, header_length
    for item in doc[key]:
        size = item["parameters"]["binary_data_size"]
        dtype = _NUMPY[item["datatype"]].newbyteorder("<")
        flat = np.frombuffer(value, dtype, count=size // dtype.itemsize, offset=at)
        tensors[item["name"]] = flat.reshape(item["shape"])
        at += size
    return doc, tensors


_NUMPY = {name: dtype for dtype, name in WIRE_DTYPES.items()}
