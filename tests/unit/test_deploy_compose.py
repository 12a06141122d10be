"""Static checks of docker-compose.yml and its CPU override (no Docker engine needed)."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.unit.deploy_support import (
    MODEL_REPOSITORY,
    REPO,
    created_topics,
    env_mapping,
    host_port,
    interpolate,
    load_compose,
    merge_compose,
    model_names,
    run_topic_script,
    settings_env_names,
    settings_from_env,
)

COMPOSE = REPO / "docker-compose.yml"
CPU_OVERRIDE = REPO / "docker-compose.cpu.yml"
# The Compose Specification's JSON schema, in the shared folder beside the checkout
# (or inside it, where a checkout carries its own shared/).
SCHEMA_CANDIDATES = [d / "shared" / "schemas" / "compose-spec.json" for d in (REPO.parent, REPO)]
SCHEMA = next((p for p in SCHEMA_CANDIDATES if p.is_file()), SCHEMA_CANDIDATES[0])
PROMETHEUS = REPO / "observability" / "prometheus" / "prometheus.yml"
GRAFANA_PROVISIONING = REPO / "observability" / "grafana" / "provisioning"
REQUIRED_SERVICES = {"kafka", "triton", "worker", "prometheus", "grafana", "otel-collector", "jaeger"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose(COMPOSE)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    """Services with variables interpolated from an empty environment (the defaults)."""
    return interpolate(compose["services"])


@pytest.fixture(scope="module")
def worker_env(services: dict[str, Any]) -> dict[str, str]:
    return env_mapping(services["worker"]["environment"])


def validate(document: dict[str, Any]) -> None:
    """Validate against the Compose Specification JSON schema (draft-07)."""
    if not SCHEMA.is_file():
        pytest.skip(f"Compose Specification schema not found at {SCHEMA}")
    spec = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(spec)
    jsonschema.Draft7Validator(spec).validate(document)


def container_ports(service: dict[str, Any]) -> set[int]:
    """Ports a service's containers listen on, as declared by ``expose`` and ``ports``."""
    ports = {int(str(p).split("/")[0]) for p in service.get("expose", [])}
    for entry in service.get("ports", []):
        target = entry["target"] if isinstance(entry, dict) else str(entry).split(":")[-1].split("/")[0]
        ports.add(int(target))
    return ports


