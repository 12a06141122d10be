"""/healthz and /readyz of a real `sie worker` against the real broker and tritonserver."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from engine.settings import Settings
from ops.embedded import free_port
from ops.stack import WorkerProcess
from tests.integration.conftest import StartWorker
from tests.unit.deploy_support import REPO, dockerfile_instructions, load_compose

pytestmark = pytest.mark.integration

Response = tuple[int, dict[str, Any]]


def http_get(worker: WorkerProcess, path: str) -> Response | None:
    """(status, JSON body) of GET ``path`` on the worker's metrics port; None if nothing answers."""
    url = f"http://127.0.0.1:{worker.settings.metrics_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())
    except (urllib.error.URLError, OSError):
        return None


def poll(
    worker: WorkerProcess, path: str, until: Callable[[Response], bool], timeout: float = 90
) -> Response:
    """GET ``path`` until ``until(response)``; fails with the worker's log if it dies or time runs out."""
    deadline = time.monotonic() + timeout
    last: Response | None = None
    while time.monotonic() < deadline:
        assert worker.process.alive, f"worker exited:\n{worker.process.log_tail()}"
        last = http_get(worker, path)
        if last is not None and until(last):
            return last
        time.sleep(0.5)
    pytest.fail(f"{path} never matched (last {last}):\n{worker.process.log_tail()}")


def healthchecks(worker: WorkerProcess) -> dict[str, list[str]]:
    """The container health checks of the compose worker and of the image, aimed at ``worker``."""
    compose = load_compose(REPO / "docker-compose.yml")["services"]["worker"]["healthcheck"]["test"]
    assert compose[0] == "CMD"
    (image,) = [a for kw, a in dockerfile_instructions(REPO / "Dockerfile") if kw == "HEALTHCHECK"]
    commands = {"compose": compose[1:], "Dockerfile": json.loads(image[image.index("CMD") + 3 :])}
    here = f"127.0.0.1:{worker.settings.metrics_port}"
    return {
        # The same command, aimed at this worker; its 3 s HTTP timeout is widened because
        # this loaded test machine is not what the check is about.
        name: [
            sys.executable,
            *(a.replace("localhost:9300", here).replace("timeout=3", "timeout=30") for a in argv[1:]),
        ]
        for name, argv in commands.items()
        if argv[0] == "python"
    }


def assert_healthchecks_pass(worker: WorkerProcess) -> None:
    checks = healthchecks(worker)
    assert set(checks) == {"compose", "Dockerfile"}
    for name, argv in checks.items():
        done = subprocess.run(argv, timeout=120, capture_output=True, text=True)
        assert done.returncode == 0, f"{name} health check failed: {done.stderr}\n{worker.process.log_tail()}"


def test_ready_worker_is_alive_even_with_an_idle_client_and_reports_its_assigned_partitions(
    stack_settings: Settings, workers: StartWorker
) -> None:
    worker = workers(stack_settings)  # returns once /readyz answered 200

    assert http_get(worker, "/healthz") == (200, {"status": "alive"})
    with socket.create_connection(("127.0.0.1", worker.settings.metrics_port)) as idle:
        idle.sendall(b"GET /metr")  # a request that never ends
        assert http_get(worker, "/healthz") == (200, {"status": "alive"}), "an idle client held up the probe"
    code, body = poll(worker, "/readyz", lambda r: r[0] == 200)
    assert body["ready"] is True and body["triton"] is True
    assert 0 < body["assigned_partitions"] <= stack_settings.topics.partitions
    assert_healthchecks_pass(worker)


def test_worker_is_alive_but_not_ready_while_triton_is_unreachable(
    stack_settings: Settings, workers: StartWorker
) -> None:
    nowhere = f"127.0.0.1:{free_port()}"  # nothing listens here
    settings = stack_settings.model_copy(
        update={"triton": stack_settings.triton.model_copy(update={"url": nowhere, "http_url": nowhere})}
    )
    worker = workers(settings, wait=False)

    poll(worker, "/healthz", lambda r: r[0] == 200)
    # Wait until the group has given it partitions, so only Triton can be what keeps it unready.
    code, body = poll(worker, "/readyz", lambda r: r[1].get("assigned_partitions", 0) > 0)
    assert code == 503
    assert body["ready"] is False and body["triton"] is False
    assert http_get(worker, "/healthz") == (200, {"status": "alive"})
    # Container health checks use /healthz: an unready worker is not restarted or marked unhealthy.
    assert_healthchecks_pass(worker)
