"""The binary wire layout: KServe v2's binary tensor extension, carried in a Kafka record.

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
This module writes events (for producers) and reads binary values back (for
consumers of the outputs); :mod:`engine.contract.binary_input` decodes and
checks events, :mod:`engine.contract.outputs` writes predictions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from engine.contract.dtypes import triton_name
from engine.modelspec import WIRE_DTYPES
from engine.records import Headers

BINARY_CONTENT_TYPE = "application/vnd.kserve.v2.binary"
JSON_CONTENT_TYPE = "application/json"
CONTENT_TYPE_HEADER = "content-type"
HEADER_LENGTH_HEADER = "inference-header-content-length"
_BINARY = BINARY_CONTENT_TYPE.encode()


def encode_binary_event(
    event_id: str, inputs: Mapping[str, np.ndarray], model: str | None = None
) -> tuple[bytes, Headers]:
    """A binary event's value and headers (for producers; ``inputs`` in the model's dtypes)."""
    doc: dict[str, Any] = {"id": event_id} | ({"model": model} if model else {})
    arrays = [np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")) for a in inputs.values()]
    doc["inputs"] = [
        tensor_description(name, wire_name(a.dtype), list(a.shape), a.nbytes)
        for name, a in zip(inputs, arrays, strict=True)
    ]
    header = orjson.dumps(doc)
    value = b"".join([header, *(a.tobytes() for a in arrays)])
    return value, binary_headers(len(header))


def tensor_description(name: str, datatype: str, shape: list[int], size: int) -> dict[str, Any]:
    """One tensor as an inference header lists it (``binary_data_size``: its bytes)."""
    return {"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": size}}


def binary_headers(header_length: int) -> Headers:
    """The Kafka headers of a binary record whose JSON header is ``header_length`` bytes."""
    return ((CONTENT_TYPE_HEADER, _BINARY), (HEADER_LENGTH_HEADER, b"%d" % header_length))


def wire_name(dtype: np.dtype[Any]) -> str:
    """The Triton name of ``dtype`` whatever its byte order (``FP32``)."""
    return triton_name(dtype.newbyteorder("="))


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
