"""Decode and validate input events; encode predictions.

The event contract (see README, "Event contract"):

* input record: key at most ``limits.max_key_bytes``, at most
  ``limits.max_headers`` headers of ``limits.max_header_bytes`` in all;
* input value, chosen by the record's ``content-type`` header:
  ``application/json`` (the default, also when the header is absent):
  ``{"id": str, "model": str?, "inputs": {NAME: nested list}}``,
  or ``"features": [...]`` as shorthand for a model with one input; a field
  set to ``null`` counts as absent. ``application/vnd.kserve.v2.binary``:
  KServe v2's binary tensor layout (:mod:`engine.binary_codec`);
* output value: ``{"id", "model", "model_version", "outputs", "timing_ms"}``,
  plus ``"arm"`` when an A/B experiment routed the event (engine/routing.py);
  binary for binary events (``topics.output_format``).

Decoding never raises, whatever the record: it returns a :class:`DeadLetter`
whose reason is one of :class:`engine.errors.Reason`, chosen by the check that
failed (never by an exception's text). Text from the record that a message
quotes is escaped and bounded (:mod:`engine.safe_text`). Payloads are only
ever parsed as JSON or read as raw numbers - never evaluated or unpickled.
JSON tensors are converted by :mod:`engine.dtypes`.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from engine import binary_codec
from engine.dtypes import json_kind, stacked, to_tensor
from engine.errors import EventError, Reason
from engine.event_checks import (
    MAX_MESSAGE_CHARS,
    SHOWN_NAME_CHARS,
    DecodeContext,
    check_envelope,
    check_value_size,
    event_id_of,
    internal_letter,
    letter,
    route_of,
)
from engine.modelspec import ModelSpec, TensorSpec
from engine.prediction_json import dumps_output
from engine.records import DeadLetter, Event, RawRecord, fast_init
from engine.routing import Route
from engine.safe_text import cleaned, shown
from engine.settings import LimitSettings

__all__ = ["MAX_MESSAGE_CHARS", "DecodeContext", "decode", "decode_many", "encode_prediction"]

log = logging.getLogger(__name__)


def decode(record: RawRecord, ctx: DecodeContext) -> Event | DeadLetter:
    """Turn one raw record into a valid event, or a dead letter with a reason."""
    binary = binary_codec.is_binary(record)
    if binary is None:
        return binary_codec.content_type_letter(record, ctx.limits)
    if binary:
        header = binary_codec.parse_binary(record, ctx)
        return header if isinstance(header, DeadLetter) else binary_codec.convert_one(header, ctx)
    parsed = _checked_json(record, ctx)
    return parsed if isinstance(parsed, DeadLetter) else _converted_or_letter(parsed, ctx)


def decode_many(records: Sequence[RawRecord], ctx: DecodeContext) -> list[Event | DeadLetter]:
    """:func:`decode` for a batch of records, in order, with the same results.

    Each record's JSON and fields are checked one by one; the tensors of the
    small records that pass go through numpy together, one array per model
    input per group. At most ``limits.max_held_value_bytes`` of values are
    held parsed at a time: past it, the held group is converted and released
    before the next record is parsed. A group that does not convert cleanly in
    one piece falls back to record-by-record conversion, so every record gets
    its own precise reason.
    """
    out: list[Event | DeadLetter | None] = [None] * len(records)
    held = _Held(ctx, out)
    tensors = _BinaryHeld(ctx, out)
    budget = ctx.limits.max_held_value_bytes
    for i, record in enumerate(records):
        binary = binary_codec.is_binary(record) if record.headers else False
        if binary:
            tensors.add(i, record)
            continue
        if binary is None:
            out[i] = binary_codec.content_type_letter(record, ctx.limits)
            continue
        size = len(record.value or b"")
        if held.bytes + size > budget:
            held.flush()
        parsed = _checked_json(record, ctx)
        if isinstance(parsed, DeadLetter):
            out[i] = parsed
        elif parsed.scan or len(records) == 1 or size > budget:
            out[i] = _converted_or_letter(parsed, ctx)
        else:
            held.add(i, parsed, size)
    held.flush()
    tensors.flush()
    return out  # type: ignore[return-value]  # every slot is filled


@dataclass(slots=True)
class _BinaryHeld:
    """Binary events of a chunk whose headers list their model's inputs as expected, by model."""

    ctx: DecodeContext
    out: list[Event | DeadLetter | None]
    groups: dict[str, list[tuple[int, binary_codec.BinaryParsed]]] = field(default_factory=dict)
    expected: dict[str, list[dict[str, Any]] | None] = field(default_factory=dict)
    layouts: binary_codec.Layouts = field(default_factory=dict)  # headers seen in this chunk

    def add(self, index: int, record: RawRecord) -> None:
        """Read the header of ``record`` (at ``index``): hold it, or write its result at once."""
        parsed = binary_codec.parse_binary(record, self.ctx, self.layouts)
        if isinstance(parsed, DeadLetter):
            self.out[index] = parsed
        elif parsed.inputs == self._expected(parsed.spec):
            self.groups.setdefault(parsed.spec.name, []).append((index, parsed))
        else:
            self.out[index] = binary_codec.convert_one(parsed, self.ctx)

    def _expected(self, spec: ModelSpec) -> list[dict[str, Any]] | None:
        if spec.name not in self.expected:
            self.expected[spec.name] = binary_codec.expected_inputs(spec)
        return self.expected[spec.name]

    def flush(self) -> None:
        """Convert every held group and write the results."""
        for members in self.groups.values():
            items = binary_codec.convert_together([p for _, p in members], self.ctx)
            for (i, _), item in zip(members, items, strict=True):
                self.out[i] = item
        self.groups.clear()


