"""Decoding binary tensor events (the layout: :mod:`engine.contract.wire`).

Events are checked exactly as JSON events are - the same limits and reason
codes (:mod:`engine.contract.input_checks`): ``datatype`` must be the model's
(``bad_dtype``), ``shape`` its dims (``bad_shape``), floats finite and booleans
0 or 1 (``bad_dtype``). A chunk's events of one model whose header lists the
model's inputs exactly as expected are held (:class:`BinaryHeld`) and converted
together: their bytes joined once, one ``numpy.frombuffer`` per chunk and
input, one finiteness check; anything else (or a group that fails a check) is
converted event by event, for a precise reason.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from engine.contract.context import DecodeContext
from engine.contract.dtypes import json_kind, triton_name
from engine.contract.input_checks import (
    check_envelope,
    check_input_names,
    check_value_size,
    event_id_of,
    fanned_out,
    internal_letter,
    letter,
    route_of,
)
from engine.contract.wire import HEADER_LENGTH_HEADER, tensor_description
from engine.errors import EventError, Reason
from engine.modelspec import ModelSpec, TensorSpec
from engine.records import DeadLetter, Event, RawRecord, fast_init
from engine.routing import Route
from engine.safe_text import cleaned, shown

_MAX_HEADER_DIGITS = 10


@fast_init
@dataclass(frozen=True, slots=True)
class BinaryParsed:
    """A binary event whose header is valid JSON with an id and a served model; tensors unchecked."""

    record: RawRecord
    event_id: str
    spec: ModelSpec
    route: Route
    inputs: Any  # the header's "inputs", as parsed
    body: int  # offset of the first tensor byte in the value


Layouts = dict[bytes, dict[str, Any]]  # a header's bytes after its id -> the header parsed
_ID_PREFIX = b'{"id":"'
_PLAIN_ID = re.compile(rb"[\x20\x21\x23-\x5b\x5d-\x7e]+")  # printable ASCII but no quote or backslash
_MAX_LAYOUTS = 16


def parse_binary(
    record: RawRecord, ctx: DecodeContext, layouts: Layouts | None = None
) -> BinaryParsed | DeadLetter:
    """The header of a binary event, or its dead letter. Never raises.

    ``layouts`` (one per chunk) remembers headers already parsed, as their bytes after the id: a
    header that is ``{"id":"<plain id>`` followed by bytes seen before (typical: one producer,
    one model) is not parsed again; every check runs as for any other header. Only a tail
    without ``"id"`` and without escapes is remembered, so it cannot change the id it follows.
    """
    try:
        return _header(record, ctx, layouts)
    except EventError as err:
        return letter(record, err)
    except Exception as err:  # no record may stop the worker
        return internal_letter(record, err)


def _header(record: RawRecord, ctx: DecodeContext, layouts: Layouts | None) -> BinaryParsed:
    check_envelope(record, ctx.limits)
    value = record.value
    if value is None:
        raise EventError(Reason.INVALID_EVENT, "record has no value (tombstone)")
    check_value_size(value, ctx.limits)
    length = _header_length(record, len(value))
    end = value.find(b'"', 7, length) if layouts is not None and value.startswith(_ID_PREFIX) else -1
    doc = layouts.get(value[end:length]) if layouts is not None and end > 7 else None
    if doc is not None and end - 7 <= ctx.limits.max_id_length and _PLAIN_ID.fullmatch(value, 7, end):
        event_id = value[7:end].decode("ascii")
    else:
        doc = _document(value, length)
        event_id = event_id_of(doc, ctx.limits)
        tail = value[end:length] if end > 7 and value[7:end] == event_id.encode() else b""
        remember = tail and b'"id"' not in tail and b"\\" not in tail
        if layouts is not None and remember and len(layouts) < _MAX_LAYOUTS:
            layouts[tail] = doc
    spec, route = route_of(doc, ctx, record, event_id)
    return BinaryParsed(record, event_id, spec, route, doc.get("inputs"), length)


def _document(value: bytes, length: int) -> dict[str, Any]:
    """The JSON header: the value's first ``length`` bytes, a JSON object."""
    try:
        doc = orjson.loads(value[:length])
    except orjson.JSONDecodeError as err:
        raise EventError(
            Reason.INVALID_JSON, f"the inference header is not valid JSON: {cleaned(str(err), 200)}"
        ) from None
    if not isinstance(doc, dict):
        raise EventError(
            Reason.INVALID_EVENT, f"the inference header must be a JSON object, got {json_kind(doc)}"
        )
    return doc


