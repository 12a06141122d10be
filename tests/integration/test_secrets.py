"""Secrets (SASL password, TLS key password) never appear in logs, `sie settings` or /metrics.

A worker runs at DEBUG level with SASL_SSL credentials and an encrypted
client key against the mutual-TLS broker front; everything it writes and
serves is searched for the secret values.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from engine.embedded import TritonProcess, child_env, create_topics
from engine.eventgen import generate, load_profiles
from engine.settings import Settings
from engine.stack import settings_env
from tests.integration.conftest import MODEL_REPOSITORY, REPO, StartWorker
from tests.integration.kafka import collect, produce
from tests.integration.test_tls import client_tls, tls_broker, tls_files  # noqa: F401
from tests.integration.tls_certs import TlsFiles
from tests.integration.tls_front import TlsFront

pytestmark = pytest.mark.integration

REDACTED = "**********"
ENDPOINTS = ("/metrics", "/healthz", "/readyz")


def _get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())
    except urllib.error.HTTPError as err:  # /readyz answers 503 with a body
        return str(err.read().decode())
    except OSError as err:
        return str(err)


@pytest.mark.parametrize(
    "protocol",
    [
        pytest.param("SSL", id="ssl-worker-processes-events"),
        pytest.param("SASL_SSL", id="sasl-worker-refused-by-broker"),
    ],
)
def test_secrets_never_appear_in_logs_settings_output_or_metrics(
    protocol: str,
    tls_broker: TlsFront,  # noqa: F811
    tls_files: TlsFiles,  # noqa: F811
    triton: TritonProcess,
    workers: StartWorker,
    tmp_path: Path,
) -> None:
    """SSL: the worker runs end to end (SASL settings present but unused by the protocol).

    SASL_SSL: the local broker refuses SASL PLAIN, so the worker keeps probing
    and logging why; the password still never shows.
    """
    sasl_password = f"sasl-{uuid.uuid4().hex}"
    tag = uuid.uuid4().hex[:8]
    settings = Settings.model_validate(
        {
            "kafka": {
                "bootstrap_servers": tls_broker.bootstrap,
                "security_protocol": protocol,
                "sasl_mechanism": "PLAIN",
                "sasl_username": "sie-worker",
                "sasl_password": sasl_password,
                "ssl_cafile": tls_files.ca,
                "ssl_certfile": tls_files.client_cert,
                "ssl_keyfile": tls_files.client_key,
                "ssl_key_password": tls_files.client_key_password,
                "group_id": f"secrets-{tag}",
                "session_timeout_s": 6.0,
                "heartbeat_interval_s": 0.5,
                "fetch_max_wait_ms": 5,
            },
            "topics": {"events": f"ev-{tag}", "predictions": f"pred-{tag}", "dlq": f"dlq-{tag}"},
            "triton": {"url": triton.grpc_url, "http_url": triton.http_url},
            "log_level": "DEBUG",
            "data_dir": tmp_path / "data",
        }
    )
    secrets = [sasl_password, tls_files.client_key_password]
    tls = client_tls(tls_files)
    t = settings.topics
    create_topics(tls_broker.bootstrap, {t.events: 4, t.predictions: 4, t.dlq: 4}, client_config=tls)
    worker = workers(settings, wait=False)
    if protocol == "SSL":
        worker.wait_ready(timeout=90)
        events = [
            (e.key, e.value, [("traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01")])
            for e in generate(load_profiles(MODEL_REPOSITORY), 200, prefix="sec")
        ]
        produce(tls_broker.bootstrap, t.events, events, client_config=tls)
        got = collect(
            tls_broker.bootstrap,
            [t.predictions],
            lambda g: len(g[t.predictions]) >= 200,
            90,
            client_config=tls,
        )
        assert len(got[t.predictions]) == 200
    else:
        deadline = time.monotonic() + 30
        while "unreachable (attempt 2" not in worker.process.log_tail() and time.monotonic() < deadline:
            time.sleep(0.5)
    served = [_get(f"http://127.0.0.1:{worker.settings.metrics_port}{path}") for path in ENDPOINTS]
    shown = subprocess.run(
        [sys.executable, "-m", "engine.cli", "settings"],
        env=child_env(settings_env(worker.settings)),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    worker.stop()
    log = worker.process.log_path.read_text(errors="replace")

    assert "starting worker with" in log and REDACTED in log, "the settings line was not logged"
    if protocol == "SASL_SSL":
        assert "unreachable (attempt 1: " in log and "SASL PLAIN mechanism handshake failed" in log, log
    assert shown.returncode == 0, shown.stderr
    assert '"sasl_password": "**********"' in shown.stdout, shown.stdout
    assert "sie_" in served[0], "no metrics were served"
    for secret in secrets:
        assert secret not in log, "a secret leaked into the worker log"
        assert secret not in shown.stdout + shown.stderr, "a secret leaked into `sie settings`"
        for body in served:
            assert secret not in body, "a secret leaked into an HTTP endpoint"