@fast_init
@dataclass(frozen=True, slots=True)
class _Parsed:
    """A record whose JSON and fields are valid; its tensors are still lists."""

    record: RawRecord
    event_id: str
    spec: ModelSpec
    route: Route
    raw_inputs: Mapping[str, Any]
    scan: bool  # the raw value may hold booleans or too many elements


@dataclass(slots=True)
class _Held:
    """Parsed records waiting to be converted together, grouped by model, and their value bytes."""

    ctx: DecodeContext
    out: list[Event | DeadLetter | None]
    groups: dict[str, list[tuple[int, _Parsed]]] = field(default_factory=dict)
    bytes: int = 0

    def add(self, index: int, parsed: _Parsed, size: int) -> None:
        """Hold ``parsed`` (the record at ``index``, ``size`` value bytes)."""
        self.groups.setdefault(parsed.spec.name, []).append((index, parsed))
        self.bytes += size

    def flush(self) -> None:
        """Convert every held group, write the results, and let go of the parsed documents."""
        for members in self.groups.values():
            items = _tensors_together([p for _, p in members], self.ctx)
            for (i, _), item in zip(members, items, strict=True):
                self.out[i] = item
        self.groups.clear()
        self.bytes = 0


def _tensors_together(group: Sequence[_Parsed], ctx: DecodeContext) -> list[Event | DeadLetter]:
    spec = group[0].spec
    columns: dict[str, np.ndarray] = {}
    for t in spec.inputs:
        arr = _stacked_or_none(t, [p.raw_inputs[t.name] for p in group])
        if arr is None:
            return [_converted_or_letter(p, ctx) for p in group]
        columns[t.name] = arr
    return [
        Event(
            p.event_id,
            spec.name,
            {n: a[k] for n, a in columns.items()},
            p.record,
            version=p.route.version,
            arm=p.route.arm,
        )
        for k, p in enumerate(group)
    ]


def _stacked_or_none(spec: TensorSpec, values: list[Any]) -> np.ndarray | None:
    """:func:`engine.dtypes.stacked`; None on any surprise, so each event gets a closer look."""
    try:
        return stacked(spec, values)
    except Exception:  # the per-event path decides, and never raises
        return None


def _checked_json(record: RawRecord, ctx: DecodeContext) -> _Parsed | DeadLetter:
    """A JSON event's fields checked (tensors still lists), or its dead letter. Never raises."""
    try:
        return _parse_json(record, ctx)
    except EventError as err:
        return letter(record, err)
    except Exception as err:  # no record may stop the worker
        return internal_letter(record, err)


def _converted_or_letter(p: _Parsed, ctx: DecodeContext) -> Event | DeadLetter:
    """A checked JSON event with its tensors converted one by one, or its dead letter. Never raises."""
    try:
        return _converted(p, ctx)
    except EventError as err:
        return letter(p.record, err)
    except Exception as err:  # no record may stop the worker
        return internal_letter(p.record, err)


