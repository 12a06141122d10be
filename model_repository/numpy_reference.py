"""Pure-numpy reference of the Triton models, for tests that compare outputs.

The forward pass is not re-implemented here: it is imported from the backend
templates beside this file (the same code Triton runs): ``mlp_backend.py``
for the fixed-size models, ``sequence_backend.py`` for the variable-length
ones (``seq_trend``).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np

BACKEND_TEMPLATE = Path(__file__).resolve().parent / "mlp_backend.py"
SEQUENCE_TEMPLATE = Path(__file__).resolve().parent / "sequence_backend.py"


def import_file(path: Path, module_name: str) -> ModuleType:
    """Import a Python file by path without writing ``__pycache__`` beside it.

    Bytecode written into the model repository would make Triton's poll mode
    reload models, so it is suppressed while the file is imported.
    """
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    previous = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = previous
    return module


def backend_module() -> ModuleType:
    """The ``mlp_backend`` template module (imported once)."""
    existing = sys.modules.get("mlp_backend")
    if existing is not None and getattr(existing, "__file__", None) == str(BACKEND_TEMPLATE):
        return existing
    return import_file(BACKEND_TEMPLATE, "mlp_backend")


def sequence_module() -> ModuleType:
    """The ``sequence_backend`` template module (imported once)."""
    existing = sys.modules.get("sequence_backend")
    if existing is not None and getattr(existing, "__file__", None) == str(SEQUENCE_TEMPLATE):
        return existing
    return import_file(SEQUENCE_TEMPLATE, "sequence_backend")


def load_sequence_reference(model_dir: Path, version: int = 1) -> Callable[[np.ndarray], np.ndarray]:
    """Function ``sequences [batch, length] -> probabilities`` of a variable-length model's weights."""
    module = sequence_module()
    weights = module.load_weights(Path(model_dir) / str(version) / module.WEIGHTS_FILE)

    def predict(x: np.ndarray) -> np.ndarray:
        return np.asarray(module.predict(weights, np.atleast_2d(np.asarray(x, dtype=np.float32))))

    return predict


def load_reference(model_dir: Path, version: int = 1) -> Callable[[np.ndarray], np.ndarray]:
    """Forward function ``x -> probabilities`` of ``model_dir/<version>/weights.npz``.

    ``model_dir`` is one model's directory, e.g. ``model_repository/iris``.
    """
    backend = backend_module()
    weights = backend.load_weights(Path(model_dir) / str(version) / backend.WEIGHTS_FILE)

    def predict(x: np.ndarray) -> np.ndarray:
        return np.asarray(backend.forward(weights, x))

    return predict
