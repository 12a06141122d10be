"""Records that flow through the pipeline. Raw dicts stop at the decoder."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from engine.errors import Reason

Headers = tuple[tuple[str, bytes], ...]


class Completion:
    """Counts down the records of one consumed chunk; fires once at zero.

    The stream layer gives each chunk one of these; the pipeline calls
    :meth:`done` once per record after its prediction or dead letter is
    acknowledged by the broker. Only then may the chunk's offsets be committed.
    """

    __slots__ = ("_remaining", "_on_done", "_lock")

    def __init__(self, count: int, on_done: Callable[[], None]) -> None:
        self._remaining = count
        self._on_done = on_done
        self._lock = threading.Lock()
        if count == 0:
            on_done()

    @property
    def remaining(self) -> int:
        """Records of the chunk not yet acknowledged."""
        return self._remaining

    def done(self, n: int = 1) -> None:
        """Mark ``n`` records as delivered."""
        with self._lock:
            self._remaining -= n
            fire = self._remaining == 0
        if fire:
            self._on_done()


@dataclass(frozen=True, slots=True)
class SourceRef:
    """Where a record came from."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One consumed Kafka record, before decoding."""

    key: bytes | None
    value: bytes | None
    headers: Headers
    source: SourceRef
    received_at: float
    completion: Completion = field(compare=False, repr=False)

    def header(self, name: str) -> bytes | None:
        """The last value of header ``name``, if present."""
        for k, v in reversed(self.headers):
            if k == name:
                return v
        return None


@dataclass(frozen=True, slots=True)
class Event:
    """A decoded, validated event ready for inference."""

    id: str
    model: str
    inputs: Mapping[str, np.ndarray]
    record: RawRecord
    version: str = ""  # pinned by routing ("" = the version Triton serves)
    arm: str = ""  # A/B arm chosen by routing, if any
    binary: bool = False  # arrived as a binary tensor event (engine/binary_codec.py)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event that cannot be predicted, with the reason."""

    record: RawRecord
    reason: Reason
    message: str


@dataclass(frozen=True, slots=True)
class Batch:
    """Events of one model sent to Triton in one request."""

    model: str
    events: tuple[Event, ...]
    opened_at: float
    version: str = ""  # the events' pinned version ("" = Triton's choice)

    def __len__(self) -> int:
        return len(self.events)

    def stacked_inputs(self) -> dict[str, np.ndarray]:
        """One array per input, the events stacked on a new batch axis."""
        names = self.events[0].inputs.keys()
        return {n: np.stack([e.inputs[n] for e in self.events]) for n in names}


@dataclass(frozen=True, slots=True)
class InferenceResult:
    """Triton's answer for one batch: outputs with the batch axis first."""

    model: str
    model_version: str
    outputs: Mapping[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """What became of a batch: a result, or the fatal error that ended it."""

    batch: Batch
    result: InferenceResult | None
    error: DeadLetter | None
    sent_at: float
    finished_at: float


@dataclass(frozen=True, slots=True)
class OutRecord:
    """A record to produce."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers
