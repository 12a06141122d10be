"""JSON-lines events turned into binary tensor events for ``sie produce --format binary``.

Each line's ``inputs`` (or ``features``) become raw tensors of the dtype its
model's ``config.pbtxt`` declares (the engine checks them exactly as it checks
JSON). A line that does not convert - not JSON, no id, an unknown model, a
value the dtype cannot hold - is sent as it is, in JSON, so the engine
dead-letters it with the reason rather than the tool guessing.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
from google.protobuf import json_format

from engine.contract.wire import encode_binary_event
from engine.modelspec import ModelSpec, spec_from_config
from engine.records import Headers
from inference.repository import model_dirs, parse_config

Produced = tuple[bytes, bytes | None, Headers]


@dataclass(frozen=True)
class BinaryConverter:
    """Converts events for the models it knows."""

    specs: Mapping[str, ModelSpec]
    default_model: str

    @classmethod
    def from_repository(cls, repository: Path, default_model: str) -> BinaryConverter:
        """Specs of every model in ``repository`` (its ``config.pbtxt`` files)."""
        specs = {}
        for model_dir in model_dirs(repository):
            config = json_format.MessageToDict(
                parse_config(model_dir / "config.pbtxt"), preserving_proto_field_name=True
            )
            specs[model_dir.name] = spec_from_config(config)
        return cls(specs, default_model)

    def convert(self, value: bytes) -> tuple[bytes, Headers] | None:
        """The binary value and headers of one JSON event, or None when it does not convert."""
        try:
            doc = orjson.loads(value)
            model = doc.get("model")
            spec = self.specs[model if model is not None else self.default_model]
            raw = doc.get("inputs") or {spec.inputs[0].name: doc["features"]}
            inputs = {t.name: np.asarray(raw[t.name], dtype=t.dtype) for t in spec.inputs}
            return encode_binary_event(doc["id"], inputs, model)
        except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError, OverflowError):
            return None

    def convert_all(self, lines: Iterable[tuple[bytes, bytes | None]]) -> Iterator[Produced]:
        """(value, key, headers) for each (value, key) of ``lines``."""
        for value, key in lines:
            converted = self.convert(value)
            yield (value, key, ()) if converted is None else (converted[0], key, converted[1])
