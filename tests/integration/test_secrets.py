"""Secrets (SASL password, TLS key password) never appear in logs, `sie settings` or HTTP bodies.

A worker runs at DEBUG level against the secured Apache Kafka broker of
``test_tls.py`` with every secret configured - a SCRAM-SHA-512 user's password
and an encrypted client key with its password - over mutual TLS (``SSL``
listener) or SASL_SSL with SCRAM-SHA-512. Both process events end to end; a
third worker, with a wrong SASL password, is refused and says why. Everything
each worker writes and serves is searched for the secret values.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import orjson
import pytest

from engine.settings import Settings
from ops.embedded import KafkaBroker, TritonProcess, child_env, create_topics
from ops.eventgen import generate, load_profiles
from ops.stack import settings_env
from tests.integration.conftest import MODEL_REPOSITORY, REPO, StartWorker
from tests.integration.kafka import collect, produce
from tests.integration.test_tls import (  # noqa: F401 (fixtures)
    SCRAM,
    mtls_client,
    new_scram_user,
    secure_broker,
    ssl_bootstrap,
    tls_files,
)
from tests.integration.tls_certs import TlsFiles

pytestmark = pytest.mark.integration

REDACTED = "**********"
ENDPOINTS = ("/metrics", "/healthz", "/readyz")
EVENTS = 200
TRACEPARENT = b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01"


def _get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())
    except urllib.error.HTTPError as err:  # /readyz answers 503 with a body
        return str(err.read().decode())
    except OSError as err:
        return str(err)


@pytest.mark.parametrize(
    ("protocol", "password_ok"),
    [
        pytest.param("SSL", True, id="ssl-worker-processes-events"),
        pytest.param("SASL_SSL", True, id="sasl-ssl-scram-worker-processes-events"),
        pytest.param("SASL_SSL", False, id="sasl-ssl-worker-with-wrong-password-is-refused"),
    ],
)
def test_secrets_never_appear_in_logs_settings_output_or_http_endpoints(
    protocol: str,
    password_ok: bool,
    secure_broker: KafkaBroker,  # noqa: F811
    tls_files: TlsFiles,  # noqa: F811
    triton: TritonProcess,
    workers: StartWorker,
    tmp_path: Path,
) -> None:
    """Every worker has both secrets configured (the client key is loaded in both protocols).

    SSL: the worker runs end to end over mutual TLS (the SASL settings are
    present, unused by the protocol). SASL_SSL: it authenticates as a SCRAM
    user (and presents its client certificate, which that listener does not
    ask for) and runs end to end; with a wrong password the broker refuses it,
    and it keeps probing and logging why.
    """
    user, password = new_scram_user(secure_broker)
    sasl_password = password if password_ok else f"wrong-{uuid.uuid4().hex}"
    bootstrap = ssl_bootstrap(secure_broker) if protocol == "SSL" else secure_broker.bootstrap
    tag = uuid.uuid4().hex[:8]
    settings = Settings.model_validate(
        {
            "kafka": {
                "bootstrap_servers": bootstrap,
                "security_protocol": protocol,
                "sasl_mechanism": SCRAM,
                "sasl_username": user,
                "sasl_password": sasl_password,
                "ssl_cafile": tls_files.ca,
                "ssl_certfile": tls_files.client_cert,
                "ssl_keyfile": tls_files.client_key,
                "ssl_key_password": tls_files.client_key_password,
                "group_id": f"secrets-{tag}",
                "session_timeout_s": 6.0,
                "heartbeat_interval_s": 0.5,
            },
            "topics": {"events": f"ev-{tag}", "predictions": f"pred-{tag}", "dlq": f"dlq-{tag}"},
            "triton": {"url": triton.grpc_url, "http_url": triton.http_url},
            "log_level": "DEBUG",
            "data_dir": tmp_path / "data",
        }
    )
    secrets = [sasl_password, tls_files.client_key_password]
    tls = mtls_client(tls_files)
    tls_bootstrap = ssl_bootstrap(secure_broker)
    t = settings.topics
    create_topics(tls_bootstrap, {t.events: 4, t.predictions: 4, t.dlq: 4}, client_config=tls)
    worker = workers(settings, wait=False)
    if password_ok:
        worker.wait_ready(timeout=90)
        events = list(generate(load_profiles(MODEL_REPOSITORY), EVENTS, prefix="sec"))
        produce(
            tls_bootstrap, t.events, [(e.key, e.value, [("traceparent", TRACEPARENT)]) for e in events], tls
        )
        got = collect(
            tls_bootstrap,
            [t.predictions, t.dlq],
            lambda g: len(g[t.predictions]) + len(g[t.dlq]) >= EVENTS,
            90,
            client_config=tls,
        )
        assert not got[t.dlq], got[t.dlq][:3]
        ids = sorted(orjson.loads(m.value or b"")["id"] for m in got[t.predictions])
        assert ids == sorted(e.id for e in events), f"{len(ids)} predictions for {EVENTS} events"
    else:
        deadline = time.monotonic() + 30
        while "unreachable (attempt 2" not in worker.process.log_tail() and time.monotonic() < deadline:
            time.sleep(0.5)
    served = [_get(f"http://127.0.0.1:{worker.settings.metrics_port}{path}") for path in ENDPOINTS]
    shown = subprocess.run(
        [sys.executable, "-m", "ops.cli", "settings"],
        env=child_env(settings_env(worker.settings)),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    worker.stop()
    log = worker.process.log_path.read_text(errors="replace")

    assert "starting worker with" in log and REDACTED in log, "the settings line was not logged"
    if not password_ok:
        assert "unreachable (attempt 1: " in log, log[-3000:]
        assert f"invalid credentials with SASL mechanism {SCRAM}" in log, log[-3000:]
    assert shown.returncode == 0, shown.stderr
    assert f'"sasl_password": "{REDACTED}"' in shown.stdout, shown.stdout
    assert f'"ssl_key_password": "{REDACTED}"' in shown.stdout, shown.stdout
    assert "sie_" in served[0], "no metrics were served"
    for secret in secrets:
        assert secret not in log, "a secret leaked into the worker log"
        assert secret not in shown.stdout + shown.stderr, "a secret leaked into `sie settings`"
        for body in served:
            assert secret not in body, "a secret leaked into an HTTP endpoint"
