"""Decode input records: the format chosen by the ``content-type`` header, one record or a chunk.

The event contract (see README, "Event contract"):

* input record: key at most ``limits.max_key_bytes``, at most
  ``limits.max_headers`` headers of ``limits.max_header_bytes`` in all;
* input value, chosen by the record's ``content-type`` header:
  ``application/json`` (the default, also when the header is absent): a JSON
  event (:mod:`engine.contract.json_input`); ``application/vnd.kserve.v2.binary``:
  KServe v2's binary tensor layout (:mod:`engine.contract.wire`, decoded by
  :mod:`engine.contract.binary_input`); any other content-type is a dead letter;
* output value: see :mod:`engine.contract.outputs`.

Decoding never raises, whatever the record: it returns a :class:`DeadLetter`
whose reason is one of :class:`engine.errors.Reason`, chosen by the check that
failed (never by an exception's text). Text from the record that a message
quotes is escaped and bounded (:mod:`engine.safe_text`). Payloads are only
ever parsed as JSON or read as raw numbers - never evaluated or unpickled.
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.contract.binary_input import BinaryHeld, convert_one, parse_binary
from engine.contract.context import DecodeContext
from engine.contract.input_checks import SHOWN_NAME_CHARS, check_envelope, letter
from engine.contract.json_input import JsonHeld, check_json, convert_json
from engine.contract.wire import (
    BINARY_CONTENT_TYPE,
    CONTENT_TYPE_HEADER,
    JSON_CONTENT_TYPE,
    media_type,
)
from engine.errors import EventError, Reason
from engine.records import DeadLetter, Event, RawRecord
from engine.safe_text import shown
from engine.settings import LimitSettings

_BINARY = BINARY_CONTENT_TYPE.encode()
_JSON = JSON_CONTENT_TYPE.encode()


def decode(record: RawRecord, ctx: DecodeContext) -> Event | DeadLetter:
    """Turn one raw record into a valid event, or a dead letter with a reason."""
    binary = is_binary(record)
    if binary is None:
        return content_type_letter(record, ctx.limits)
    if binary:
        header = parse_binary(record, ctx)
        return header if isinstance(header, DeadLetter) else convert_one(header, ctx)
    parsed = check_json(record, ctx)
    return parsed if isinstance(parsed, DeadLetter) else convert_json(parsed, ctx)


def decode_many(records: Sequence[RawRecord], ctx: DecodeContext) -> list[Event | DeadLetter]:
    """:func:`decode` for a batch of records, in order, with the same results.

    Each record's JSON and fields are checked one by one; the tensors of the
    small records that pass go through numpy together, one array per model
    input per group. At most ``limits.max_held_value_bytes`` of values are
    held parsed at a time: past it, the held group is converted and released
    before the next record is parsed. A group that does not convert cleanly in
    one piece falls back to record-by-record conversion, so every record gets
    its own precise reason. Binary events are grouped likewise
    (:class:`engine.contract.binary_input.BinaryHeld`).
    """
    out: list[Event | DeadLetter | None] = [None] * len(records)
    held = JsonHeld(ctx, out)
    tensors = BinaryHeld(ctx, out)
    budget = ctx.limits.max_held_value_bytes
    for i, record in enumerate(records):
        binary = is_binary(record) if record.headers else False
        if binary:
            tensors.add(i, record)
            continue
        if binary is None:
            out[i] = content_type_letter(record, ctx.limits)
            continue
        size = len(record.value or b"")
        if held.bytes + size > budget:
            held.flush()
        parsed = check_json(record, ctx)
        if isinstance(parsed, DeadLetter):
            out[i] = parsed
        elif parsed.scan or len(records) == 1 or size > budget:
            out[i] = convert_json(parsed, ctx)
        else:
            held.add(i, parsed, size)
    held.flush()
    tensors.flush()
    return out  # type: ignore[return-value]  # every slot is filled


def is_binary(record: RawRecord) -> bool | None:
    """True for a binary tensor event, False for JSON (the default), None for another content-type."""
    headers = record.headers
    if not headers:
        return False
    value = record.header(CONTENT_TYPE_HEADER)
    if value is None:
        return False
    kind = media_type(value)
    if kind == _BINARY:
        return True
    return False if kind == _JSON or not kind else None


def content_type_letter(record: RawRecord, limits: LimitSettings) -> DeadLetter:
    """The dead letter of a record whose content-type is neither JSON nor binary tensors.

    The key and headers are checked first, as for every record (a record over their limits is
    ``too_large`` whatever it says it holds).
    """
    try:
        check_envelope(record, limits)
    except EventError as err:
        return letter(record, err)
    shown_type = shown(record.header(CONTENT_TYPE_HEADER) or b"", SHOWN_NAME_CHARS)
    return letter(
        record,
        EventError(
            Reason.INVALID_EVENT,
            f"content-type {shown_type} is not supported: use {JSON_CONTENT_TYPE} (the default) "
            f"or {BINARY_CONTENT_TYPE}",
        ),
    )
