"""The Triton command lines of docker-compose.yml and deploy/k8s run on the real tritonserver 2.51.

The NGC image is not available here, but its tritonserver is the same release as the
local one, so the exact flags the deployment files pass (explicit model control, one
--load-model per model, strict readiness, OpenTelemetry tracing) are started for real;
only paths and ports are mapped to local ones.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from ops.embedded import free_port
from ops.embedded.process import ManagedProcess, child_env
from ops.embedded.tritonserver import TritonProcess, find_tritonserver
from ops.stack import copy_model_repository
from tests.unit.deploy_support import REPO, interpolate, load_compose, model_names

pytestmark = pytest.mark.integration

StartTriton = Callable[[list[str]], TritonProcess]


def compose_args() -> list[str]:
    return list(interpolate(load_compose(REPO / "docker-compose.yml")["services"]["triton"]["command"]))


def localize(args: list[str], repo: Path, ports: dict[str, int], backends: Path) -> list[str]:
    """The deployment's arguments with the model repository, ports and collector mapped to local ones."""
    assert args[0] == "tritonserver"
    out = []
    for arg in args[1:]:
        flag = arg.partition("=")[0]
        kind = flag.removeprefix("--").removesuffix("-port")
        if flag == "--model-repository":
            arg = f"{flag}={repo}"
        elif flag.endswith("-port") and kind in ports:
            arg = f"{flag}={ports[kind]}"
        elif arg.startswith("opentelemetry,url="):
            arg = f"opentelemetry,url=http://127.0.0.1:{free_port()}/v1/traces"  # nothing listens
        out.append(arg)
    # Local-only additions: the backend directory, no GPU, and a private shared-memory
    # prefix so this server never collides with another tritonserver on the machine.
    shm = f"--backend-config=python,shm-region-prefix-name=sie-{uuid.uuid4().hex[:8]}-"
    return [*out, f"--backend-directory={backends}", "--allow-gpu-metrics=false", shm]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[StartTriton]:
    started: list[TritonProcess] = []

    def run(args: list[str]) -> TritonProcess:
        paths = find_tritonserver()
        ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
        repo = copy_model_repository(REPO / "model_repository", tmp_path)
        argv = [str(paths.binary), *localize(args, repo, ports, paths.prepare_backend_dir(tmp_path))]
        libs = [d for d in (paths.python_lib_dir, paths.libs_dir) if d is not None]
        env = child_env({}, path_prepend=[paths.python_bin_dir], ld_library_prepend=libs)
        process = ManagedProcess("triton-deploy-args", tuple(argv), env, tmp_path / "triton.log")
        triton = TritonProcess(process, ports["http"], ports["grpc"], ports["metrics"], tuple(model_names()))
        started.append(triton)
        process.wait_ready(triton.ready, timeout=180)
        return triton

    yield run
    for triton in started:
        triton.stop()


def test_compose_triton_command_serves_every_model_and_passes_its_healthcheck(start: StartTriton) -> None:
    args = compose_args()
    assert "--model-control-mode=explicit" in args
    triton = start(args)  # returns once the server and every model answer ready
    assert set(triton.models) == model_names()
    kind, *argv = load_compose(REPO / "docker-compose.yml")["services"]["triton"]["healthcheck"]["test"]
    assert kind == "CMD" and argv[0] == "python3"
    # The same command aimed at this server (HTTP timeout widened for the loaded test machine).
    argv = [sys.executable, *(a.replace("localhost:8000", triton.http_url) for a in argv[1:])]
    argv = [a.replace("timeout=5", "timeout=30") for a in argv]
    done = subprocess.run(argv, timeout=120, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_k8s_triton_args_serve_every_model_and_answer_its_probes(start: StartTriton) -> None:
    deployment = yaml.safe_load((REPO / "deploy" / "k8s" / "triton-deployment.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    triton = start(list(container["args"]))
    assert set(triton.models) == model_names()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        path = container[probe]["httpGet"]["path"]
        with urllib.request.urlopen(f"http://{triton.http_url}{path}", timeout=10) as response:
            assert response.status == 200, probe
