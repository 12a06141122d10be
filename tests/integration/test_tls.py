"""The pipeline over TLS: to Kafka (mutual TLS, encrypted client key) and to Triton's gRPC.

Kafka: a throwaway CA signs a server certificate (127.0.0.1) and a client
certificate. tansu 0.6.0 cannot serve TLS itself (see tls_front.py), so a TLS
front requiring client certificates sits before it and is the only address
tansu advertises. The worker's clients - the Faust/aiokafka consumer and
producer, the confluent producer of outputs, the start-up broker probe - all
connect with ``SIE_KAFKA__SECURITY_PROTOCOL=SSL`` and the CA, certificate, key
and key password from settings. Clients without TLS, without the CA or
without a client certificate are refused.

Triton: a tritonserver with ``--grpc-use-ssl`` and a worker with
``SIE_TRITON__SSL=true`` and the CA as root certificate.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from engine.embedded import BrokerProcess, create_topics, free_port, start_broker, start_triton
from engine.eventgen import generate, load_profiles
from engine.kafka_tools import produce_all
from engine.settings import Settings
from engine.stack import copy_model_repository
from tests.integration.conftest import MODEL_REPOSITORY, StartWorker
from tests.integration.kafka import collect
from tests.integration.tls_certs import TlsFiles, make_tls_files
from tests.integration.tls_front import TlsFront

pytestmark = pytest.mark.integration

EVENTS = 2_000


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    return make_tls_files(tmp_path / "pki")


@pytest.fixture
def tls_broker(tmp_path: Path, tls_files: TlsFiles) -> Iterator[TlsFront]:
    """A tansu broker reachable only through a mutual-TLS front (its advertised address)."""
    internal, port = free_port(), free_port()
    broker: BrokerProcess = start_broker(internal, tmp_path, advertised_port=port)
    front = TlsFront(
        port,
        ("127.0.0.1", internal),
        cert_chain=tls_files.server_chain,
        key=tls_files.server_key,
        client_ca=tls_files.ca,
    ).start()
    yield front
    front.stop()
    broker.stop()


def client_tls(files: TlsFiles) -> dict[str, str]:
    """librdkafka settings of a client trusted by the front."""
    return {
        "security.protocol": "SSL",
        "ssl.ca.location": str(files.ca),
        "ssl.certificate.location": str(files.client_cert),
        "ssl.key.location": str(files.client_key),
        "ssl.key.password": files.client_key_password,
    }


def _refused(bootstrap: str, config: dict[str, str]) -> bool:
    try:
        AdminClient({"bootstrap.servers": bootstrap, **config}).list_topics(timeout=4)
    except KafkaException:
        return True
    return False


def _run_events(settings: Settings, config: dict[str, str], workers: StartWorker) -> list[str]:
    """Start a worker, send EVENTS events, return the ids of the predictions read back."""
    t = settings.topics
    bootstrap = settings.kafka.bootstrap_servers
    create_topics(bootstrap, {t.events: 4, t.predictions: 4, t.dlq: 4}, client_config=config)
    workers(settings)
    events = list(generate(load_profiles(MODEL_REPOSITORY), EVENTS, seed=5, prefix="tls"))
    produce_all({"bootstrap.servers": bootstrap, **config}, t.events, ((e.value, e.key) for e in events))
    out = collect(
        bootstrap,
        [t.predictions, t.dlq],
        lambda got: len(got[t.predictions]) + len(got[t.dlq]) >= EVENTS,
        timeout=120,
        settle=1.0,
        client_config=config,
    )
    assert not out[t.dlq], out[t.dlq][:3]
    return sorted(orjson.loads(m.value or b"")["id"] for m in out[t.predictions])


def _settings(bootstrap: str, tmp_path: Path, **sections: dict) -> Settings:
    tag = uuid.uuid4().hex[:8]
    base: dict = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "group_id": f"tls-{tag}",
            "session_timeout_s": 6.0,
            "heartbeat_interval_s": 0.5,
            "fetch_max_wait_ms": 5,
        },
        "topics": {"events": f"ev-{tag}", "predictions": f"pred-{tag}", "dlq": f"dlq-{tag}", "partitions": 4},
        "worker_name": f"tls-{tag}",
        "data_dir": tmp_path / "data",
    }
    for name, values in sections.items():
        base[name] = base.get(name, {}) | values
    return Settings.model_validate(base)


def test_pipeline_runs_over_mutual_tls_to_kafka_and_plaintext_clients_are_refused(
    tls_broker: TlsFront, tls_files: TlsFiles, triton, workers: StartWorker, tmp_path: Path
) -> None:
    settings = _settings(
        tls_broker.bootstrap,
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
    ids = _run_events(settings, client_tls(tls_files), workers)
    assert len(ids) == EVENTS and len(set(ids)) == EVENTS

    assert not _refused(tls_broker.bootstrap, client_tls(tls_files))
    assert _refused(tls_broker.bootstrap, {}), "a plaintext client was served"
    assert _refused(tls_broker.bootstrap, {"security.protocol": "SSL"}), "a client not trusting the CA got in"
    no_cert = {"security.protocol": "SSL", "ssl.ca.location": str(tls_files.ca)}
    assert _refused(tls_broker.bootstrap, no_cert), "a client without a certificate got in"


def test_worker_reaches_triton_over_grpc_tls(
    broker: BrokerProcess, tls_files: TlsFiles, workers: StartWorker, tmp_path: Path
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
        ids = _run_events(settings, {}, workers)
    finally:
        triton.stop()
    assert len(ids) == EVENTS and len(set(ids)) == EVENTS
