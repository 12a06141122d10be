"""Decode and validate input events; encode predictions.

The event contract (see README, "Event contract"):

* input record: key at most ``limits.max_key_bytes``, at most
  ``limits.max_headers`` headers of ``limits.max_header_bytes`` in all;
* input value: ``{"id": str, "model": str?, "inputs": {NAME: nested list}}``,
  or ``"features": [...]`` as shorthand for a model with one input; a field
  set to ``null`` counts as absent;
* output value: ``{"id", "model", "model_version", "outputs", "timing_ms"}``,
  plus ``"arm"`` when an A/B experiment routed the event (engine/routing.py).

Decoding never raises, whatever the record: it returns a :class:`DeadLetter`
whose reason is one of :class:`engine.errors.Reason`, chosen by the check that
failed (never by an exception's text). Text from the record that a message
quotes is escaped and bounded (:mod:`engine.safe_text`). Payloads are only
ever parsed as JSON - never evaluated or unpickled. Tensors are converted by
:mod:`engine.dtypes`.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from engine.dtypes import json_kind, stacked, to_tensor
from engine.errors import EventError, Reason
from engine.modelspec import ModelSpec, TensorSpec
from engine.records import DeadLetter, Event, RawRecord
from engine.routing import Route, Router
from engine.safe_text import cleaned, shown
from engine.settings import LimitSettings

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 500  # of a dead letter's message
_SHOWN_NAME_CHARS = 64  # of a model or input name quoted from an event


@dataclass(frozen=True, slots=True)
class DecodeContext:
    """What decoding needs: the served models and the limits."""

    models: Mapping[str, ModelSpec]
    default_model: str
    limits: LimitSettings
    router: Router | None = None  # None: the event's model, else default_model


def decode(record: RawRecord, ctx: DecodeContext) -> Event | DeadLetter:
    """Turn one raw record into a valid event, or a dead letter with a reason."""
    parsed = _parse_or_letter(record, ctx)
    return parsed if isinstance(parsed, DeadLetter) else _one(parsed, ctx)


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
    budget = ctx.limits.max_held_value_bytes
    for i, record in enumerate(records):
        size = len(record.value or b"")
        if held.bytes + size > budget:
            held.flush()
        parsed = _parse_or_letter(record, ctx)
        if isinstance(parsed, DeadLetter):
            out[i] = parsed
        elif parsed.scan or len(records) == 1 or size > budget:
            out[i] = _one(parsed, ctx)
        else:
            held.add(i, parsed, size)
    held.flush()
    return out  # type: ignore[return-value]  # every slot is filled


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


def _stacked_or_none(spec: TensorSpec, values: list[Any]) -> np.ndarray | None:
    """:func:`engine.dtypes.stacked`; None on any surprise, so each event gets a closer look."""
    try:
        return stacked(spec, values)
    except Exception:  # the per-event path decides, and never raises
        return None


def _parse_or_letter(record: RawRecord, ctx: DecodeContext) -> _Parsed | DeadLetter:
    try:
        return _parse(record, ctx)
    except EventError as err:
        return _letter(record, err)
    except Exception as err:  # no record may stop the worker
        return _internal(record, err)


def _one(p: _Parsed, ctx: DecodeContext) -> Event | DeadLetter:
    try:
        return _event(p, ctx)
    except EventError as err:
        return _letter(p.record, err)
    except Exception as err:  # no record may stop the worker
        return _internal(p.record, err)


def _letter(record: RawRecord, err: EventError) -> DeadLetter:
    return DeadLetter(record=record, reason=err.reason, message=cleaned(err.message, MAX_MESSAGE_CHARS))


def _internal(record: RawRecord, err: Exception) -> DeadLetter:
    """A dead letter for a failure the checks did not foresee (a bug): logged, never raised."""
    src = record.source
    what = type(err).__name__
    log.error("decoding %s[%d]@%d failed unexpectedly (%s)", src.topic, src.partition, src.offset, what)
    return DeadLetter(
        record=record, reason=Reason.INVALID_EVENT, message=f"event could not be decoded ({what})"
    )


def _parse(record: RawRecord, ctx: DecodeContext) -> _Parsed:
    _check_envelope(record, ctx.limits)
    doc = _document(record.value, ctx.limits)
    event_id = _event_id(doc, ctx.limits)
    spec, route = _model(doc, ctx, record, event_id)
    raw_inputs = _raw_inputs(doc, spec)
    # Cheap tests on the raw bytes decide whether the element-by-element scan is needed:
    # a JSON value of n bytes holds at most n elements, and one without the words true/false
    # holds no booleans.
    value = record.value or b""
    scan = len(value) > ctx.limits.max_elements or b"true" in value or b"false" in value
    return _Parsed(record, event_id, spec, route, raw_inputs, scan)


def _check_envelope(record: RawRecord, limits: LimitSettings) -> None:
    """The key and headers within their limits (checked before the value is looked at)."""
    if record.key is not None and len(record.key) > limits.max_key_bytes:
        raise EventError(
            Reason.TOO_LARGE, f"key is {len(record.key)} bytes, over the limit of {limits.max_key_bytes}"
        )
    headers = record.headers
    if len(headers) > limits.max_headers:
        raise EventError(
            Reason.TOO_LARGE, f"record has {len(headers)} headers, over the limit of {limits.max_headers}"
        )
    size = sum(len(k.encode("utf-8", "surrogatepass")) + len(v or b"") for k, v in headers)
    if size > limits.max_header_bytes:
        raise EventError(
            Reason.TOO_LARGE,
            f"headers hold {size} bytes (names and values), over the limit of {limits.max_header_bytes}",
        )


def _document(value: bytes | None, limits: LimitSettings) -> dict[str, Any]:
    if value is None:
        raise EventError(Reason.INVALID_JSON, "record has no value (tombstone)")
    if len(value) > limits.max_message_bytes:
        raise EventError(
            Reason.TOO_LARGE, f"value is {len(value)} bytes, over the limit of {limits.max_message_bytes}"
        )
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


def _event_id(doc: dict[str, Any], limits: LimitSettings) -> str:
    event_id = doc.get("id")
    if event_id is None or event_id == "":
        raise EventError(Reason.MISSING_ID, "'id' is missing: every event needs a non-empty string 'id'")
    if not isinstance(event_id, str):
        raise EventError(Reason.INVALID_EVENT, f"'id' must be a non-empty string, got {json_kind(event_id)}")
    if len(event_id) > limits.max_id_length:
        raise EventError(
            Reason.TOO_LARGE, f"'id' is {len(event_id)} characters, over the limit of {limits.max_id_length}"
        )
    return event_id


def _model(
    doc: dict[str, Any], ctx: DecodeContext, record: RawRecord, event_id: str
) -> tuple[ModelSpec, Route]:
    name = doc.get("model")
    if name is not None and not isinstance(name, str):
        raise EventError(Reason.INVALID_EVENT, f"'model' must be a string, got {json_kind(name)}")
    if ctx.router is not None:
        route = ctx.router.route(record.source.topic, name, record.key or event_id.encode())
    else:
        route = Route(name if name is not None else ctx.default_model)
    spec = ctx.models.get(route.model)
    if spec is None:
        raise EventError(Reason.UNKNOWN_MODEL, f"model {shown(route.model, _SHOWN_NAME_CHARS)} is not served")
    return spec, route


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
        names = ", ".join(shown(n, _SHOWN_NAME_CHARS // 2) for n in extra[:3])
        more = f" and {len(extra) - 3} more" if len(extra) > 3 else ""
        raise EventError(Reason.INVALID_EVENT, f"unknown inputs {names}{more} for {spec.name!r}")
    return inputs


def _event(p: _Parsed, ctx: DecodeContext) -> Event:
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
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
