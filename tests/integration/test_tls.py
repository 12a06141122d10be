"""The pipeline over TLS: to Kafka (mutual TLS; SASL_SSL with SCRAM-SHA-512) and to Triton's gRPC.

Kafka: a throwaway CA signs the broker's certificate (127.0.0.1) and a client
certificate with an encrypted key. ``secure_broker`` is a real Apache Kafka
broker with no plaintext client listener, only

* an ``SSL`` listener requiring client certificates signed by the CA (mutual
  TLS), and
* a ``SASL_SSL`` listener accepting only SCRAM-SHA-512, whose application user
  the tests create through Kafka's Admin API.

The worker's clients - the Faust/aiokafka consumer and producer, the confluent
producer of outputs, the start-up broker probe - connect with
``SIE_KAFKA__SECURITY_PROTOCOL=SSL`` or ``SASL_SSL`` and the CA, certificate,
key, key password, SASL mechanism, user and password from settings. Clients
without TLS, without the CA, without a trusted client certificate, with a wrong
password or another SASL mechanism are refused, each for its own reason.

Triton: a tritonserver with ``--grpc-use-ssl`` and a worker with
``SIE_TRITON__SSL=true`` and the CA as root certificate.

``tls_files``, ``secure_broker`` and the client-config helpers are shared with
``test_secrets.py``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import orjson
import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from engine.settings import Settings
from ops.embedded import (
    BrokerSecurity,
    KafkaBroker,
    TritonProcess,
    create_topics,
    free_port,
    start_broker,
    start_triton,
    upsert_scram_user,
)
from ops.eventgen import generate, load_profiles
from ops.stack import copy_model_repository
from streams.kafka_tools import produce_all
from tests.integration.conftest import MODEL_REPOSITORY, StartWorker
from tests.integration.kafka import collect
from tests.integration.tls_certs import TlsFiles, make_tls_files

pytestmark = pytest.mark.integration

TLS_EVENTS = 2_000
SCRAM_EVENTS = 3_000
SCRAM = "SCRAM-SHA-512"
_REFUSAL_WAIT_S = 4.0

log = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory, tls_files: TlsFiles) -> Iterator[KafkaBroker]:
    """Apache Kafka with only an mTLS ``SSL`` listener and a SCRAM-SHA-512 ``SASL_SSL`` one.

    ``bootstrap``/``client_config`` reach it as the SCRAM admin; see :func:`ssl_bootstrap`.
    """
    security = BrokerSecurity(ca=tls_files.ca, cert_chain=tls_files.server_chain, key=tls_files.server_key)
    broker = start_broker(None, tmp_path_factory.mktemp("secure-kafka"), security=security)
    assert broker.port is None, "a secured broker must have no plaintext client listener"
    yield broker
    broker.stop()


def ssl_bootstrap(broker: KafkaBroker) -> str:
    """The broker's mutual-TLS (``SSL``) listener."""
    assert broker.ssl_port is not None
    return f"127.0.0.1:{broker.ssl_port}"


def mtls_client(files: TlsFiles) -> dict[str, str]:
    """librdkafka settings of a client the ``SSL`` listener accepts."""
    return {
        "security.protocol": "SSL",
        "ssl.ca.location": str(files.ca),
        "ssl.certificate.location": str(files.client_cert),
        "ssl.key.location": str(files.client_key),
        "ssl.key.password": files.client_key_password,
    }


def scram_client(files: TlsFiles, user: str, password: str, mechanism: str = SCRAM) -> dict[str, str]:
    """librdkafka settings of a SASL_SSL client (trusting the CA, no client certificate)."""
    return {
        "security.protocol": "SASL_SSL",
        "ssl.ca.location": str(files.ca),
        "sasl.mechanism": mechanism,
        "sasl.username": user,
        "sasl.password": password,
    }


def new_scram_user(broker: KafkaBroker) -> tuple[str, str]:
    """A fresh SCRAM-SHA-512 application user, created through the Admin API as the broker's admin."""
    user, password = f"app-{uuid.uuid4().hex[:8]}", f"pw-{uuid.uuid4().hex}"
    upsert_scram_user(broker.bootstrap, user, password, mechanism=SCRAM, client_config=broker.client_config)
    return user, password


