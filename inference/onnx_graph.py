"""An ONNX graph's inputs and outputs checked against its Triton ``config.pbtxt``.

One check, used where a model is validated (inference/repository.py: ``sie
models validate``, deploy, promote) and where the local stack loads it
(inference/onnxruntime_backend.py, inside Triton). The config is taken in
Triton's JSON form (what the python backend receives; ``config_as_dict``
turns a parsed ``config.pbtxt`` into it), the graph as ``onnx.ModelProto``.

A tensor matches when the names are the same, the element type is the
config's ``data_type``, and the shapes agree: the graph's rank is the config's
``dims`` plus the batch axis when ``max_batch_size > 0``; a fixed graph
dimension must equal a fixed config dimension, and a config ``-1`` needs a
symbolic (or unknown) graph dimension.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import ConfigError

# ONNX TensorProto element types -> Triton data types.
ONNX_TO_TRITON: dict[int, str] = {
    1: "TYPE_FP32",
    2: "TYPE_UINT8",
    3: "TYPE_INT8",
    4: "TYPE_UINT16",
    5: "TYPE_INT16",
    6: "TYPE_INT32",
    7: "TYPE_INT64",
    8: "TYPE_STRING",
    9: "TYPE_BOOL",
    10: "TYPE_FP16",
    11: "TYPE_FP64",
    12: "TYPE_UINT32",
    13: "TYPE_UINT64",
    16: "TYPE_BF16",
}


@dataclass(frozen=True)
class Tensor:
    """One input or output: name, Triton data type, dims (``None`` for a symbolic dimension)."""

    name: str
    data_type: str
    dims: tuple[int | None, ...]

    def shown(self) -> str:
        """``TYPE_FP32 [batch, 30]``-style text."""
        dims = ", ".join("?" if d is None else str(d) for d in self.dims)
        return f"{self.data_type.removeprefix('TYPE_')} [{dims}]"


class GraphMismatch(ConfigError):
    """The graph's inputs or outputs differ from the config; the message names each difference."""

    def __init__(self, path: Path, model: str, differences: Sequence[str]) -> None:
        self.path = path
        self.differences = tuple(differences)
        super().__init__(f"{path} does not match the config.pbtxt of {model!r}: " + "; ".join(differences))


def graph_tensors(model: Any) -> tuple[list[Tensor], list[Tensor]]:
    """Inputs (initializers left out) and outputs of an ``onnx.ModelProto``."""
    initializers = {i.name for i in model.graph.initializer}

    def tensor(value: Any) -> Tensor:
        kind = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in kind.shape.dim)
        return Tensor(value.name, ONNX_TO_TRITON.get(kind.elem_type, f"ONNX_{kind.elem_type}"), dims)

    inputs = [tensor(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [tensor(v) for v in model.graph.output]


def config_tensors(config: Mapping[str, Any], kind: str) -> list[Tensor]:
    """``kind`` (``input``/``output``) tensors of a config in Triton's JSON form, batch axis included."""
    batched = int(config.get("max_batch_size", 0) or 0) > 0
    out = []
    for t in config.get(kind, []):
        dims = tuple(int(d) for d in t.get("dims", []))
        dims = ((-1,) if batched else ()) + dims
        out.append(Tensor(str(t["name"]), str(t.get("data_type", "TYPE_INVALID")), tuple(dims)))
    return out


def _differences(kind: str, wanted: Sequence[Tensor], found: Sequence[Tensor]) -> list[str]:
    by_name = {t.name: t for t in found}
    out = []
    for want in wanted:
        have = by_name.pop(want.name, None)
        if have is None:
            names = ", ".join(repr(n) for n in sorted(t.name for t in found)) or "none"
            out.append(f"{kind} {want.name!r} is in the config but not in the graph (graph {kind}s: {names})")
            continue
        config_dims = tuple(None if d == -1 else d for d in want.dims)
        same_rank = len(have.dims) == len(config_dims)
        fits = same_rank and all(
            (c is None and g is None) or (c is not None and g in (c, None))
            for c, g in zip(config_dims, have.dims, strict=True)
        )
        if have.data_type != want.data_type or not fits:
            shown = Tensor(want.name, want.data_type, config_dims).shown()
            out.append(f"{kind} {want.name!r}: the config says {shown}, the graph has {have.shown()}")
    out += [f"{kind} {name!r} is in the graph but not in the config" for name in sorted(by_name)]
    return out


def signature_differences(config: Mapping[str, Any], model: Any) -> list[str]:
    """Every difference between the config's and the graph's inputs and outputs (empty: they match)."""
    inputs, outputs = graph_tensors(model)
    return _differences("input", config_tensors(config, "input"), inputs) + _differences(
        "output", config_tensors(config, "output"), outputs
    )


def check_graph(config: Mapping[str, Any], path: Path) -> None:
    """Raise :class:`GraphMismatch` naming every difference between ``path``'s graph and ``config``."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError and others for a bad file
        raise GraphMismatch(
            path, str(config.get("name", "?")), [f"not a readable ONNX model ({err})"]
        ) from None
    found = signature_differences(config, model)
    if found:
        raise GraphMismatch(path, str(config.get("name", "?")), found)


def config_as_dict(config: Any) -> dict[str, Any]:
    """A parsed ``ModelConfig`` in Triton's JSON form (field names as in ``config.pbtxt``)."""
    from google.protobuf import json_format

    return json_format.MessageToDict(config, preserving_proto_field_name=True)
