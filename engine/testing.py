"""Test doubles of the core's ports and record builders: for this project's unit tests and for yours.

Pure (no Kafka, no inference server): a pipeline built from :class:`engine.ports.PipelineParts`
runs in a plain ``asyncio`` test with

* :class:`ScriptedBackend` - an :class:`~engine.ports.InferenceBackend` that answers each call by
  a script of behaviours (then :func:`sums`), records every call, can be held at a gate, and
  answers as a given version;
* :class:`RecordingSink` - a :class:`~engine.ports.Sink` that keeps what is sent and acknowledges
  it at once, or when :meth:`RecordingSink.release` is called;
* :class:`ManualClock` and :class:`InstantClock` - :class:`~engine.clock.Clock` s whose time moves
  only when told, or whose sleeps (retry backoff) return at once;
* :func:`model_spec`, :func:`raw_record`, :func:`raw_records` and :func:`json_event` - records
  and model specs as the stream layer and the backend would hand them over.

Example::

    backend, sink = ScriptedBackend(), RecordingSink()
    backend.script = [raising(BackendUnavailable("down"))]  # the first call fails, then sums
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import orjson

from engine.clock import Cancellable
from engine.errors import InferenceFailed
from engine.modelspec import ModelSpec, TensorSpec
from engine.records import Completion, InferenceResult, OutRecord, RawRecord, SourceRef

# What one scripted backend call does with the batch's input: return its outputs, or raise.
Behaviour = Callable[[np.ndarray], Mapping[str, np.ndarray]]

EVENT_TIMESTAMP_MS = 1_700_000_000_000  # the Kafka timestamp of built records


def model_spec(name: str = "m", features: int = 3, max_batch: int = 8) -> ModelSpec:
    """A model taking ``features`` float32 values per event and answering two probabilities."""
    return ModelSpec(
        name=name,
        max_batch_size=max_batch,
        inputs=(TensorSpec("features", np.dtype(np.float32), (features,)),),
        outputs=(TensorSpec("probabilities", np.dtype(np.float32), (2,)),),
    )


def sums(x: np.ndarray) -> dict[str, np.ndarray]:
    """The default answer: ``probabilities`` = each row's sum and its negation."""
    s = x.reshape(len(x), -1).sum(axis=1, keepdims=True)
    return {"probabilities": np.hstack([s, -s]).astype(np.float32)}


def raising(error: BaseException) -> Behaviour:
    """A behaviour that raises ``error`` (e.g. ``BackendUnavailable`` to be retried)."""

    def behaviour(x: np.ndarray) -> Mapping[str, np.ndarray]:
        raise error

    return behaviour


@dataclass(frozen=True)
class InferenceCall:
    """One call a :class:`ScriptedBackend` received."""

    model: str
    version: str  # as asked ("" = the backend's choice)
    shape: tuple[int, ...]  # of the first input
    headers: Mapping[str, str] | None

    @property
    def rows(self) -> int:
        """Events in the batch."""
        return self.shape[0]


class ScriptedBackend:
    """An inference backend run by a script: each call pops one :data:`Behaviour`, then :func:`sums`.

    ``calls`` records every call; while ``gate`` is set and not open, calls wait on it. A model in
    ``broken`` always raises :class:`~engine.errors.InferenceFailed`. Answers carry the version
    asked for, else ``version``.
    """

    def __init__(
        self,
        script: Sequence[Behaviour] = (),
        *,
        models: Mapping[str, ModelSpec] | None = None,
        version: str = "1",
        broken: frozenset[str] = frozenset(),
    ) -> None:
        self.script = list(script)
        self.models = dict(models) if models is not None else {"m": model_spec()}
        self.version = version
        self.broken = broken
        self.calls: list[InferenceCall] = []
        self.gate: asyncio.Event | None = None

    def fail_next(self, *errors: BaseException) -> None:
        """The next calls raise ``errors``, one each, in order."""
        self.script.extend(raising(e) for e in errors)

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        headers: Mapping[str, str] | None = None,
        version: str = "",
    ) -> InferenceResult:
        """Record the call, wait at the gate, then answer by the script."""
        x = next(iter(inputs.values()))
        self.calls.append(InferenceCall(model, version, tuple(x.shape), headers))
        await (self.gate.wait() if self.gate is not None else asyncio.sleep(0))
        if model in self.broken:
            raise InferenceFailed(f"model {model!r} is broken")
        behaviour = self.script.pop(0) if self.script else sums
        return InferenceResult(model=model, model_version=version or self.version, outputs=behaviour(x))

    async def model_specs(self) -> dict[str, ModelSpec]:
        """``models``."""
        return dict(self.models)

    async def model_versions(self) -> dict[str, list[str]]:
        """Every model in ``version``."""
        return {name: [self.version] for name in self.models}

    async def is_ready(self) -> bool:
        """Always ready."""
        return True

    async def close(self) -> None:
        """Nothing to release."""


