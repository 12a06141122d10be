"""tritonserver 2.51 and its python backend, from the nvidia-pytriton wheel.

tritonserver needs ``nvidia_pytriton.libs`` on ``LD_LIBRARY_PATH``. The python
backend stub embeds an *isolated* interpreter (``PYTHONPATH``, ``PYTHONHOME``
and ``PYTHONDONTWRITEBYTECODE`` are ignored) that finds its ``sys.prefix`` by
looking up ``python3`` on ``PATH``; putting this venv's ``bin`` first on
``PATH`` gives it the venv's site-packages (numpy). The interpreter's own
``libpython`` dir goes on ``LD_LIBRARY_PATH`` so the stub links the same
Python build. Startup with two small models takes ~3 s.

ONNX models (``platform: "onnxruntime_onnx"``) are served by a Python-based
backend named ``onnxruntime`` (inference/onnxruntime_backend.py, copied to
``backends/onnxruntime/model.py``): ONNX Runtime inside the python backend, the
repository's files and configs unchanged.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import sysconfig
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from inference import onnxruntime_backend
from ops.embedded.process import (
    EmbeddedServerError,
    ManagedProcess,
    child_env,
    http_ok,
    package_dir,
    require_file,
)

_SHM_PREFIX_ARG = "--backend-config=python,shm-region-prefix-name="
_STUB = "triton_python_backend_stub"
ONNX_BACKEND_SOURCE = Path(onnxruntime_backend.__file__)


@dataclass(frozen=True)
class TritonPaths:
    """Where the pieces of tritonserver and its python backend live."""

    binary: Path
    libs_dir: Path
    backend_lib: Path
    backend_utils: Path
    stub: Path
    python_bin_dir: Path
    python_lib_dir: Path | None

    def prepare_backend_dir(self, work_dir: Path) -> Path:
        """Assemble ``work_dir/backends``: ``python`` (lib, utils, stub) and ``onnxruntime`` (model.py)."""
        backends = work_dir / "backends"
        python_dir = backends / "python"
        python_dir.mkdir(parents=True, exist_ok=True)
        for source in (self.backend_lib, self.backend_utils, self.stub):
            target = python_dir / source.name
            if not target.exists() or target.stat().st_size != source.stat().st_size:
                shutil.copy2(source, target)
        onnx_dir = backends / "onnxruntime"
        onnx_dir.mkdir(exist_ok=True)
        shutil.copyfile(require_file(ONNX_BACKEND_SOURCE, "ONNX Runtime backend"), onnx_dir / "model.py")
        return backends


def _python_lib_dir() -> Path | None:
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if libdir and soname and (Path(libdir) / soname).is_file():
        return Path(libdir)
    return None


def find_tritonserver() -> TritonPaths:
    """Locate tritonserver, its libs and the python backend stub for this Python."""
    pytriton = package_dir("pytriton")
    dist = pytriton / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    backend = dist / "backends" / "python"
    return TritonPaths(
        binary=require_file(dist / "bin" / "tritonserver", "tritonserver"),
        libs_dir=pytriton.parent / "nvidia_pytriton.libs",
        backend_lib=require_file(backend / "libtriton_python.so", "python backend"),
        backend_utils=require_file(backend / "triton_python_backend_utils.py", "backend utils"),
        stub=require_file(
            dist / "python_backend_stubs" / version / "triton_python_backend_stub",
            f"python backend stub for Python {version}",
        ),
        python_bin_dir=Path(sys.executable).parent,
        python_lib_dir=_python_lib_dir(),
    )


@dataclass
class TritonProcess:
    """A running tritonserver."""

    process: ManagedProcess
    http_port: int
    grpc_port: int
    metrics_port: int
    models: tuple[str, ...]

    @property
    def grpc_url(self) -> str:
        """``host:port`` for ``tritonclient.grpc``."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        """``host:port`` for ``tritonclient.http``."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        """The Prometheus metrics endpoint."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def ready(self) -> bool:
        """Server ready and every model ready (HTTP health endpoints)."""
        base = f"http://{self.http_url}/v2"
        return http_ok(f"{base}/health/ready") and all(
            http_ok(f"{base}/models/{m}/ready") for m in self.models
        )

    def restart(self, timeout: float = 120) -> None:
        """Stop (if running) and start again on the same ports."""
        self.process.stop()
        self.process.start()
        self.process.wait_ready(self.ready, timeout)

    def respawn(self) -> None:
        """Start the exited server again, without waiting: same ports, model repository, arguments.

        After a SIGKILL the python-backend stubs of the old server can outlive
        it for a while, holding its shared-memory regions; they are killed and
        the regions removed first (both are named by this server's own prefix).
        """
        if self.process.alive:
            return
        args = self.process.argv
        prefix = next((a[len(_SHM_PREFIX_ARG) :] for a in args if a.startswith(_SHM_PREFIX_ARG)), "")
        if prefix:
            kill_stubs(prefix)
            for region in Path("/dev/shm").glob(f"{prefix}*"):
                region.unlink(missing_ok=True)
        self.process.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server."""
        self.process.stop(timeout)


def kill_stubs(shm_prefix: str) -> int:
    """SIGKILL python-backend stubs whose shared-memory region starts with ``shm_prefix``; how many."""
    killed = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if argv[0].endswith(_STUB) and any(a.startswith(shm_prefix) for a in argv[1:]):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(proc.name), signal.SIGKILL)
                killed += 1
    return killed


def discover_models(model_repository: Path) -> tuple[str, ...]:
    """Names of the sub-directories of ``model_repository`` holding a ``config.pbtxt``."""
    return tuple(sorted(p.parent.name for p in Path(model_repository).glob("*/config.pbtxt")))


def _trace_args(otlp_endpoint: str | None) -> list[str]:
    if not otlp_endpoint:
        return []
    settings = [
        "mode=opentelemetry",
        f"opentelemetry,url={otlp_endpoint}",
        "opentelemetry,resource=service.name=triton",
        "rate=1",
        "level=TIMESTAMPS",
    ]
    return [arg for s in settings for arg in ("--trace-config", s)]


def triton_argv(
    paths: TritonPaths,
    model_repository: Path,
    backends: Path,
    models: Sequence[str],
    ports: tuple[int, int, int],
    otlp_endpoint: str | None,
) -> list[str]:
    """The tritonserver command line (``ports`` = http, grpc, metrics)."""
    http_port, grpc_port, metrics_port = ports
    argv = [
        str(paths.binary),
        f"--model-repository={Path(model_repository).resolve()}",
        f"--backend-directory={backends}",
        "--model-control-mode=explicit",
        *(f"--load-model={m}" for m in models),
        "--http-address=127.0.0.1",
        f"--http-port={http_port}",
        "--grpc-address=127.0.0.1",
        f"--grpc-port={grpc_port}",
        "--metrics-address=127.0.0.1",
        f"--metrics-port={metrics_port}",
        "--allow-metrics=true",
        "--allow-gpu-metrics=false",
        "--exit-timeout-secs=5",
        f"{_SHM_PREFIX_ARG}sie-{uuid.uuid4().hex[:8]}-",
    ]
    return argv + _trace_args(otlp_endpoint)


def start_triton(
    model_repository: Path,
    work_dir: Path,
    *,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    models: Sequence[str] | None = None,
    otlp_endpoint: str | None = None,
    timeout: float = 120,
    extra_args: Sequence[str] = (),
) -> TritonProcess:
    """Start tritonserver (CPU, explicit model control) and wait for all models.

    ``models=None`` loads every sub-directory with a ``config.pbtxt``.
    ``otlp_endpoint`` (an OTLP/HTTP traces URL) turns on OpenTelemetry tracing.
    ``extra_args`` go last on the command line (e.g. ``--grpc-use-ssl=true``).
    """
    paths = find_tritonserver()
    work_dir = Path(work_dir).resolve()
    names = tuple(models) if models is not None else discover_models(model_repository)
    if not names:
        raise EmbeddedServerError(f"no models in {model_repository}")
    argv = triton_argv(
        paths,
        model_repository,
        paths.prepare_backend_dir(work_dir),
        names,
        (http_port, grpc_port, metrics_port),
        otlp_endpoint,
    ) + list(extra_args)
    lib_dirs = [d for d in (paths.python_lib_dir, paths.libs_dir) if d is not None]
    env = child_env(
        {"PYTHONDONTWRITEBYTECODE": "1"},
        path_prepend=[paths.python_bin_dir],
        ld_library_prepend=lib_dirs,
    )
    process = ManagedProcess(
        name=f"tritonserver:{grpc_port}",
        argv=tuple(argv),
        env=env,
        log_path=work_dir / f"tritonserver-{grpc_port}.log",
    )
    triton = TritonProcess(process, http_port, grpc_port, metrics_port, names)
    try:
        process.wait_ready(triton.ready, timeout)
    except EmbeddedServerError:
        process.stop()
        raise
    return triton
