"""Decode and validate input events; encode predictions.

The event contract (see README):

* input value: ``{"id": str, "model": str?, "inputs": {NAME: nested list}}``,
  or ``"features": [...]`` as shorthand for a model with one input;
* output value: ``{"id", "model", "model_version", "outputs", "timing_ms"}``,
  plus ``"arm"`` when an A/B experiment routed the event (engine/routing.py).

Decoding never raises on bad input: it returns a :class:`DeadLetter` whose
reason is one of :class:`engine.errors.Reason`. Payloads are only ever parsed
as JSON - never evaluated or unpickled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from engine.errors import EventError, Reason
from engine.modelspec import ModelSpec, TensorSpec
from engine.records import DeadLetter, Event, RawRecord
from engine.routing import Route, Router
from engine.settings import LimitSettings

_NUMERIC_KINDS = frozenset("iuf")


@dataclass(frozen=True, slots=True)
class DecodeContext:
    """What decoding needs: the served models and the limits."""

    models: Mapping[str, ModelSpec]
    default_model: str
    limits: LimitSettings
    router: Router | None = None  # None: the event's model, else default_model


def decode(record: RawRecord, ctx: DecodeContext) -> Event | DeadLetter:
    """Turn one raw record into a valid event, or a dead letter with a reason."""
    try:
        return _decode(record, ctx)
    except EventError as err:
        return DeadLetter(record=record, reason=err.reason, message=err.message)


def decode_many(records: Sequence[RawRecord], ctx: DecodeContext) -> list[Event | DeadLetter]:
    """:func:`decode` for a batch of records, in order, with the same results.

    Each record's JSON and fields are checked one by one; the tensors of the
    records that pass go through numpy together, one array per model input for
    the whole batch. A group that does not convert cleanly in one piece (a
    ragged or mistyped value somewhere) falls back to record-by-record
    conversion, so every record gets its own precise reason.
    """
    out: list[Event | DeadLetter | None] = [None] * len(records)
    groups: dict[str, list[tuple[int, _Parsed]]] = {}
    for i, record in enumerate(records):
        try:
            parsed = _parse(record, ctx)
        except EventError as err:
            out[i] = DeadLetter(record=record, reason=err.reason, message=err.message)
            continue
        if parsed.scan or len(records) == 1:
            out[i] = _one(parsed, ctx)
        else:
            groups.setdefault(parsed.spec.name, []).append((i, parsed))
    for members in groups.values():
        items = _tensors_together([p for _, p in members], ctx)
        for (i, _), item in zip(members, items, strict=True):
            out[i] = item
    return out  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class _Parsed:
    """A record whose JSON and fields are valid; its tensors are still lists."""

    record: RawRecord
    event_id: str
    spec: ModelSpec
    route: Route
    raw_inputs: Mapping[str, Any]
    scan: bool  # the raw value may hold booleans or too many elements


def _tensors_together(group: Sequence[_Parsed], ctx: DecodeContext) -> list[Event | DeadLetter]:
    spec = group[0].spec
    columns: dict[str, np.ndarray] = {}
    for t in spec.inputs:
        arr = _stacked(t, [p.raw_inputs[t.name] for p in group])
        if arr is None:
            return [_one(p, ctx) for p in group]
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


def _stacked(spec: TensorSpec, values: list[Any]) -> np.ndarray | None:
    """One array of ``spec``'s dtype with the batch axis first, or None if any value needs a closer look."""
    if any(d < 0 for d in spec.dims) or not spec.dims:
        return None
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError, OverflowError):
        return None
    target = spec.dtype
    if arr.shape != (len(values), *spec.dims) or arr.dtype.kind not in _NUMERIC_KINDS:
        return None
    if target.kind in "iu" and arr.dtype.kind == "f" or not _in_range(arr, target):
        return None
    return arr.astype(target, copy=False)


