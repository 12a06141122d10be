"""Model input/output specs, read from a model configuration (the KServe v2 / Triton model-config JSON
that an inference backend reports; ``inference/`` fetches it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.errors import ConfigError

# Model-config data types -> numpy dtypes (the numeric ones events can carry).
_CONFIG_DTYPES: dict[str, np.dtype[Any]] = {
    "TYPE_BOOL": np.dtype(np.bool_),
    "TYPE_UINT8": np.dtype(np.uint8),
    "TYPE_UINT16": np.dtype(np.uint16),
    "TYPE_UINT32": np.dtype(np.uint32),
    "TYPE_UINT64": np.dtype(np.uint64),
    "TYPE_INT8": np.dtype(np.int8),
    "TYPE_INT16": np.dtype(np.int16),
    "TYPE_INT32": np.dtype(np.int32),
    "TYPE_INT64": np.dtype(np.int64),
    "TYPE_FP16": np.dtype(np.float16),
    "TYPE_FP32": np.dtype(np.float32),
    "TYPE_FP64": np.dtype(np.float64),
}

# numpy dtype -> the KServe v2 wire datatype name (what an inference request carries).
WIRE_DTYPES: dict[np.dtype[Any], str] = {
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.uint16): "UINT16",
    np.dtype(np.uint32): "UINT32",
    np.dtype(np.uint64): "UINT64",
    np.dtype(np.int8): "INT8",
    np.dtype(np.int16): "INT16",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.float16): "FP16",
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
}


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output: name, numpy dtype, and dims without the batch axis."""

    name: str
    dtype: np.dtype[Any]
    dims: tuple[int, ...]

    @property
    def max_elements(self) -> int | None:
        """Elements per event if every dim is fixed, else None."""
        if any(d < 0 for d in self.dims):
            return None
        return int(np.prod(self.dims, dtype=np.int64)) if self.dims else 1

    def shape_matches(self, shape: tuple[int, ...]) -> bool:
        """Whether ``shape`` fits these dims (-1 matches any length)."""
        return len(shape) == len(self.dims) and all(
            d < 0 or d == s for d, s in zip(self.dims, shape, strict=True)
        )


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What the engine needs to know about a served model."""

    name: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def input(self, name: str) -> TensorSpec | None:
        """The input called ``name``, if any."""
        return next((t for t in self.inputs if t.name == name), None)


def _tensor(raw: Mapping[str, Any], model: str) -> TensorSpec:
    dtype_name = raw.get("data_type", "")
    if dtype_name not in _CONFIG_DTYPES:
        raise ConfigError(f"model {model!r}: tensor {raw.get('name')!r} has dtype {dtype_name!r}")
    dims = tuple(int(d) for d in raw.get("dims", []))
    return TensorSpec(name=str(raw["name"]), dtype=_CONFIG_DTYPES[dtype_name], dims=dims)


def spec_from_config(config: Mapping[str, Any]) -> ModelSpec:
    """Build a spec from a model config as JSON (Triton's ``get_model_config`` answers in this format)."""
    name = str(config.get("name", ""))
    if not config.get("input"):
        raise ConfigError(f"model {name!r} declares no inputs")
    return ModelSpec(
        name=name,
        max_batch_size=int(config.get("max_batch_size", 0)),
        inputs=tuple(_tensor(t, name) for t in config["input"]),
        outputs=tuple(_tensor(t, name) for t in config.get("output", [])),
    )
