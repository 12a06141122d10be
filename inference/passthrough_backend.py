"""A benchmark-only backend: real model specs from Triton, no inference (the pass-through bound).

``sie bench`` uses it for the *pass-through bound*: the same consume, decode,
batch, produce and commit path as the engine, with the Triton call replaced by
an identity function that returns zero-filled outputs of the declared shapes.
Turned on with ``SIE_TRITON__IDENTITY=true``; never use it in production.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from engine.modelspec import ModelSpec
from engine.ports import InferenceBackend
from engine.records import InferenceResult


class PassThroughBackend:
    """Wraps a real backend for specs and health; ``infer`` answers at once."""

    def __init__(self, inner: InferenceBackend) -> None:
        self._inner = inner
        self._specs: dict[str, ModelSpec] = {}

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        headers: Mapping[str, str] | None = None,
        version: str = "",
    ) -> InferenceResult:
        """Zero outputs of the model's declared shapes, one row per input row."""
        rows = len(next(iter(inputs.values())))
        spec = self._specs[model]
        outputs = {o.name: np.zeros((rows, *(max(d, 1) for d in o.dims)), o.dtype) for o in spec.outputs}
        return InferenceResult(model=model, model_version="identity", outputs=outputs)

    async def model_specs(self) -> dict[str, ModelSpec]:
        """The real models' specs (remembered for ``infer``)."""
        self._specs = await self._inner.model_specs()
        return self._specs

    async def model_versions(self) -> dict[str, list[str]]:
        """The real served versions."""
        return await self._inner.model_versions()

    async def is_ready(self) -> bool:
        """The real server's readiness."""
        return await self._inner.is_ready()

    async def close(self) -> None:
        """Close the real backend."""
        await self._inner.close()
