"""What every input format checks the same way: envelope, id, model, input names; dead letters.

JSON events (:mod:`engine.contract.json_input`) and binary tensor events
(:mod:`engine.contract.binary_input`) share these checks, so both give the same
reason codes and messages for the same fault. :func:`fanned_out` is the one
place a group of one model's events becomes events from per-input columns.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence, Set
from typing import Any, Protocol, TypeVar

import numpy as np

from engine.contract.context import DecodeContext
from engine.contract.dtypes import json_kind
from engine.errors import EventError, Reason
from engine.modelspec import ModelSpec
from engine.records import DeadLetter, Event, RawRecord
from engine.routing import Route
from engine.safe_text import cleaned, shown
from engine.settings import LimitSettings

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 500  # of a dead letter's message
SHOWN_NAME_CHARS = 64  # of a model or input name quoted from an event


def check_envelope(record: RawRecord, limits: LimitSettings) -> None:
    """The key and headers within their limits (checked before the value is looked at)."""
    if record.key is not None and len(record.key) > limits.max_key_bytes:
        raise EventError(
            Reason.TOO_LARGE, f"key is {len(record.key)} bytes, over the limit of {limits.max_key_bytes}"
        )
    headers = record.headers
    if not headers:
        return
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


def check_value_size(value: bytes, limits: LimitSettings) -> None:
    """The record's value within ``limits.max_message_bytes``."""
    if len(value) > limits.max_message_bytes:
        raise EventError(
            Reason.TOO_LARGE, f"value is {len(value)} bytes, over the limit of {limits.max_message_bytes}"
        )


def event_id_of(doc: Mapping[str, Any], limits: LimitSettings) -> str:
    """The event's ``id``: a non-empty string within ``limits.max_id_length``."""
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


def route_of(
    doc: Mapping[str, Any], ctx: DecodeContext, record: RawRecord, event_id: str
) -> tuple[ModelSpec, Route]:
    """The served model (and A/B route) an event goes to: its ``model``, the router's, or the default."""
    name = doc.get("model")
    if name is not None and not isinstance(name, str):
        raise EventError(Reason.INVALID_EVENT, f"'model' must be a string, got {json_kind(name)}")
    if ctx.router is not None:
        route = ctx.router.route(record.source.topic, name, record.key or event_id.encode())
    else:
        route = Route(name if name is not None else ctx.default_model)
    spec = ctx.models.get(route.model)
    if spec is None:
        raise EventError(Reason.UNKNOWN_MODEL, f"model {shown(route.model, SHOWN_NAME_CHARS)} is not served")
    return spec, route


def check_input_names(names: Set[str], spec: ModelSpec) -> None:
    """Every input of ``spec`` in ``names`` (else ``missing_input``) and no other (``invalid_event``)."""
    expected = {t.name for t in spec.inputs}
    missing = sorted(expected - names)
    if missing:
        raise EventError(Reason.MISSING_INPUT, f"inputs {missing} missing for {spec.name!r}")
    extra = sorted(names - expected)
    if extra:
        listed = ", ".join(shown(n, SHOWN_NAME_CHARS // 2) for n in extra[:3])
        more = f" and {len(extra) - 3} more" if len(extra) > 3 else ""
        raise EventError(Reason.INVALID_EVENT, f"unknown inputs {listed}{more} for {spec.name!r}")


class Checked(Protocol):
    """An input event whose fields passed the checks above (its tensors not yet converted)."""

    @property
    def record(self) -> RawRecord: ...
    @property
    def event_id(self) -> str: ...
    @property
    def route(self) -> Route: ...


_P = TypeVar("_P", bound=Checked)


def fanned_out(
    group: Sequence[_P],
    model: str,
    columns: Mapping[str, np.ndarray] | None,
    one: Callable[[_P], Event | DeadLetter],
    *,
    binary: bool = False,
) -> list[Event | DeadLetter]:
    """The events of ``group`` (one model's) from per-input ``columns``, row ``k`` being ``group[k]``'s.

    ``columns`` None (a value did not convert in one piece): each event by ``one``, so every
    event gets its own result or precise reason.
    """
    if columns is None:
        return [one(p) for p in group]
    return [
        Event(
            p.event_id,
            model,
            {n: a[k] for n, a in columns.items()},
            p.record,
            version=p.route.version,
            arm=p.route.arm,
            binary=binary,
        )
        for k, p in enumerate(group)
    ]


def letter(record: RawRecord, err: EventError) -> DeadLetter:
    """The dead letter for an event that failed a check."""
    return DeadLetter(record=record, reason=err.reason, message=cleaned(err.message, MAX_MESSAGE_CHARS))


def internal_letter(record: RawRecord, err: Exception) -> DeadLetter:
    """A dead letter for a failure the checks did not foresee (a bug): logged, never raised."""
    src = record.source
    what = type(err).__name__
    log.error("decoding %s[%d]@%d failed unexpectedly (%s)", src.topic, src.partition, src.offset, what)
    return DeadLetter(
        record=record, reason=Reason.INVALID_EVENT, message=f"event could not be decoded ({what})"
    )
