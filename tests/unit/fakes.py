"""Fakes for unit tests of pure logic (no servers)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from engine.errors import FatalError, RetryableError
from engine.modelspec import ModelSpec, TensorSpec
from engine.records import Completion, InferenceResult, OutRecord, RawRecord, SourceRef


class ManualClock:
    """A clock that only moves when told; ``sleep`` advances it."""

    def __init__(self) -> None:
        self.t = 0.0
        self._seq = itertools.count()
        self._timers: list[tuple[float, int, Callable[[], None], list[bool]]] = []

    def now(self) -> float:
        return self.t

    def call_later(self, delay: float, callback: Callable[[], None]) -> ManualClock._Handle:
        cancelled = [False]
        heapq.heappush(self._timers, (self.t + delay, next(self._seq), callback, cancelled))
        return ManualClock._Handle(cancelled)

    async def sleep(self, delay: float) -> None:
        self.advance(delay)
        await asyncio.sleep(0)

    def advance(self, dt: float) -> None:
        self.t += dt
        while self._timers and self._timers[0][0] <= self.t:
            _, _, callback, cancelled = heapq.heappop(self._timers)
            if not cancelled[0]:
                callback()

    class _Handle:
        def __init__(self, flag: list[bool]) -> None:
            self._flag = flag

        def cancel(self) -> None:
            self._flag[0] = True


def spec(name: str = "m", n: int = 3, max_batch: int = 8) -> ModelSpec:
    return ModelSpec(
        name=name,
        max_batch_size=max_batch,
        inputs=(TensorSpec("features", np.dtype(np.float32), (n,)),),
        outputs=(TensorSpec("probabilities", np.dtype(np.float32), (2,)),),
    )


def raw(
    value: bytes | None,
    offset: int = 0,
    key: bytes | None = b"k",
    completion: Completion | None = None,
    headers: tuple[tuple[str, bytes], ...] = (),
) -> RawRecord:
    return RawRecord(
        key=key,
        value=value,
        headers=headers,
        source=SourceRef("events", 0, offset, 1_700_000_000_000),
        received_at=0.0,
        completion=completion or Completion(1, lambda: None),
    )


class FakeBackend:
    """Sums each row; can fail with queued errors or block until released."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.errors: list[Exception] = []
        self.gate: asyncio.Event | None = None

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        headers: Mapping[str, str] | None = None,
        version: str = "",
    ) -> InferenceResult:
        x = inputs["features"]
        self.calls.append((model, len(x)))
        if self.gate is not None:
            await self.gate.wait()
        if self.errors:
            raise self.errors.pop(0)
        s = x.sum(axis=1, keepdims=True)
        outputs = {"probabilities": np.hstack([s, -s])}
        return InferenceResult(model=model, model_version=version or "1", outputs=outputs)

    async def model_specs(self) -> dict[str, ModelSpec]:
        return {"m": spec()}

    async def is_ready(self) -> bool:
        return True

    async def close(self) -> None:
        return None


class FakeSink:
    """Records what is sent; acknowledges at once unless ``hold`` is set."""

    def __init__(self) -> None:
        self.sent: list[OutRecord] = []
        self.hold = False
        self.pending: list[asyncio.Future[None]] = []

    async def send(self, records: Sequence[OutRecord]) -> asyncio.Future[None]:
        self.sent.extend(records)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.hold:
            self.pending.append(fut)
        else:
            fut.set_result(None)
        return fut

    def release(self) -> None:
        for fut in self.pending:
            fut.set_result(None)
        self.pending.clear()

    async def close(self) -> None:
        return None

    def on(self, topic: str) -> list[OutRecord]:
        return [r for r in self.sent if r.topic == topic]


__all__ = ["FakeBackend", "FakeSink", "ManualClock", "FatalError", "RetryableError", "raw", "spec"]
