"""The async Triton client (tritonclient gRPC aio) behind an ``InferenceBackend`` protocol."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from engine.errors import (
    BackendUnavailable,
    FatalError,
    InferenceFailed,
    ModelNotFound,
    RetryableError,
)
from engine.modelspec import WIRE_DTYPES, ModelSpec, spec_from_config
from engine.records import InferenceResult
from engine.settings import TritonSettings
from inference.client import triton_client

log = logging.getLogger(__name__)

# gRPC status codes after which the same request may succeed later.
RETRYABLE_CODES = frozenset(
    {"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "ABORTED", "CANCELLED"}
)
NOT_FOUND_CODES = frozenset({"NOT_FOUND"})

# tritonclient's default channel options, plus a reconnect backoff capped at
# 1 s: gRPC's default grows to minutes, so after a long Triton outage every
# request would fail fast with UNAVAILABLE long after the server is back.
_KEEPALIVE = grpcclient.KeepAliveOptions()
CHANNEL_ARGS = [
    ("grpc.max_send_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
    ("grpc.max_receive_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
    ("grpc.keepalive_time_ms", _KEEPALIVE.keepalive_time_ms),
    ("grpc.keepalive_timeout_ms", _KEEPALIVE.keepalive_timeout_ms),
    ("grpc.keepalive_permit_without_calls", int(_KEEPALIVE.keepalive_permit_without_calls)),
    ("grpc.http2.max_pings_without_data", _KEEPALIVE.http2_max_pings_without_data),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def status_code(err: InferenceServerException) -> str:
    """The gRPC status name of a tritonclient error, e.g. ``UNAVAILABLE``."""
    status = err.status() or ""
    return str(status).rsplit(".", 1)[-1].upper()


def classify(err: InferenceServerException, model: str) -> RetryableError | FatalError:
    """Map a tritonclient error to the engine's hierarchy by its status code."""
    code = status_code(err) or "CLIENT"
    text = f"{code}: {err.message()}"
    if code in RETRYABLE_CODES:
        return BackendUnavailable(text, code=code)
    if code in NOT_FOUND_CODES:
        return ModelNotFound(f"model {model!r}: {text}", code=code)
    return InferenceFailed(text, code=code)


class TritonBackend:
    """Triton over gRPC (asyncio)."""

    def __init__(self, settings: TritonSettings) -> None:
        self._settings = settings
        self._client = triton_client(settings, aio=True, channel_args=CHANNEL_ARGS)

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        headers: Mapping[str, str] | None = None,
        version: str = "",
    ) -> InferenceResult:
        """Send one batch and return outputs with the batch axis first."""
        request = []
        for name, array in inputs.items():
            tensor = grpcclient.InferInput(name, list(array.shape), WIRE_DTYPES[array.dtype])
            tensor.set_data_from_numpy(np.ascontiguousarray(array))
            request.append(tensor)
        try:
            response = await self._client.infer(
                model,
                request,
                model_version=version,
                client_timeout=self._settings.request_timeout_s,
                headers=dict(headers) if headers else None,
            )
        except InferenceServerException as err:
            raise classify(err, model) from err
        raw = response.get_response()
        outputs = {out.name: response.as_numpy(out.name) for out in raw.outputs}
        return InferenceResult(model=model, model_version=raw.model_version, outputs=outputs)

    async def model_specs(self) -> dict[str, ModelSpec]:
        """Specs of every READY model, read from Triton's model configs."""
        try:
            index: Any = await self._client.get_model_repository_index(as_json=True)
            ready = [m["name"] for m in index.get("models", []) if m.get("state") == "READY"]
            specs = {}
            for name in sorted(set(ready)):
                config: Any = await self._client.get_model_config(name, as_json=True)
                specs[name] = spec_from_config(config["config"])
        except InferenceServerException as err:
            raise classify(err, "*") from err
        return specs

    async def model_versions(self) -> dict[str, list[str]]:
        """Ready versions per model."""
        try:
            index: Any = await self._client.get_model_repository_index(as_json=True)
        except InferenceServerException as err:
            raise classify(err, "*") from err
        versions: dict[str, list[str]] = {}
        for m in index.get("models", []):
            if m.get("state") == "READY":
                versions.setdefault(m["name"], []).append(str(m.get("version", "")))
        return versions

    async def is_ready(self) -> bool:
        """Server liveness and readiness in one call."""
        try:
            return bool(await self._client.is_server_ready())
        except InferenceServerException:
            return False

    async def close(self) -> None:
        """Close the gRPC channel."""
        await self._client.close()
