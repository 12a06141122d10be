"""ONNX models on the local tritonserver: a Python-based Triton backend named ``onnxruntime``.

The ``tritonserver`` of the nvidia-pytriton wheel has only the python
backend. Triton (since 23.x) takes a directory ``<backends>/<name>/model.py``
with no ``libtriton_<name>.so`` as a *Python-based backend* and runs it with
the python backend; ``platform: "onnxruntime_onnx"`` and ``backend:
"onnxruntime"`` both name the backend ``onnxruntime``. The embedded server
(ops/embedded/tritonserver.py) copies this file to
``<work>/backends/onnxruntime/model.py``, so a production-shaped ONNX model
(``<model>/<version>/model.onnx``, its ``config.pbtxt`` untouched) is served by
ONNX Runtime on the CPU, through the same model repository, model control and
dynamic batching as in production, where Triton's own onnxruntime backend
serves the same folder.

At load the graph's inputs and outputs are checked against the config
(inference/onnx_graph.py); a mismatch fails the load with one message naming
each difference. ``parameters { key: "intra_op_thread_count" }`` sets ONNX
Runtime's threads per instance (default 1 here: the local stack shares a few
cores with Kafka and the workers).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_FILE = "model.onnx"
THREADS_PARAMETER = "intra_op_thread_count"


def _parameter(config: dict[str, Any], key: str, default: str) -> str:
    value = config.get("parameters", {}).get(key)
    if isinstance(value, dict):
        return str(value.get("string_value", default))
    return default if value is None else str(value)


def split_rows(outputs: list[np.ndarray], counts: list[int]) -> list[list[np.ndarray]]:
    """Per request, its rows of every output (``counts`` rows each, in order)."""
    per_request: list[list[np.ndarray]] = []
    start = 0
    for n in counts:
        per_request.append([out[start : start + n] for out in outputs])
        start += n
    return per_request


class TritonPythonModel:
    """One ONNX Runtime session per model instance; requests with equal shapes run together."""

    def initialize(self, args: dict[str, str]) -> None:
        """Check the graph against the config, then open the session."""
        import onnxruntime as ort

        from inference.onnx_graph import check_graph

        config = json.loads(args["model_config"])
        path = Path(args["model_repository"]) / str(args["model_version"])
        path = path / (config.get("default_model_filename") or DEFAULT_FILE)
        check_graph(config, path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(_parameter(config, THREADS_PARAMETER, "1"))
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def execute(self, requests: list[Any]) -> list[Any]:
        """Answer every request; a failing group gets errors, the stub never crashes."""
        import triton_python_backend_utils as pb_utils

        responses: list[Any] = [None] * len(requests)
        groups: dict[tuple[tuple[int, ...], ...], list[tuple[int, dict[str, np.ndarray]]]] = {}
        for i, request in enumerate(requests):
            try:
                feeds = {n: pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in self.inputs}
            except Exception as exc:
                responses[i] = _error(pb_utils, f"cannot read inputs {self.inputs}: {exc}")
                continue
            key = tuple(feeds[n].shape[1:] for n in self.inputs)
            groups.setdefault(key, []).append((i, feeds))
        for members in groups.values():
            self._run_group(pb_utils, members, responses)
        return responses

    def _run_group(
        self, pb_utils: Any, members: list[tuple[int, dict[str, np.ndarray]]], out: list[Any]
    ) -> None:
        try:
            feeds = {n: np.concatenate([f[n] for _, f in members]) for n in self.inputs}
            results = self.session.run(self.outputs, feeds)
        except Exception as exc:
            for i, _ in members:
                out[i] = _error(pb_utils, f"inference failed: {exc}")
            return
        counts = [len(f[self.inputs[0]]) for _, f in members]
        for (i, _), rows in zip(members, split_rows(results, counts), strict=True):
            tensors = [
                pb_utils.Tensor(n, np.ascontiguousarray(r)) for n, r in zip(self.outputs, rows, strict=True)
            ]
            out[i] = pb_utils.InferenceResponse(output_tensors=tensors)

    def finalize(self) -> None:
        """Drop the session."""
        self.session = None


def _error(pb_utils: Any, message: str) -> Any:
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    error = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)