def refusal(bootstrap: str, config: Mapping[str, str]) -> str | None:
    """Why a client with ``config`` gets no metadata from ``bootstrap``; None if it is served.

    The reason is librdkafka's first specific error (TLS alert, SASL failure),
    else its last error after a few seconds of trying (a plaintext client on a
    TLS port never gets an answer).
    """
    errors: list[str] = []
    admin = AdminClient(
        {
            "bootstrap.servers": bootstrap,
            "logger": log,
            "error_cb": lambda err: errors.append(err.str()),
            **config,
        }
    )
    deadline = time.monotonic() + _REFUSAL_WAIT_S
    while True:
        try:
            admin.list_topics(timeout=0.5)
            return None
        except KafkaException as exc:
            admin.poll(0)  # serves error_cb
            specific = [e for e in errors if "brokers are down" not in e]
            if specific:
                return specific[0]
            if time.monotonic() >= deadline:
                err = exc.args[0]
                return err.str() if isinstance(err, KafkaError) else str(exc)


def _settings(bootstrap: str, tmp_path: Path, **sections: dict) -> Settings:
    tag = uuid.uuid4().hex[:8]
    base: dict = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "group_id": f"tls-{tag}",
            "session_timeout_s": 6.0,
            "heartbeat_interval_s": 0.5,
        },
        "topics": {"events": f"ev-{tag}", "predictions": f"pred-{tag}", "dlq": f"dlq-{tag}", "partitions": 4},
        "worker_name": f"tls-{tag}",
        "data_dir": tmp_path / "data",
    }
    for name, values in sections.items():
        base[name] = base.get(name, {}) | values
    return Settings.model_validate(base)


def _run_events(settings: Settings, config: dict[str, str], workers: StartWorker, count: int) -> None:
    """Start a worker, send ``count`` events; every id is answered exactly once, none dead-lettered.

    ``config`` is the test clients' security (topic admin, producer, reader).
    """
    t = settings.topics
    bootstrap = settings.kafka.bootstrap_servers
    create_topics(bootstrap, {t.events: 4, t.predictions: 4, t.dlq: 4}, client_config=config)
    workers(settings)
    events = list(generate(load_profiles(MODEL_REPOSITORY), count, seed=5, prefix="tls"))
    sent = produce_all(
        {"bootstrap.servers": bootstrap, **config}, t.events, ((e.value, e.key) for e in events)
    )
    assert sent == count
    out = collect(
        bootstrap,
        [t.predictions, t.dlq],
        lambda got: len(got[t.predictions]) + len(got[t.dlq]) >= count,
        timeout=120,
        settle=1.0,
        client_config=config,
    )
    assert not out[t.dlq], out[t.dlq][:3]
    ids = sorted(orjson.loads(m.value or b"")["id"] for m in out[t.predictions])
    assert ids == sorted(e.id for e in events), f"{len(ids)} predictions for {count} events"


def test_worker_processes_events_over_mutual_tls_on_kafkas_ssl_listener(
    secure_broker: KafkaBroker,
    tls_files: TlsFiles,
    triton: TritonProcess,
    workers: StartWorker,
    tmp_path: Path,
) -> None:
    bootstrap = ssl_bootstrap(secure_broker)
    settings = _settings(
        bootstrap,
        tmp_path,
        kafka={
            "security_protocol": "SSL",
            "ssl_cafile": tls_files.ca,
            "ssl_certfile": tls_files.client_cert,
            "ssl_keyfile": tls_files.client_key,
            "ssl_key_password": tls_files.client_key_password,
        },
        triton={"url": triton.grpc_url, "http_url": triton.http_url},
    )
    _run_events(settings, mtls_client(tls_files), workers, TLS_EVENTS)


