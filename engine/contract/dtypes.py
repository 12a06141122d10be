"""JSON nested lists -> numpy arrays of a model input's Triton dtype, checked value by value.

What each Triton dtype takes (see README, "Event contract"):

* ``BOOL``: JSON ``true``/``false`` only;
* ``INT8`` .. ``INT64``, ``UINT8`` .. ``UINT64``: JSON integers (no fraction, no
  exponent) within the type's range;
* ``FP16``, ``FP32``, ``FP64``: JSON integers or floats that stay finite once
  rounded to the type (FP16: magnitude below 65520);
* anything else (``BYTES``): no value; every event for such an input is ``bad_dtype``.

numpy converts the usual case in one call; only a value that fails is walked
element by element, to name the first offending element in the message. Every
failure raises :class:`EventError`; nothing else escapes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from engine.errors import EventError, Reason
from engine.modelspec import WIRE_DTYPES, TensorSpec
from engine.safe_text import shown
from engine.settings import LimitSettings

NUMERIC_KINDS = frozenset("iuf")
SUPPORTED_KINDS = frozenset("biuf")
_INT64_MIN = -(2**63)
_UINT64_MAX = 2**64 - 1


def triton_name(dtype: np.dtype[Any]) -> str:
    """The Triton name of ``dtype`` (``FP32``), ``BYTES`` for strings and objects."""
    return WIRE_DTYPES.get(dtype, "BYTES" if dtype.kind in "OSU" else dtype.name)


def json_kind(value: Any) -> str:
    """The JSON name of a parsed value's type (``object``, ``array``, ``string``, ``null`` ...)."""
    return {"dict": "object", "list": "array", "str": "string", "NoneType": "null"}.get(
        type(value).__name__, type(value).__name__
    )


def check_supported(spec: TensorSpec) -> None:
    """Raise ``bad_dtype`` for an input whose dtype JSON events cannot carry."""
    if spec.dtype.kind not in SUPPORTED_KINDS or spec.dtype not in WIRE_DTYPES:
        raise EventError(
            Reason.BAD_DTYPE,
            f"input {spec.name!r} is {triton_name(spec.dtype)}; "
            "events carry only BOOL, INT, UINT and FP inputs",
        )


def convert(arr: np.ndarray, value: Any, spec: TensorSpec, has_bool: bool) -> np.ndarray:
    """``arr`` (``np.asarray(value)``, of the right shape) as ``spec.dtype``, every element checked.

    ``has_bool``: whether ``value`` may hold a JSON boolean (numpy turns a
    boolean among numbers into 0 or 1, so the array alone cannot tell).
    """
    target = spec.dtype
    kind = arr.dtype.kind
    if arr.size == 0:
        if kind in NUMERIC_KINDS | {"b"}:  # [] parses as float64
            return arr.astype(target)
    elif target.kind == "b":
        if kind == "b":
            return arr
    elif kind in NUMERIC_KINDS and not has_bool:
        if target.kind == "f" and fits_float(arr, target):
            return arr.astype(target, copy=False)
        if target.kind in "iu" and kind in "iu" and fits_int(arr, target):
            return arr.astype(target, copy=False)
        if target.kind in "iu" and kind == "f":  # floats, or integers past int64 mixed with negatives
            return _exact_ints(value, spec)
    raise _element_error(value, spec)


def to_tensor(value: Any, spec: TensorSpec, limits: LimitSettings, scan: bool = True) -> np.ndarray:
    """One input's parsed JSON as an array of the spec's dtype and shape, or :class:`EventError`.

    ``scan=False`` when the raw value can hold neither booleans nor more than
    ``limits.max_elements`` elements (the caller knows from the raw bytes).
    """
    check_supported(spec)
    if spec.dims and not isinstance(value, list):
        raise EventError(Reason.BAD_SHAPE, f"input {spec.name!r} must be an array, got {json_kind(value)}")
    too_many, has_bool = (
        _scan(value, limits.max_elements) if scan and isinstance(value, list) else (False, False)
    )
    if too_many:
        raise EventError(Reason.TOO_LARGE, f"input {spec.name!r} has over {limits.max_elements} elements")
    if isinstance(value, list) and spec.dims and 0 <= spec.dims[0] != len(value):  # before any array
        raise _shape_error(spec, f"{len(value)} rows")
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        raise EventError(
            Reason.BAD_SHAPE, f"input {spec.name!r} is not a regular array (rows of unequal length or depth)"
        ) from None
    if arr.size > limits.max_elements:
        raise EventError(
            Reason.TOO_LARGE, f"input {spec.name!r} has {arr.size} elements, over {limits.max_elements}"
        )
    if not spec.shape_matches(arr.shape):
        raise _shape_error(spec, f"shape {list(arr.shape)}")
    return convert(arr, value, spec, has_bool)


def _shape_error(spec: TensorSpec, got: str) -> EventError:
    return EventError(Reason.BAD_SHAPE, f"input {spec.name!r} has {got}, expected shape {list(spec.dims)}")


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


