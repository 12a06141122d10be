"""The one place a tritonclient gRPC client is built from :class:`~engine.settings.TritonSettings`.

:class:`inference.triton.TritonBackend` uses the asyncio client (``aio=True``) with its own
channel options; :class:`inference.model_control.ModelControl` the blocking one with
tritonclient's defaults. Both connect to ``settings.url`` with the same TLS settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, overload

import tritonclient.grpc as grpc_client
import tritonclient.grpc.aio as aio_client

from engine.settings import TritonSettings


@overload
def triton_client(
    settings: TritonSettings, *, aio: Literal[True], channel_args: Sequence[tuple[str, Any]] | None = None
) -> aio_client.InferenceServerClient: ...


@overload
def triton_client(
    settings: TritonSettings, *, aio: Literal[False], channel_args: Sequence[tuple[str, Any]] | None = None
) -> grpc_client.InferenceServerClient: ...


def triton_client(
    settings: TritonSettings, *, aio: bool, channel_args: Sequence[tuple[str, Any]] | None = None
) -> aio_client.InferenceServerClient | grpc_client.InferenceServerClient:
    """A gRPC client of the Triton at ``settings.url`` (asyncio when ``aio``), TLS as configured;
    ``channel_args`` None keeps tritonclient's default channel options."""
    client_class = aio_client.InferenceServerClient if aio else grpc_client.InferenceServerClient
    return client_class(
        url=settings.url,
        ssl=settings.ssl,
        root_certificates=_path(settings.root_certificates),
        private_key=_path(settings.private_key),
        certificate_chain=_path(settings.certificate_chain),
        channel_args=list(channel_args) if channel_args is not None else None,
    )


def _path(path: Path | None) -> str | None:
    return str(path) if path is not None else None