def _header_length(record: RawRecord, size: int) -> int:
    raw = record.header(HEADER_LENGTH_HEADER)
    if raw is None:
        raise EventError(
            Reason.INVALID_EVENT,
            f"a binary event needs the {HEADER_LENGTH_HEADER} header (bytes of its JSON header)",
        )
    text = raw.strip()
    if not text.isdigit() or len(text) > _MAX_HEADER_DIGITS or not 0 < int(text) <= size:
        raise EventError(
            Reason.INVALID_EVENT,
            f"{HEADER_LENGTH_HEADER} is {shown(raw, 24)}; must be a byte count from 1 to the value's {size}",
        )
    return int(text)


def expected_inputs(spec: ModelSpec) -> list[dict[str, Any]] | None:
    """The ``inputs`` a header lists for ``spec`` (None when a dim is variable, or a dtype unsupported)."""
    out = []
    for t in spec.inputs:
        n = t.max_elements
        if n is None or t.dtype.kind not in "biuf":
            return None
        size = n * t.dtype.itemsize
        out.append(tensor_description(t.name, triton_name(t.dtype), list(t.dims), size))
    return out


def convert_together(group: Sequence[BinaryParsed], ctx: DecodeContext) -> list[Event | DeadLetter]:
    """Events of one model whose headers equal :func:`expected_inputs`: one array per input for all.

    Falls back to :func:`convert_one` for every event when a value or a size does not check out.
    """
    spec = group[0].spec
    columns = _columns(group, spec)
    return fanned_out(group, spec.name, columns, lambda p: convert_one(p, ctx), binary=True)


def _columns(group: Sequence[BinaryParsed], spec: ModelSpec) -> dict[str, np.ndarray] | None:
    """One array per input of ``spec`` for the whole group; None when a size or a value is off."""
    row = sum((t.max_elements or 0) * t.dtype.itemsize for t in spec.inputs)
    if any(len(p.record.value or b"") - p.body != row for p in group):
        return None
    blob = np.frombuffer(b"".join([(p.record.value or b"")[p.body :] for p in group]), np.uint8)
    rows = blob.reshape(len(group), row)
    columns: dict[str, np.ndarray] = {}
    at = 0
    for t in spec.inputs:
        size = (t.max_elements or 0) * t.dtype.itemsize
        arr = _tensor(rows[:, at : at + size], t, (len(group), *t.dims))
        if arr is None:
            return None
        columns[t.name] = arr
        at += size
    return columns


def _tensor(raw: np.ndarray, spec: TensorSpec, shape: tuple[int, ...]) -> np.ndarray | None:
    """Bytes ``raw`` (rows of uint8) as ``spec``'s dtype in ``shape``; None when a value is not allowed."""
    wire = spec.dtype.newbyteorder("<")
    arr = np.ascontiguousarray(raw).view(wire).reshape(shape)
    if spec.dtype.kind == "f" and not np.isfinite(arr).all():
        return None
    if spec.dtype.kind == "b" and arr.size and raw.max() > 1:
        return None
    return arr.astype(spec.dtype, copy=False)


def convert_one(p: BinaryParsed, ctx: DecodeContext) -> Event | DeadLetter:
    """One binary event's tensors, every field checked; its dead letter on any fault. Never raises."""
    try:
        inputs = _inputs(p, ctx)
    except EventError as err:
        return letter(p.record, err)
    except Exception as err:  # no record may stop the worker
        return internal_letter(p.record, err)
    return Event(
        p.event_id, p.spec.name, inputs, p.record, version=p.route.version, arm=p.route.arm, binary=True
    )


def _inputs(p: BinaryParsed, ctx: DecodeContext) -> dict[str, np.ndarray]:
    spec, listed = p.spec, p.inputs
    if listed is None:
        raise EventError(Reason.MISSING_INPUT, "the inference header has no 'inputs'")
    if not isinstance(listed, list) or not all(isinstance(i, dict) for i in listed):
        raise EventError(Reason.INVALID_EVENT, "'inputs' must be an array of tensor descriptions")
    by_name = _by_name(listed, spec)
    value = p.record.value or b""
    at, out = p.body, {}
    for item in listed:
        t = by_name[item["name"]]
        size = _size(item, t, ctx)
        if len(value) - at < size:
            raise EventError(Reason.INVALID_EVENT, f"the value ends inside input {t.name!r}'s bytes")
        chunk = np.frombuffer(value, np.uint8, count=size, offset=at) if size else np.zeros(0, np.uint8)
        out[t.name] = _checked(chunk, t, tuple(item["shape"]))
        at += size
    if at != len(value):
        raise EventError(Reason.INVALID_EVENT, f"{len(value) - at} bytes follow the last input's data")
    return out


