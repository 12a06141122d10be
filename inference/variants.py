"""Compressed variants of an ONNX model, each its own Triton model beside the original.

``make_variant(repository, "breast_cancer_onnx", "int8")`` writes
``breast_cancer_onnx_int8/config.pbtxt`` (the original's config, renamed) and
``breast_cancer_onnx_int8/1/model.onnx``. Kinds:

* ``fp16`` - ONNX Runtime's float16 converter; inputs and outputs stay FP32
  (``keep_io_types``), so clients and the engine see the same tensors.
* ``int8`` - static quantization, QDQ format, INT8 weights and activations,
  per-tensor scales calibrated (MinMax) on the model's training inputs
  (``<model>/calibration.npz``, see :func:`save_calibration`).
* ``int8_dynamic`` - dynamic quantization (INT8 weights, activation scales
  computed per batch at run time), for comparison: no calibration data.

Every variant is checked against its config (inference/onnx_graph.py) before
it is moved into place, so the repository never holds a half-written or
mismatched variant. Needs ``onnxruntime`` (the ``local`` extra).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import text_format

from engine.errors import ConfigError
from inference.onnx_graph import check_graph, config_as_dict
from inference.repository import BACKEND_FILES, CONFIG_FILE, backend_of, parse_config, version_dirs

KINDS = ("fp16", "int8", "int8_dynamic")
CALIBRATION_FILE = "calibration.npz"
ONNX_BACKENDS = ("onnxruntime", "onnxruntime_onnx")


class VariantError(ConfigError):
    """A variant cannot be made from this model (not ONNX, no calibration data, unknown kind)."""


def variant_name(source: str, kind: str) -> str:
    """The Triton model name of ``source``'s ``kind`` variant (``breast_cancer_onnx_int8``)."""
    return f"{source}_{kind}"


def save_calibration(path: Path, batches: Sequence[np.ndarray]) -> None:
    """Calibration inputs as arrays ``batch_0, batch_1, ...``: batches of the model's one input."""
    np.savez_compressed(path, **{f"batch_{i}": np.asarray(b, np.float32) for i, b in enumerate(batches)})


def load_calibration(path: Path) -> list[np.ndarray]:
    """The batches :func:`save_calibration` wrote, in order."""
    if not Path(path).is_file():
        raise VariantError(f"{path}: no calibration data (arrays batch_0, batch_1, ... of the model's input)")
    with np.load(path) as data:
        return [data[f"batch_{i}"] for i in range(len(data.files))]


class _Batches:
    """ONNX Runtime's ``CalibrationDataReader`` protocol over a list of batches of one input."""

    def __init__(self, input_name: str, batches: Sequence[np.ndarray]) -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = iter([{input_name: b} for b in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)

    def rewind(self) -> None:  # part of the protocol; one pass is all MinMax needs
        pass


def _fp16(source: Path, target: Path, _: list[np.ndarray] | None, __: str) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(model, str(target))


def _int8(source: Path, target: Path, batches: list[np.ndarray] | None, input_name: str) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    assert batches is not None
    quantize_static(
        str(source),
        str(target),
        _Batches(input_name, batches),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )


def _int8_dynamic(source: Path, target: Path, _: list[np.ndarray] | None, __: str) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)


MAKERS: dict[str, Callable[[Path, Path, list[np.ndarray] | None, str], None]] = {
    "fp16": _fp16,
    "int8": _int8,
    "int8_dynamic": _int8_dynamic,
}


def source_model(model_dir: Path) -> tuple[Any, Path]:
    """The ONNX model's parsed config and its highest version's model file."""
    config = parse_config(model_dir / CONFIG_FILE)
    backend = backend_of(config)
    if backend not in ONNX_BACKENDS:
        raise VariantError(f"{model_dir}: backend {backend!r} is not ONNX (platform onnxruntime_onnx)")
    versions = version_dirs(model_dir)
    if not versions:
        raise VariantError(f"{model_dir}: no numbered version directory")
    filename = config.default_model_filename or BACKEND_FILES[backend]
    return config, model_dir / str(versions[-1]) / filename


def make_variant(
    repository: Path, source: str, kind: str, *, calibration: Path | None = None, overwrite: bool = True
) -> Path:
    """Write ``source``'s ``kind`` variant as model ``<source>_<kind>`` (version 1); return its dir."""
    if kind not in MAKERS:
        raise VariantError(f"unknown variant kind {kind!r}; choose from {', '.join(KINDS)}")
    repository = Path(repository)
    config, model_file = source_model(repository / source)
    batches = None
    if kind == "int8":
        batches = load_calibration(calibration or repository / source / CALIBRATION_FILE)
    if len(config.input) != 1 and kind == "int8":
        raise VariantError(f"{source}: static calibration supports models with one input")
    name = variant_name(source, kind)
    target = repository / name
    if target.exists() and not overwrite:
        raise VariantError(f"{target} exists")
    config.name = name
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=repository))
    try:
        (staging / "1").mkdir()
        out = staging / "1" / model_file.name
        MAKERS[kind](model_file, out, batches, config.input[0].name)
        check_graph(config_as_dict(config), out)
        header = f"# Generated by `sie models compress` from {source} ({kind}) - do not edit by hand.\n"
        (staging / CONFIG_FILE).write_text(header + text_format.MessageToString(config))
        os.chmod(staging, 0o755)
        if target.exists():
            shutil.rmtree(target)
        os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