def test_ssl_listener_refuses_clients_without_tls_the_ca_or_a_trusted_client_certificate(
    secure_broker: KafkaBroker, tls_files: TlsFiles, tmp_path: Path
) -> None:
    bootstrap = ssl_bootstrap(secure_broker)
    stranger = make_tls_files(tmp_path / "other-ca")  # a client certificate from another CA
    no_cert = {"security.protocol": "SSL", "ssl.ca.location": str(tls_files.ca)}
    foreign_cert = mtls_client(tls_files) | {
        "ssl.certificate.location": str(stranger.client_cert),
        "ssl.key.location": str(stranger.client_key),
    }

    assert refusal(bootstrap, mtls_client(tls_files)) is None, "the trusted mTLS client was refused"
    assert refusal(bootstrap, {}) is not None, "a plaintext client was served"
    no_ca = refusal(bootstrap, {"security.protocol": "SSL"})
    assert no_ca is not None and "certificate verify failed" in no_ca, no_ca
    without = refusal(bootstrap, no_cert)
    assert without is not None and ("bad certificate" in without or "certificate required" in without), (
        without
    )
    foreign = refusal(bootstrap, foreign_cert)
    assert foreign is not None and "certificate unknown" in foreign, foreign


def test_worker_processes_events_over_sasl_ssl_with_scram_sha_512(
    secure_broker: KafkaBroker,
    tls_files: TlsFiles,
    triton: TritonProcess,
    workers: StartWorker,
    tmp_path: Path,
) -> None:
    user, password = new_scram_user(secure_broker)
    settings = _settings(
        secure_broker.bootstrap,
        tmp_path,
        kafka={
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": SCRAM,
            "sasl_username": user,
            "sasl_password": password,
            "ssl_cafile": tls_files.ca,
        },
        triton={"url": triton.grpc_url, "http_url": triton.http_url},
    )
    _run_events(settings, scram_client(tls_files, user, password), workers, SCRAM_EVENTS)


def test_sasl_ssl_listener_refuses_plaintext_wrong_password_and_other_mechanisms(
    secure_broker: KafkaBroker, tls_files: TlsFiles
) -> None:
    bootstrap = secure_broker.bootstrap
    user, password = new_scram_user(secure_broker)
    good = scram_client(tls_files, user, password)

    assert refusal(bootstrap, good) is None, "the SCRAM-SHA-512 user was refused"
    assert refusal(bootstrap, {}) is not None, "a plaintext client was served"
    tls_only = refusal(bootstrap, {"security.protocol": "SSL", "ssl.ca.location": str(tls_files.ca)})
    assert tls_only is not None, "a client without SASL was served"
    wrong = refusal(bootstrap, good | {"sasl.password": f"not-{password}"})
    assert wrong is not None and f"invalid credentials with SASL mechanism {SCRAM}" in wrong, wrong
    unknown = refusal(bootstrap, scram_client(tls_files, f"nobody-{user}", password))
    assert unknown is not None and "invalid credentials" in unknown, unknown
    for mechanism in ("PLAIN", "SCRAM-SHA-256"):
        other = refusal(bootstrap, good | {"sasl.mechanism": mechanism})
        assert other is not None and "Unsupported SASL mechanism" in other, (mechanism, other)


def test_worker_reaches_triton_over_grpc_tls(
    broker: KafkaBroker, tls_files: TlsFiles, workers: StartWorker, tmp_path: Path
) -> None:
    repo = copy_model_repository(MODEL_REPOSITORY, tmp_path / "triton")
    triton = start_triton(
        repo,
        tmp_path / "triton",
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        timeout=180,
        extra_args=[
            "--grpc-use-ssl=true",
            f"--grpc-server-cert={tls_files.server_chain}",
            f"--grpc-server-key={tls_files.server_key}",
        ],
    )
    try:
        settings = _settings(
            broker.bootstrap,
            tmp_path,
            triton={
                "url": f"localhost:{triton.grpc_port}",
                "http_url": triton.http_url,
                "ssl": True,
                "root_certificates": tls_files.ca,
            },
        )
        _run_events(settings, {}, workers, TLS_EVENTS)
    finally:
        triton.stop()