def stacked(spec: TensorSpec, values: list[Any]) -> np.ndarray | None:
    """Many events' values as one array of ``spec``'s dtype, batch axis first; None if one needs a look.

    ``values`` must hold no JSON booleans (numpy would make them 0 and 1; the
    caller knows from the raw bytes). Only plain numbers of fixed shape in
    range are converted here; anything else (integers past int64, a ragged or
    mistyped value) is left to :func:`to_tensor`, event by event, which gives
    the same result or the reason.
    """
    target = spec.dtype
    if target.kind not in NUMERIC_KINDS or not spec.dims or any(d < 0 for d in spec.dims):
        return None
    rows = spec.dims[0]
    if any(type(v) is not list or len(v) != rows for v in values):  # cheap, before numpy walks them
        return None
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError, OverflowError):
        return None
    if arr.shape != (len(values), *spec.dims):
        return None
    kind = arr.dtype.kind
    if target.kind == "f" and kind in NUMERIC_KINDS and fits_float(arr, target):
        return arr.astype(target, copy=False)
    if target.kind in "iu" and kind in "iu" and fits_int(arr, target):
        return arr.astype(target, copy=False)
    return None


def fits_int(arr: np.ndarray, target: np.dtype[Any]) -> bool:
    """Whether every element of an integer array is in ``target``'s range (exact comparison)."""
    if arr.size == 0:
        return True
    info = np.iinfo(target)
    return int(arr.min()) >= info.min and int(arr.max()) <= info.max


def fits_float(arr: np.ndarray, target: np.dtype[Any]) -> bool:
    """Whether every element of a numeric array stays finite once cast to ``target``.

    Two reductions settle the usual case; only values near the limits pay for
    the exact check under ``np.errstate`` (which is slow to enter).
    """
    if arr.size == 0:
        return True
    limit = float(np.finfo(target).max)
    if -limit <= arr.min() and arr.max() <= limit:
        return True
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(arr.astype(target)).all())  # a value may round down to the max


def _exact_ints(value: Any, spec: TensorSpec) -> np.ndarray:
    """Integers numpy could only hold as float64 (e.g. ``[-1, 2**63]``), converted without rounding."""
    rule = _Rule(spec.dtype)
    if any(rule.problem(leaf) is not None for _, leaf in elements(value)):
        raise _element_error(value, spec)
    return np.array(value, dtype=object).astype(spec.dtype)


def elements(value: Any) -> Iterator[tuple[tuple[int, ...], Any]]:
    """(index, element) of nested lists, in order; a non-list is one element at index ()."""
    if not isinstance(value, list):
        yield (), value
        return
    stack: list[tuple[tuple[int, ...], list[Any], int]] = [((), value, 0)]
    while stack:
        index, items, at = stack.pop()
        if at >= len(items):
            continue
        stack.append((index, items, at + 1))
        item = items[at]
        if isinstance(item, list) and item:
            stack.append(((*index, at), item, 0))
        else:
            yield (*index, at), item


def _element_error(value: Any, spec: TensorSpec) -> EventError:
    """``bad_dtype`` naming the first element that ``spec``'s dtype does not take."""
    rule = _Rule(spec.dtype)
    for index, leaf in elements(value):
        problem = rule.problem(leaf)
        if problem is not None:
            at = "".join(f"[{i}]" for i in index)
            return EventError(Reason.BAD_DTYPE, f"input {spec.name!r}{at} {problem}")
    return EventError(Reason.BAD_DTYPE, f"input {spec.name!r} does not convert to {rule.name}")


class _Rule:
    """Which JSON elements one dtype takes, checked one element at a time in plain Python."""

    def __init__(self, target: np.dtype[Any]) -> None:
        self.kind = target.kind
        self.name = triton_name(target)
        if self.kind == "f":
            top = np.finfo(target).max  # values from top + half a step up round to infinity
            edge = float(top) + float(top - np.nextafter(top, target.type(0))) / 2
            self.lo, self.hi = -edge, edge
        elif self.kind in "iu":
            info = np.iinfo(target)
            self.lo, self.hi = info.min, info.max

    def problem(self, leaf: Any) -> str | None:
        """What is wrong with ``leaf`` for this dtype, or None if it converts exactly."""
        if isinstance(leaf, bool):
            return None if self.kind == "b" else f"is a boolean; {self.name} takes {self.takes}"
        if self.kind == "b" or not isinstance(leaf, int | float):
            return f"is {_describe(leaf)}; {self.name} takes {self.takes}"
        if self.kind == "f":
            return None if self.lo < leaf < self.hi else f"is {leaf!r}, out of range for {self.name}"
        if isinstance(leaf, float) and _INT64_MIN < leaf <= _UINT64_MAX:
            return f"is a float ({leaf!r}); {self.name} takes integers"
        if (
            isinstance(leaf, float) or not self.lo <= leaf <= self.hi
        ):  # JSON integers past 64 bits parse as floats
            return f"is {leaf!r}, out of range for {self.name} ({self.lo} to {self.hi})"
        return None

    @property
    def takes(self) -> str:
        """The JSON values this dtype takes, in words."""
        return {"b": "true or false", "f": "numbers"}.get(self.kind, "integers")


def _describe(leaf: Any) -> str:
    if leaf is None:
        return "null"
    if isinstance(leaf, str):
        return f"a string ({shown(leaf, 20)})"
    if isinstance(leaf, int | float):
        return f"a number ({leaf!r})"
    return {"dict": "an object", "list": "an array"}.get(type(leaf).__name__, type(leaf).__name__)
