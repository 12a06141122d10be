"""Switch the version Triton serves, with explicit model control (tritonclient gRPC).

``promote`` asks Triton to load the model with a config override whose
version policy is ``specific: [new]``. Triton loads the new version while the
old one keeps serving and switches only when the new one is ready; if the
load fails, the old version is left serving unchanged. Only then is the same
policy written to ``config.pbtxt`` on disk, so a Triton restart serves what
was promoted. ``rollback`` is a promote of the previous version.

Triton must run with ``--model-control-mode=explicit`` (the embedded stack
does); in ``poll`` or ``none`` mode load requests are refused.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from tritonclient.utils import InferenceServerException

from engine.errors import EngineError
from engine.settings import TritonSettings
from inference.client import triton_client
from inference.repository import (
    CONFIG_FILE,
    RepositoryError,
    errors,
    parse_config,
    validate_config,
    validate_version_files,
    version_dirs,
)
from inference.version_policy import with_policy, write_version_policy


class ModelControlError(EngineError):
    """Triton refused or failed a model-control request; what is served did not change."""


@dataclass(frozen=True)
class Switch:
    """A finished version switch."""

    model: str
    before: tuple[int, ...]
    after: tuple[int, ...]
    seconds: float


class ModelControl:
    """Model control of one Triton over one on-disk repository (the one Triton serves)."""

    def __init__(self, triton: TritonSettings, repository: Path, *, timeout_s: float = 300.0) -> None:
        self.repository = Path(repository)
        self.url = triton.url
        self._timeout_s = timeout_s
        self._client = triton_client(triton, aio=False)

    def close(self) -> None:
        """Close the gRPC channel."""
        self._client.close()

    def index(self) -> dict[str, dict[int, str]]:
        """Triton's repository index: state per version per model (``READY``, ``UNAVAILABLE``...)."""
        try:
            doc: Any = self._client.get_model_repository_index(as_json=True, client_timeout=30)
        except InferenceServerException as err:
            raise ModelControlError(f"Triton at {self.url}: {err.message()}") from err
        out: dict[str, dict[int, str]] = {}
        for m in doc.get("models", []):
            version = str(m.get("version", ""))
            if version.isdigit():
                out.setdefault(m["name"], {})[int(version)] = str(m.get("state", ""))
        return out

    def served(self, name: str) -> list[int]:
        """Versions of ``name`` that Triton reports READY, ascending."""
        return sorted(v for v, state in self.index().get(name, {}).items() if state == "READY")

    def promote(self, name: str, version: int | None = None, *, keep_previous: bool = False) -> Switch:
        """Serve ``version`` (default: the highest on disk) of ``name``.

        With ``keep_previous`` the highest version served before stays loaded
        too (for an A/B split between versions); requests that name no
        version then go to the higher one.
        """
        model_dir = self.repository / name
        available = version_dirs(model_dir)
        target = version if version is not None else max(available, default=0)
        if target not in available:
            raise ModelControlError(f"{model_dir}: no version {target} on disk (have {available})")
        before = self.served(name)
        versions = [target, *(before[-1:] if keep_previous and before else [])]
        return self._switch(name, before, versions)

    def rollback(self, name: str, to: int | None = None) -> Switch:
        """Serve the version before the highest one served now (or ``to``)."""
        before = self.served(name)
        if to is None:
            if not before:
                raise ModelControlError(f"model {name!r} is not served; nothing to roll back")
            older = [v for v in version_dirs(self.repository / name) if v < before[-1]]
            if not older:
                raise ModelControlError(f"model {name!r}: no version older than {before[-1]} on disk")
            to = older[-1]
        if to not in version_dirs(self.repository / name):
            raise ModelControlError(f"model {name!r}: no version {to} on disk")
        return self._switch(name, before, [to])

    def _switch(self, name: str, before: Sequence[int], versions: Sequence[int]) -> Switch:
        model_dir = self.repository / name
        config = parse_config(model_dir / CONFIG_FILE)
        found = errors(validate_config(config, model_dir))
        for v in versions:
            found += errors(validate_version_files(config, model_dir / str(v)))
        if found:
            raise RepositoryError(found)
        override = json_format.MessageToJson(with_policy(config, versions), preserving_proto_field_name=True)
        started = time.monotonic()
        try:
            self._client.load_model(name, config=override, client_timeout=self._timeout_s)
        except InferenceServerException as err:
            raise ModelControlError(
                f"Triton did not load {name!r} versions {sorted(versions)}: {err.message()}; "
                f"still serving {list(before)}"
            ) from err
        seconds = time.monotonic() - started
        after = self.served(name)
        missing = sorted(set(versions) - set(after))
        if missing:
            raise ModelControlError(f"{name!r}: versions {missing} not READY after load (serving {after})")
        write_version_policy(model_dir, versions)
        return Switch(name, tuple(before), tuple(after), seconds)
