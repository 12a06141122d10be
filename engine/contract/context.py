"""What decoding an input record needs to know: the served models, the limits, the router."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from engine.modelspec import ModelSpec
from engine.routing import Router
from engine.settings import LimitSettings


@dataclass(frozen=True, slots=True)
class DecodeContext:
    """What decoding needs: the served models and the limits."""

    models: Mapping[str, ModelSpec]
    default_model: str
    limits: LimitSettings
    router: Router | None = None  # None: the event's model, else default_model