class RecordingSink:
    """A sink that keeps every record sent; acknowledges at once, or on :meth:`release` while ``hold``."""

    def __init__(self) -> None:
        self.sent: list[OutRecord] = []
        self.hold = False
        self.pending: list[asyncio.Future[None]] = []

    async def send(self, records: Sequence[OutRecord]) -> asyncio.Future[None]:
        """Keep ``records``; the future resolves now, or on :meth:`release` while ``hold`` is set."""
        self.sent.extend(records)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.hold:
            self.pending.append(fut)
        else:
            fut.set_result(None)
        return fut

    def release(self) -> None:
        """Acknowledge everything held."""
        for fut in self.pending:
            fut.set_result(None)
        self.pending.clear()

    def on(self, topic: str) -> list[OutRecord]:
        """The records sent to ``topic``, in order."""
        return [r for r in self.sent if r.topic == topic]

    async def close(self) -> None:
        """Nothing to flush."""


class ManualClock:
    """A clock that only moves when told: :meth:`advance`, or ``sleep`` (which advances it)."""

    def __init__(self) -> None:
        self.t = 0.0
        self._seq = itertools.count()
        self._timers: list[tuple[float, int, Callable[[], None], list[bool]]] = []

    def now(self) -> float:
        """The clock's time, seconds."""
        return self.t

    def call_later(self, delay: float, callback: Callable[[], None]) -> Cancellable:
        """Run ``callback`` once the clock has advanced by ``delay``."""
        cancelled = [False]
        heapq.heappush(self._timers, (self.t + delay, next(self._seq), callback, cancelled))
        return _Timer(cancelled)

    async def sleep(self, delay: float) -> None:
        """Advance by ``delay`` and let other tasks run."""
        self.advance(delay)
        await asyncio.sleep(0)

    def advance(self, dt: float) -> None:
        """Move time on by ``dt`` seconds, running the callbacks that fall due."""
        self.t += dt
        while self._timers and self._timers[0][0] <= self.t:
            _, _, callback, cancelled = heapq.heappop(self._timers)
            if not cancelled[0]:
                callback()


class _Timer:
    def __init__(self, flag: list[bool]) -> None:
        self._flag = flag

    def cancel(self) -> None:
        self._flag[0] = True


class InstantClock:
    """The running loop's time, but ``sleep`` returns at once (retry backoff costs a test nothing)."""

    def now(self) -> float:
        """The loop's time."""
        return asyncio.get_running_loop().time()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Cancellable:
        """Schedule on the running loop (batch deadlines stay real)."""
        return asyncio.get_running_loop().call_later(delay, callback)

    async def sleep(self, delay: float) -> None:
        """Let other tasks run, without waiting."""
        await asyncio.sleep(0)


def raw_record(
    value: bytes | None,
    offset: int = 0,
    key: bytes | None = b"k",
    completion: Completion | None = None,
    headers: tuple[tuple[str, bytes], ...] = (),
    topic: str = "events",
) -> RawRecord:
    """One consumed record of partition 0 of ``topic`` at ``offset`` (its own completion unless given)."""
    return RawRecord(
        key=key,
        value=value,
        headers=headers,
        source=SourceRef(topic, 0, offset, EVENT_TIMESTAMP_MS),
        received_at=0.0,
        completion=completion or Completion(1, lambda: None),
    )


def raw_records(
    values: Sequence[bytes | None],
    acked: list[int] | None = None,
    headers: tuple[tuple[str, bytes], ...] = (),
    *,
    keys: Sequence[bytes | None] | None = None,
    header_sets: Sequence[tuple[tuple[str, bytes], ...]] | None = None,
    topic: str = "in",
) -> list[RawRecord]:
    """One record per value at offsets 0, 1, ... (key ``k<offset>`` and ``headers`` unless given per
    record); each has its own completion, which appends its offset to ``acked``."""
    out = []
    for offset, value in enumerate(values):
        done = Completion(1, _noting(acked, offset))
        key = keys[offset] if keys is not None else f"k{offset}".encode()
        hdrs = header_sets[offset] if header_sets is not None else headers
        out.append(raw_record(value, offset, key, done, hdrs, topic))
    return out


def _noting(acked: list[int] | None, offset: int) -> Callable[[], None]:
    if acked is None:
        return lambda: None
    return lambda: acked.append(offset)


def json_event(offset: int, features: Sequence[float] | None = None, model: str = "m") -> bytes:
    """A valid JSON event ``e<offset>`` for :func:`model_spec` (``features`` default ``[offset, 1, 0]``)."""
    doc = {"id": f"e{offset}", "model": model, "features": list(features or [offset, 1, 0])}
    return orjson.dumps(doc)
