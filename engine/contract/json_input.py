"""Decoding JSON events: ``{"id": str, "model": str?, "inputs": {NAME: nested list}}``.

``"features": [...]`` is shorthand for a model with one input; a field set to
``null`` counts as absent. Each record's JSON and fields are checked alone
(:func:`check_json`, with the checks of :mod:`engine.contract.input_checks`);
the tensors of the small records that pass may be converted together
(:class:`JsonHeld`), else one by one (:func:`convert_json`); tensors are
converted by :mod:`engine.contract.dtypes`. Payloads are only ever parsed as
JSON - never evaluated or unpickled.
"""

from __future__ import annotations

import gc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from engine.contract.context import DecodeContext
from engine.contract.dtypes import json_kind, stacked, to_tensor
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
from engine.errors import EventError, Reason
from engine.modelspec import ModelSpec, TensorSpec
from engine.records import DeadLetter, Event, RawRecord, fast_init
from engine.routing import Route
from engine.safe_text import cleaned
from engine.settings import LimitSettings


@fast_init
@dataclass(frozen=True, slots=True)
class JsonParsed:
    """A record whose JSON and fields are valid; its tensors are still lists."""

    record: RawRecord
    event_id: str
    spec: ModelSpec
    route: Route
    raw_inputs: Mapping[str, Any]
    scan: bool  # the raw value may hold booleans or too many elements


@dataclass(slots=True)
class JsonHeld:
    """Parsed records waiting to be converted together, grouped by model, and their value bytes."""

    ctx: DecodeContext
    out: list[Event | DeadLetter | None]
    groups: dict[str, list[tuple[int, JsonParsed]]] = field(default_factory=dict)
    bytes: int = 0

    def add(self, index: int, parsed: JsonParsed, size: int) -> None:
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


def _tensors_together(group: Sequence[JsonParsed], ctx: DecodeContext) -> list[Event | DeadLetter]:
    spec = group[0].spec
    return fanned_out(group, spec.name, _columns(group, spec), lambda p: convert_json(p, ctx))


def _columns(group: Sequence[JsonParsed], spec: ModelSpec) -> dict[str, np.ndarray] | None:
    """One array per input of ``spec`` for the whole group; None when one needs a closer look."""
    columns: dict[str, np.ndarray] = {}
    for t in spec.inputs:
        arr = _stacked_or_none(t, [p.raw_inputs[t.name] for p in group])
        if arr is None:
            return None
        columns[t.name] = arr
    return columns


def _stacked_or_none(spec: TensorSpec, values: list[Any]) -> np.ndarray | None:
    """:func:`engine.contract.dtypes.stacked`; None on any surprise, so each event gets a closer look."""
    try:
        return stacked(spec, values)
    except Exception:  # the per-event path decides, and never raises
        return None


def check_json(record: RawRecord, ctx: DecodeContext) -> JsonParsed | DeadLetter:
    """A JSON event's fields checked (tensors still lists), or its dead letter. Never raises."""
    try:
        return _parse_json(record, ctx)
    except EventError as err:
        return letter(record, err)
    except Exception as err:  # no record may stop the worker
        return internal_letter(record, err)


def convert_json(p: JsonParsed, ctx: DecodeContext) -> Event | DeadLetter:
    """A checked JSON event with its tensors converted one by one, or its dead letter. Never raises."""
    try:
        return _converted(p, ctx)
    except EventError as err:
        return letter(p.record, err)
    except Exception as err:  # no record may stop the worker
        return internal_letter(p.record, err)


def _parse_json(record: RawRecord, ctx: DecodeContext) -> JsonParsed:
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
    return JsonParsed(record, event_id, spec, route, raw_inputs, scan)


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
    check_input_names(inputs.keys(), spec)
    return inputs


def _converted(p: JsonParsed, ctx: DecodeContext) -> Event:
    inputs = {t.name: to_tensor(p.raw_inputs[t.name], t, ctx.limits, p.scan) for t in p.spec.inputs}
    return Event(p.event_id, p.spec.name, inputs, p.record, version=p.route.version, arm=p.route.arm)