def bind_sources(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(host path, container path, read-only) of each bind mount of a service."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                mounts.append((volume["source"], volume["target"], bool(volume.get("read_only"))))
            continue
        parts = volume.split(":")
        if parts[0].startswith((".", "/")):
            mounts.append((parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
    return mounts


def test_compose_file_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    validate(compose)


def test_cpu_override_matches_the_compose_specification() -> None:
    validate(load_compose(CPU_OVERRIDE))


def test_stack_has_every_service_the_observability_contract_names(services: dict[str, Any]) -> None:
    assert set(services) >= REQUIRED_SERVICES


def test_every_mounted_or_built_path_exists(services: dict[str, Any]) -> None:
    checked = []
    for name, service in services.items():
        for source, _target, _ro in bind_sources(service):
            assert (REPO / source).exists(), f"{name} mounts missing {source}"
            checked.append(source)
        build = service.get("build")
        if build is not None:
            context = REPO / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            assert (context / dockerfile).is_file(), f"{name} builds from missing {dockerfile}"
            checked.append(dockerfile)
    assert "./model_repository" in checked and "Dockerfile" in checked


def test_worker_env_names_exist_in_the_settings(worker_env: dict[str, str]) -> None:
    sie_names = {k for k in worker_env if k.startswith("SIE_")}
    assert sie_names, "the worker is configured through SIE_* variables"
    assert sie_names <= settings_env_names(), sie_names - settings_env_names()
    assert set(worker_env) == sie_names, "the worker reads nothing but SIE_* variables"


def test_worker_env_values_build_valid_settings(worker_env: dict[str, str]) -> None:
    settings = settings_from_env(worker_env)
    assert settings.kafka.bootstrap_servers == worker_env["SIE_KAFKA__BOOTSTRAP_SERVERS"]
    assert settings.metrics_port == 9300


def test_worker_can_be_scaled_with_scale_flag(services: dict[str, Any]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker
    published = [p for p in worker.get("ports", []) if ":" in str(p) or isinstance(p, dict)]
    assert not published, "published host ports would collide between worker replicas"
    assert "build" in worker


def test_worker_port_is_its_metrics_port(services: dict[str, Any], worker_env: dict[str, str]) -> None:
    assert container_ports(services["worker"]) == {int(worker_env["SIE_METRICS_PORT"])}


def test_every_healthy_condition_waits_on_a_service_with_a_healthcheck(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for dep, cond in (service.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if cond.get("condition") == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}, which has no healthcheck"


def test_workers_start_after_kafka_topics_and_triton_are_ready(services: dict[str, Any]) -> None:
    deps = services["worker"]["depends_on"]
    assert deps["triton"]["condition"] == "service_healthy"
    job = next(n for n, d in deps.items() if d["condition"] == "service_completed_successfully")
    assert services[job]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services[job].get("restart") == "no"


def test_topic_job_creates_the_worker_topics_with_the_configured_partitions(
    services: dict[str, Any], worker_env: dict[str, str]
) -> None:
    job = env_mapping(services["kafka-init"]["environment"])
    expected = {worker_env[f"SIE_TOPICS__{t}"] for t in ("EVENTS", "PREDICTIONS", "DLQ")}
    assert set(job["TOPICS"].split()) == expected
    assert job["PARTITIONS"] == worker_env["SIE_TOPICS__PARTITIONS"]
    kafka = env_mapping(services["kafka"]["environment"])
    assert kafka["KAFKA_NUM_PARTITIONS"] == worker_env["SIE_TOPICS__PARTITIONS"]
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_topic_job_script_creates_each_topic_once_with_the_partitions(
    services: dict[str, Any], worker_env: dict[str, str], tmp_path: Path
) -> None:
    job = services["kafka-init"]
    assert job["entrypoint"] == ["/bin/bash", "-c"]
    calls = run_topic_script(job["command"][0], env_mapping(job["environment"]), tmp_path)
    topics = created_topics(calls)
    assert set(topics) == {worker_env[f"SIE_TOPICS__{t}"] for t in ("EVENTS", "PREDICTIONS", "DLQ")}
    for options in topics.values():
        assert options["--partitions"] == worker_env["SIE_TOPICS__PARTITIONS"]
        assert options["--bootstrap-server"] == worker_env["SIE_KAFKA__BOOTSTRAP_SERVERS"]
    assert all("--if-not-exists" in call for call in calls if "--create" in call)


def test_overriding_partitions_changes_topics_and_worker_together(compose: dict[str, Any]) -> None:
    services = interpolate(compose["services"], {"SIE_TOPICS__PARTITIONS": "16"})
    assert env_mapping(services["kafka-init"]["environment"])["PARTITIONS"] == "16"
    assert env_mapping(services["worker"]["environment"])["SIE_TOPICS__PARTITIONS"] == "16"


def test_kafka_runs_in_kraft_mode_with_a_valid_cluster_id(services: dict[str, Any]) -> None:
    kafka = env_mapping(services["kafka"]["environment"])
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert set(kafka["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    cluster_id = kafka["CLUSTER_ID"]
    raw = base64.urlsafe_b64decode(cluster_id + "==")
    assert len(raw) == 16 and base64.urlsafe_b64encode(raw).decode().rstrip("=") == cluster_id
    node, _, voter = kafka["KAFKA_CONTROLLER_QUORUM_VOTERS"].partition("@")
    assert node == kafka["KAFKA_NODE_ID"]
    listeners = dict(item.split("://") for item in kafka["KAFKA_LISTENERS"].split(","))
    assert host_port(voter) == ("kafka", host_port(listeners[kafka["KAFKA_CONTROLLER_LISTENER_NAMES"]])[1])


def test_worker_reaches_kafka_on_its_internal_listener(
    services: dict[str, Any], worker_env: dict[str, str]
) -> None:
    host, port = host_port(worker_env["SIE_KAFKA__BOOTSTRAP_SERVERS"])
    assert host == "kafka"
    kafka = env_mapping(services["kafka"]["environment"])
    advertised = dict(item.split("://") for item in kafka["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert advertised[kafka["KAFKA_INTER_BROKER_LISTENER_NAME"]] == f"kafka:{port}"
    assert port in container_ports(services["kafka"])


def test_worker_reaches_triton_grpc_and_http_ports(
    services: dict[str, Any], worker_env: dict[str, str]
) -> None:
    args = services["triton"]["command"]
    flags = dict(a.split("=", 1) for a in args if a.startswith("--") and "=" in a)
    assert host_port(worker_env["SIE_TRITON__URL"]) == ("triton", int(flags["--grpc-port"]))
    assert host_port(worker_env["SIE_TRITON__HTTP_URL"]) == ("triton", int(flags["--http-port"]))
    assert {int(flags[f"--{k}-port"]) for k in ("grpc", "http", "metrics")} <= container_ports(
        services["triton"]
    )


def test_triton_reserves_a_gpu_and_loads_each_model_explicitly(services: dict[str, Any]) -> None:
    triton = services["triton"]
    assert triton["image"].startswith("nvcr.io/nvidia/tritonserver:") and triton["image"].endswith("-py3")
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] and d.get("driver") == "nvidia" for d in devices)
    args = triton["command"]
    assert "--model-control-mode=explicit" in args
    assert {a.split("=", 1)[1] for a in args if a.startswith("--load-model=")} == model_names()
    repo = next(a.split("=", 1)[1] for a in args if a.startswith("--model-repository="))
    assert ("./model_repository", repo, True) in bind_sources(triton), "model repository mounted read-only"


def test_cpu_override_only_drops_the_gpu_reservation(compose: dict[str, Any]) -> None:
    override = load_compose(CPU_OVERRIDE)
    merged = merge_compose(compose, override)
    triton = merged["services"]["triton"]
    assert "devices" not in triton.get("deploy", {}).get("resources", {}).get("reservations", {})
    assert triton["command"] == compose["services"]["triton"]["command"]
    assert set(override["services"]) == {"triton"}
    validate(merged)


def test_traces_flow_from_worker_and_triton_through_the_collector_to_jaeger(
    services: dict[str, Any], worker_env: dict[str, str]
) -> None:
    collector = services["otel-collector"]
    config = _collector_config(collector)
    http = config["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    triton_url = next(a for a in services["triton"]["command"] if a.startswith("opentelemetry,url="))
    for url in (worker_env["SIE_OTLP_ENDPOINT"], triton_url.split("=", 1)[1]):
        host, port = host_port(url)
        assert host == "otel-collector" and port == host_port(http)[1]
        assert port in container_ports(collector)
    _check_collector_pipelines(config, services)


def _collector_config(collector: dict[str, Any]) -> dict[str, Any]:
    """The Collector's configuration: its ``--config`` files (mounted read-only), merged in order."""
    mounts = {target: (source, read_only) for source, target, read_only in bind_sources(collector)}
    files = [arg.split("=", 1)[1] for arg in collector["command"] if arg.startswith("--config=")]
    assert len(files) == 2 and all(mounts[f][1] for f in files), "pipeline + compose overlay, read-only"
    merged: dict[str, Any] = {}
    for target in files:
        _merge(merged, yaml.safe_load((REPO / mounts[target][0]).read_text()))
    return merged


def _merge(into: dict[str, Any], overlay: dict[str, Any]) -> None:
    """The Collector's merge of config files: maps key by key, anything else replaced."""
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _check_collector_pipelines(config: dict[str, Any], services: dict[str, Any]) -> None:
    traces = config["service"]["pipelines"]["traces"]
    for kind in ("receivers", "processors", "exporters"):
        assert set(traces[kind]) <= set(config[kind]), f"undefined {kind} in the traces pipeline"
    assert set(config["service"].get("extensions", [])) <= set(config.get("extensions", {}))
    for exporter in traces["exporters"]:
        host, port = host_port(config["exporters"][exporter]["endpoint"])
        assert host == "jaeger" and port in container_ports(services["jaeger"])


def _scrape_targets(config: dict[str, Any]) -> list[tuple[str, str, int]]:
    targets = []
    for job in config.get("scrape_configs", []):
        for static in job.get("static_configs", []):
            targets += [(job["job_name"], *host_port(t)) for t in static.get("targets", [])]
        for dns in job.get("dns_sd_configs", []):
            targets += [(job["job_name"], name, int(dns["port"])) for name in dns.get("names", [])]
    return targets


def test_every_port_prometheus_scrapes_matches_a_service(services: dict[str, Any]) -> None:
    if not PROMETHEUS.is_file():
        pytest.skip(f"{PROMETHEUS.relative_to(REPO)} not written yet (observability owns it)")
    prometheus = services["prometheus"]
    mounted = [(s, t) for s, t, _ in bind_sources(prometheus)]
    assert ("./observability/prometheus", "/etc/prometheus") in mounted
    targets = _scrape_targets(yaml.safe_load(PROMETHEUS.read_text()))
    assert targets, "Prometheus scrapes nothing"
    for job, host, port in targets:
        service = "prometheus" if host in ("localhost", "127.0.0.1") else host
        assert service in services, f"job {job} scrapes {host}, which is no compose service"
        assert port in container_ports(services[service]), f"job {job}: {service} does not listen on {port}"
    assert {host for _, host, _ in targets} >= {"worker", "triton"}


def test_grafana_provisioning_points_at_the_mounted_dashboards_and_prometheus(
    services: dict[str, Any],
) -> None:
    files = sorted(GRAFANA_PROVISIONING.glob("*/*.y*ml"))
    if not files:
        pytest.skip(f"{GRAFANA_PROVISIONING.relative_to(REPO)} not written yet (observability owns it)")
    mounts = {t: REPO / s for s, t, _ in bind_sources(services["grafana"])}
    assert mounts.get("/etc/grafana/provisioning") == GRAFANA_PROVISIONING
    for path in files:
        doc = yaml.safe_load(path.read_text()) or {}
        for provider in doc.get("providers", []):
            target = Path(provider["options"]["path"])
            host_dir = next(mounts[t] / target.relative_to(t) for t in mounts if target.is_relative_to(t))
            assert any(host_dir.glob("*.json")), f"{path.name}: no dashboards under {target}"
        for source in doc.get("datasources", []):
            host, port = host_port(source["url"])
            assert host in services and port in container_ports(services[host])


def test_every_variable_the_production_docs_name_is_a_setting() -> None:
    readme = (REPO / "README.md").read_text()
    start = readme.index("<!-- section:production -->")
    text = readme[start : readme.find("\n## ", start)] + (REPO / "docs" / "production.md").read_text()
    named = set(re.findall(r"\bSIE_[A-Z0-9_]*[A-Z0-9](?![A-Z0-9_*])", text))
    assert len(named) >= 10
    assert named <= settings_env_names(), named - settings_env_names()


def gpu_config_from_docs() -> str:
    """The ``config.pbtxt`` block that docs/models.md shows for GPU hosts (after ``<!-- gpu-config -->``)."""
    text = (REPO / "docs" / "models.md").read_text()
    block = re.search(r"<!-- gpu-config -->\s*```[a-z]*\n(.*?)```", text, re.DOTALL)
    assert block is not None, "docs/models.md lost its GPU config block"
    return block.group(1)


def test_compose_triton_serves_the_onnx_models_with_its_onnxruntime_backend(services: dict[str, Any]) -> None:
    from inference.repository import parse_config

    loaded = {a.split("=", 1)[1] for a in services["triton"]["command"] if a.startswith("--load-model=")}
    onnx_models = {m for m in loaded if m.endswith("_onnx")}
    assert onnx_models == {"breast_cancer_onnx", "iris_onnx", "seq_trend_onnx"}
    for name in onnx_models:
        config = parse_config(MODEL_REPOSITORY / name / "config.pbtxt")
        assert config.platform == "onnxruntime_onnx" and not config.backend  # the image's onnxruntime backend
        assert (MODEL_REPOSITORY / name / "1" / "model.onnx").is_file()


def test_documented_gpu_config_uses_kind_gpu_with_tensorrt_fp16_and_the_model_tensors(tmp_path: Path) -> None:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from inference.repository import parse_config, validate_model

    gpu = text_format.Parse(gpu_config_from_docs(), mc.ModelConfig())
    assert gpu.platform == "onnxruntime_onnx"
    assert [g.kind for g in gpu.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
    [accelerator] = gpu.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt" and dict(accelerator.parameters) == {"precision_mode": "FP16"}
    served = parse_config(MODEL_REPOSITORY / gpu.name / "config.pbtxt")
    for field in ("input", "output", "max_batch_size", "dynamic_batching"):
        assert getattr(gpu, field) == getattr(served, field), field
    # Dropped into a copy of the model, it validates against the committed graph.
    model_dir = tmp_path / gpu.name
    (model_dir / "1").mkdir(parents=True)
    shutil.copy(MODEL_REPOSITORY / gpu.name / "1" / "model.onnx", model_dir / "1" / "model.onnx")
    (model_dir / "config.pbtxt").write_text(gpu_config_from_docs())
    assert validate_model(model_dir) == []