def _parse(record: RawRecord, ctx: DecodeContext) -> _Parsed:
    value = record.value
    if value is None:
        raise EventError(Reason.INVALID_JSON, "record has no value (tombstone)")
    if len(value) > ctx.limits.max_message_bytes:
        raise EventError(
            Reason.TOO_LARGE,
            f"value is {len(value)} bytes, over the limit of {ctx.limits.max_message_bytes}",
        )
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as err:
        raise EventError(Reason.INVALID_JSON, f"value is not valid JSON: {err}") from None
    if not isinstance(doc, dict):
        raise EventError(Reason.INVALID_EVENT, f"value must be a JSON object, got {_kind(doc)}")
    event_id = _event_id(doc, ctx.limits)
    spec, route = _model(doc, ctx, record, event_id)
    raw_inputs = _raw_inputs(doc, spec)
    # Cheap tests on the raw bytes decide whether the element-by-element scan is needed:
    # a JSON value of n bytes holds at most n elements, and one without the words true/false
    # holds no booleans.
    scan = len(value) > ctx.limits.max_elements or b"true" in value or b"false" in value
    return _Parsed(record, event_id, spec, route, raw_inputs, scan)


def _decode(record: RawRecord, ctx: DecodeContext) -> Event:
    return _event(_parse(record, ctx), ctx)


def _event(p: _Parsed, ctx: DecodeContext) -> Event:
    inputs = {t.name: _tensor(p.raw_inputs, t, ctx.limits, p.scan) for t in p.spec.inputs}
    return Event(p.event_id, p.spec.name, inputs, p.record, version=p.route.version, arm=p.route.arm)


def _one(p: _Parsed, ctx: DecodeContext) -> Event | DeadLetter:
    try:
        return _event(p, ctx)
    except EventError as err:
        return DeadLetter(record=p.record, reason=err.reason, message=err.message)


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _event_id(doc: dict[str, Any], limits: LimitSettings) -> str:
    event_id = doc.get("id")
    if not isinstance(event_id, str) or not event_id:
        raise EventError(Reason.MISSING_ID, f"'id' must be a non-empty string, got {_kind(event_id)}")
    if len(event_id) > limits.max_id_length:
        raise EventError(Reason.TOO_LARGE, f"'id' is {len(event_id)} characters, over {limits.max_id_length}")
    return event_id


def _model(
    doc: dict[str, Any], ctx: DecodeContext, record: RawRecord, event_id: str
) -> tuple[ModelSpec, Route]:
    name = doc.get("model")
    if name is not None and not isinstance(name, str):
        raise EventError(Reason.INVALID_EVENT, f"'model' must be a string, got {_kind(name)}")
    if ctx.router is not None:
        route = ctx.router.route(record.source.topic, name, record.key or event_id.encode())
    else:
        route = Route(name if name is not None else ctx.default_model)
    name = route.model
    spec = ctx.models.get(name)
    if spec is None:
        shown = name if len(name) <= 64 else name[:64] + "..."
        raise EventError(Reason.UNKNOWN_MODEL, f"model {shown!r} is not served")
    return spec, route


def _raw_inputs(doc: dict[str, Any], spec: ModelSpec) -> dict[str, Any]:
    has_inputs, has_features = "inputs" in doc, "features" in doc
    if has_inputs and has_features:
        raise EventError(Reason.INVALID_EVENT, "give either 'inputs' or 'features', not both")
    if has_features:
        if len(spec.inputs) != 1:
            raise EventError(
                Reason.INVALID_EVENT,
                f"'features' is shorthand for one-input models; {spec.name!r} has {len(spec.inputs)} inputs",
            )
        return {spec.inputs[0].name: doc["features"]}
    inputs = doc.get("inputs")
    if not isinstance(inputs, dict):
        raise EventError(Reason.MISSING_INPUT, f"'inputs' must be an object of tensors, got {_kind(inputs)}")
    expected = {t.name for t in spec.inputs}
    missing = sorted(expected - inputs.keys())
    if missing:
        raise EventError(Reason.MISSING_INPUT, f"inputs {missing} missing for {spec.name!r}")
    extra = sorted(inputs.keys() - expected)
    if extra:
        raise EventError(Reason.INVALID_EVENT, f"unknown inputs {extra[:5]} for {spec.name!r}")
    return inputs