def _parse_json(record: RawRecord, ctx: DecodeContext) -> _Parsed:
    check_envelope(record, ctx.limits)
    doc = _document(record.value, ctx.limits)
    event_id = event_id_of(doc, ctx.limits)
    spec, route = route_of(doc, ctx, record, event_id)
    raw_inputs = _raw_inputs(doc, spec)
    # Cheap tests on the raw bytes decide whether the element-by-element scan is needed:
    # a JSON value of n bytes holds at most n elements, and one without the words true/false
    # holds no booleans.
    value = record.value or b""
    scan = len(value) > ctx.limits.max_elements or b"true" in value or b"false" in value
    return _Parsed(record, event_id, spec, route, raw_inputs, scan)


def _document(value: bytes | None, limits: LimitSettings) -> dict[str, Any]:
    if value is None:
        raise EventError(Reason.INVALID_JSON, "record has no value (tombstone)")
    check_value_size(value, limits)
    try:
        doc = _loads(value)
    except orjson.JSONDecodeError as err:
        raise EventError(Reason.INVALID_JSON, f"value is not valid JSON: {cleaned(str(err), 200)}") from None
    if not isinstance(doc, dict):
        raise EventError(Reason.INVALID_EVENT, f"value must be a JSON object, got {json_kind(doc)}")
    return doc


def _loads(value: bytes) -> Any:
    """``orjson.loads`` with the cyclic garbage collector paused.

    A JSON document holds no reference cycles, so the collector has nothing to
    find in one. Left on, it runs every few hundred new lists or objects and,
    once parsed documents are held, sweeps the whole heap again and again: a
    value of many small arrays took five times longer to parse.
    """
    if not gc.isenabled():
        return orjson.loads(value)
    gc.disable()
    try:
        return orjson.loads(value)
    finally:
        gc.enable()


def _raw_inputs(doc: dict[str, Any], spec: ModelSpec) -> Mapping[str, Any]:
    inputs, features = doc.get("inputs"), doc.get("features")
    if inputs is not None and features is not None:
        raise EventError(Reason.INVALID_EVENT, "give either 'inputs' or 'features', not both")
    if features is not None:
        if len(spec.inputs) != 1:
            raise EventError(
                Reason.INVALID_EVENT,
                f"'features' is shorthand for one-input models; {spec.name!r} has {len(spec.inputs)} inputs",
            )
        return {spec.inputs[0].name: features}
    if inputs is None:
        raise EventError(Reason.MISSING_INPUT, "the event has neither 'inputs' nor 'features'")
    if not isinstance(inputs, dict):
        raise EventError(
            Reason.INVALID_EVENT,
            f"'inputs' must be an object of input name -> array, got {json_kind(inputs)}",
        )
    expected = {t.name for t in spec.inputs}
    missing = sorted(expected - inputs.keys())
    if missing:
        raise EventError(Reason.MISSING_INPUT, f"inputs {missing} missing for {spec.name!r}")
    extra = sorted(inputs.keys() - expected)
    if extra:
        names = ", ".join(shown(n, SHOWN_NAME_CHARS // 2) for n in extra[:3])
        more = f" and {len(extra) - 3} more" if len(extra) > 3 else ""
        raise EventError(Reason.INVALID_EVENT, f"unknown inputs {names}{more} for {spec.name!r}")
    return inputs


def _converted(p: _Parsed, ctx: DecodeContext) -> Event:
    inputs = {t.name: to_tensor(p.raw_inputs[t.name], t, ctx.limits, p.scan) for t in p.spec.inputs}
    return Event(p.event_id, p.spec.name, inputs, p.record, version=p.route.version, arm=p.route.arm)


def encode_prediction(
    event: Event,
    model_version: str,
    outputs: Mapping[str, np.ndarray],
    timing_ms: Mapping[str, float],
) -> bytes:
    """The JSON value of one prediction record (with ``arm`` when A/B routing chose one)."""
    doc: dict[str, Any] = {
        "id": event.id,
        "model": event.model,
        "model_version": model_version,
        "outputs": outputs,
        "timing_ms": timing_ms,
    }
    if event.arm:
        doc["arm"] = event.arm
    return dumps_output(doc)