def _by_name(listed: list[dict[str, Any]], spec: ModelSpec) -> dict[str, TensorSpec]:
    names: list[str] = [i.get("name") for i in listed]  # type: ignore[misc]  # checked next
    if not all(isinstance(n, str) for n in names):
        raise EventError(Reason.INVALID_EVENT, "every input needs a string 'name'")
    if len(set(names)) != len(names):
        raise EventError(Reason.INVALID_EVENT, "an input is listed twice")
    check_input_names(set(names), spec)
    return {t.name: t for t in spec.inputs}


def _size(item: Mapping[str, Any], t: TensorSpec, ctx: DecodeContext) -> int:
    """Checked bytes of one listed input: its datatype, shape, element count and stated size."""
    datatype = item.get("datatype")
    if datatype != triton_name(t.dtype) or t.dtype.kind not in "biuf":
        got = shown(datatype, 16) if isinstance(datatype, str) else json_kind(datatype)
        raise EventError(
            Reason.BAD_DTYPE, f"input {t.name!r} is {got}; the model takes {triton_name(t.dtype)}"
        )
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise EventError(Reason.BAD_SHAPE, f"input {t.name!r} needs a 'shape' of non-negative integers")
    if not t.shape_matches(tuple(shape)):
        raise EventError(
            Reason.BAD_SHAPE, f"input {t.name!r} has shape {shape[:8]}, expected shape {list(t.dims)}"
        )
    elements = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if elements > ctx.limits.max_elements:
        raise EventError(
            Reason.TOO_LARGE, f"input {t.name!r} has {elements} elements, over {ctx.limits.max_elements}"
        )
    params = item.get("parameters")
    stated = params.get("binary_data_size") if isinstance(params, dict) else None
    size = elements * t.dtype.itemsize
    if type(stated) is not int or stated != size:
        raise EventError(
            Reason.INVALID_EVENT,
            f"input {t.name!r}: parameters.binary_data_size must be {size} "
            f"({elements} x {t.dtype.itemsize} bytes), got {shown(str(stated), 24)}",
        )
    return size


def _checked(chunk: np.ndarray, t: TensorSpec, shape: tuple[int, ...]) -> np.ndarray:
    arr = chunk.view(t.dtype.newbyteorder("<")).reshape(shape)
    if t.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            at = "".join(f"[{i}]" for i in np.unravel_index(int(bad[0]), shape))
            value = arr.reshape(-1)[bad[0]]
            raise EventError(
                Reason.BAD_DTYPE,
                f"input {t.name!r}{at} is {value!r}; {triton_name(t.dtype)} takes finite numbers",
            )
    if t.dtype.kind == "b":
        bad = np.flatnonzero(chunk > 1)
        if bad.size:
            at = "".join(f"[{i}]" for i in np.unravel_index(int(bad[0]), shape))
            raise EventError(
                Reason.BAD_DTYPE, f"input {t.name!r}{at} is byte {int(chunk[bad[0]])}; BOOL takes 0 or 1"
            )
    return arr.astype(t.dtype, copy=True)  # its own memory, not the record's


@dataclass(slots=True)
class BinaryHeld:
    """Binary events of a chunk whose headers list their model's inputs as expected, by model."""

    ctx: DecodeContext
    out: list[Event | DeadLetter | None]
    groups: dict[str, list[tuple[int, BinaryParsed]]] = field(default_factory=dict)
    expected: dict[str, list[dict[str, Any]] | None] = field(default_factory=dict)
    layouts: Layouts = field(default_factory=dict)  # headers seen in this chunk

    def add(self, index: int, record: RawRecord) -> None:
        """Read the header of ``record`` (at ``index``): hold it, or write its result at once."""
        parsed = parse_binary(record, self.ctx, self.layouts)
        if isinstance(parsed, DeadLetter):
            self.out[index] = parsed
        elif parsed.inputs == self._expected(parsed.spec):
            self.groups.setdefault(parsed.spec.name, []).append((index, parsed))
        else:
            self.out[index] = convert_one(parsed, self.ctx)

    def _expected(self, spec: ModelSpec) -> list[dict[str, Any]] | None:
        if spec.name not in self.expected:
            self.expected[spec.name] = expected_inputs(spec)
        return self.expected[spec.name]

    def flush(self) -> None:
        """Convert every held group and write the results."""
        for members in self.groups.values():
            items = convert_together([p for _, p in members], self.ctx)
            for (i, _), item in zip(members, items, strict=True):
                self.out[i] = item
        self.groups.clear()