def _tensor(
    raw_inputs: Mapping[str, Any], spec: TensorSpec, limits: LimitSettings, scan: bool = True
) -> np.ndarray:
    """One input as an array of the spec's dtype and shape; ``scan=False`` when the raw value
    can hold neither booleans nor more than ``limits.max_elements`` elements."""
    value = raw_inputs[spec.name]
    if not isinstance(value, list) and spec.dims:
        raise EventError(Reason.BAD_SHAPE, f"input {spec.name!r} must be an array")
    too_many, has_bool = (
        _scan(value, limits.max_elements) if scan and isinstance(value, list) else (False, False)
    )
    if too_many:
        raise EventError(Reason.TOO_LARGE, f"input {spec.name!r} has over {limits.max_elements} elements")
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, OverflowError) as err:
        raise EventError(Reason.BAD_SHAPE, f"input {spec.name!r} is not a regular array: {err}") from None
    if arr.size > limits.max_elements:
        raise EventError(
            Reason.TOO_LARGE, f"input {spec.name!r} has {arr.size} elements, over {limits.max_elements}"
        )
    if not spec.shape_matches(arr.shape):
        raise EventError(
            Reason.BAD_SHAPE, f"input {spec.name!r} has shape {list(arr.shape)}, expected {list(spec.dims)}"
        )
    if has_bool and spec.dtype.kind != "b":  # numpy would quietly turn them into 0/1
        raise EventError(Reason.BAD_DTYPE, f"input {spec.name!r} holds booleans, expected {spec.dtype.name}")
    return _cast(arr, spec)


def _scan(value: list[Any], limit: int) -> tuple[bool, bool]:
    """(more than ``limit`` elements, holds a boolean) for nested lists, before any array is made.

    Counting stops as soon as the limit is passed, so an oversized input costs
    about ``limit`` steps and no allocation.
    """
    if len(value) > limit:
        return True, False
    count, has_bool, stack = 0, False, [value]
    while stack:
        items = stack.pop()
        for item in items:
            if type(item) is list and item:
                stack.append(item)
            else:
                count += 1
                if count > limit:
                    return True, has_bool
                has_bool = has_bool or item is True or item is False
    return False, has_bool


def _cast(arr: np.ndarray, spec: TensorSpec) -> np.ndarray:
    target = spec.dtype
    if arr.dtype == target:
        return arr
    if arr.dtype.kind == "b" and target.kind != "b" or arr.dtype.kind not in _NUMERIC_KINDS | {"b"}:
        raise EventError(
            Reason.BAD_DTYPE,
            f"input {spec.name!r} holds {_dtype_word(arr)}, expected numbers of {target.name}",
        )
    if target.kind in "iu" and arr.dtype.kind == "f" and arr.size:  # [] parses as float64
        raise EventError(Reason.BAD_DTYPE, f"input {spec.name!r} holds floats, expected {target.name}")
    if arr.size and not _in_range(arr, target):
        raise EventError(Reason.BAD_DTYPE, f"input {spec.name!r} has values out of range for {target.name}")
    return arr.astype(target)


def _in_range(arr: np.ndarray, target: np.dtype[Any]) -> bool:
    """Whether the cast to ``target`` keeps every value (finite, and exact for integers).

    One reduction settles the usual case; only values near the limits pay for
    the exact check under ``np.errstate`` (which is slow to enter).
    """
    if target.kind == "f":
        if np.abs(arr).max() <= np.finfo(target).max:  # nan fails the comparison
            return True
        with np.errstate(over="ignore", invalid="ignore"):
            return bool(np.isfinite(arr.astype(target)).all())  # a value may round down to max
    info = np.iinfo(target)
    return bool(arr.min() >= info.min and arr.max() <= info.max)


def _dtype_word(arr: np.ndarray) -> str:
    return {"b": "booleans", "U": "strings", "S": "bytes", "O": "nulls or mixed values"}.get(
        arr.dtype.kind, arr.dtype.name
    )


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
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
