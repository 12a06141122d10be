"""Static checks of deploy/k8s/: required fields and the cross-references between manifests."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.deploy_support import (
    REPO,
    created_topics,
    dockerfile_instructions,
    host_port,
    load_compose,
    model_names,
    run_topic_script,
    settings_env_names,
    settings_from_env,
)

K8S = REPO / "deploy" / "k8s"
WORKER = "sie-worker"
Manifest = dict[str, Any]


def load_manifests() -> list[tuple[Path, Manifest]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [(path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


MANIFESTS = load_manifests()


def of_kind(kind: str) -> list[Manifest]:
    return [doc for _, doc in MANIFESTS if doc["kind"] == kind]


def named(kind: str, name: str) -> Manifest:
    (doc,) = [d for d in of_kind(kind) if d["metadata"]["name"] == name]
    return doc


def container(deployment: Manifest) -> dict[str, Any]:
    (first, *_) = deployment["spec"]["template"]["spec"]["containers"]
    return first


def resolve_port(cont: dict[str, Any], port: int | str) -> int:
    """A container port given by number or by name."""
    ports = {p.get("name"): p["containerPort"] for p in cont.get("ports", [])}
    if isinstance(port, str):
        assert port in ports, f"{cont['name']} has no port named {port}"
        return int(ports[port])
    assert port in ports.values(), f"{cont['name']} does not declare port {port}"
    return port


@pytest.fixture(scope="module")
def config() -> dict[str, str]:
    return named("ConfigMap", "sie-config")["data"]


def test_every_manifest_has_api_version_kind_and_name() -> None:
    assert len(MANIFESTS) >= 8
    for path, doc in MANIFESTS:
        assert doc.get("apiVersion") and doc.get("kind"), path.name
        assert doc.get("metadata", {}).get("name"), path.name
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "sie", f"{path.name}: namespace"


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    images = {i["name"] for i in kustomization.get("images", [])}
    assert container(named("Deployment", WORKER))["image"] in images, "worker image not set by kustomize"


def test_deployment_selectors_match_their_pod_labels() -> None:
    for deployment in of_kind("Deployment"):
        selector = deployment["spec"]["selector"]["matchLabels"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector and selector.items() <= labels.items(), deployment["metadata"]["name"]
        assert container(deployment).get("image"), deployment["metadata"]["name"]


def test_services_select_pods_and_target_declared_ports() -> None:
    deployments = of_kind("Deployment")
    for service in of_kind("Service"):
        selector = service["spec"]["selector"]
        targets = [
            d for d in deployments if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(targets) == 1, f"service {service['metadata']['name']} selects {len(targets)} deployments"
        for port in service["spec"]["ports"]:
            resolve_port(container(targets[0]), port.get("targetPort", port["port"]))


def test_worker_probes_hit_the_health_endpoints_on_the_metrics_port(config: dict[str, str]) -> None:
    worker = container(named("Deployment", WORKER))
    readiness, liveness = worker["readinessProbe"]["httpGet"], worker["livenessProbe"]["httpGet"]
    assert readiness["path"] == "/readyz" and liveness["path"] == "/healthz"
    metrics_port = int(config["SIE_METRICS_PORT"])
    assert resolve_port(worker, readiness["port"]) == metrics_port
    assert resolve_port(worker, liveness["port"]) == metrics_port


def test_worker_reads_its_settings_from_the_configmap() -> None:
    worker = container(named("Deployment", WORKER))
    refs = [s["configMapRef"]["name"] for s in worker["envFrom"] if "configMapRef" in s]
    assert refs == ["sie-config"]
    assert {e["name"] for e in worker.get("env", [])} <= settings_env_names()


def test_configmap_keys_are_settings_variables_with_valid_values(config: dict[str, str]) -> None:
    assert set(config) <= settings_env_names(), set(config) - settings_env_names()
    settings = settings_from_env(config)
    assert settings.topics.events == config["SIE_TOPICS__EVENTS"]


def test_worker_reaches_triton_through_its_service(config: dict[str, str]) -> None:
    service = named("Service", "triton")
    triton = container(named("Deployment", "triton"))
    ports = {p["port"]: resolve_port(triton, p["targetPort"]) for p in service["spec"]["ports"]}
    flags = dict(a.split("=", 1) for a in triton["args"] if a.startswith("--") and "=" in a)
    for key, flag in (("SIE_TRITON__URL", "--grpc-port"), ("SIE_TRITON__HTTP_URL", "--http-port")):
        host, port = host_port(config[key])
        assert host == service["metadata"]["name"]
        assert ports[port] == int(flags[flag])


def test_triton_requests_a_gpu_and_loads_each_model_explicitly() -> None:
    triton = container(named("Deployment", "triton"))
    assert int(triton["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert "--model-control-mode=explicit" in triton["args"]
    assert {a.split("=", 1)[1] for a in triton["args"] if a.startswith("--load-model=")} == model_names()
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        resolve_port(triton, triton[probe]["httpGet"]["port"])
    repo = next(a.split("=", 1)[1] for a in triton["args"] if a.startswith("--model-repository="))
    mount = next(m for m in triton["volumeMounts"] if m["mountPath"] == repo)
    assert mount.get("readOnly") is True
    volumes = named("Deployment", "triton")["spec"]["template"]["spec"]["volumes"]
    volume = next(v for v in volumes if v["name"] == mount["name"])
    named("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])


def test_compose_and_kubernetes_run_the_same_triton_and_models() -> None:
    compose = load_compose(REPO / "docker-compose.yml")["services"]["triton"]
    triton = container(named("Deployment", "triton"))
    assert compose["image"] == triton["image"]
    loads = {a for a in triton["args"] if a.startswith("--load-model=")}
    assert loads == {a for a in compose["command"] if a.startswith("--load-model=")}


def test_scaled_object_scales_the_worker_deployment_on_consumer_group_lag(config: dict[str, str]) -> None:
    scaled = named("ScaledObject", WORKER)
    assert scaled["apiVersion"].startswith("keda.sh/")
    target = scaled["spec"]["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment"
    named("Deployment", target["name"])
    (trigger,) = scaled["spec"]["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka"
    assert meta["bootstrapServers"] == config["SIE_KAFKA__BOOTSTRAP_SERVERS"]
    assert meta["consumerGroup"] == config["SIE_KAFKA__GROUP_ID"]
    assert meta["topic"] == config["SIE_TOPICS__EVENTS"]
    assert int(meta["lagThreshold"]) > 0


def test_max_replicas_equal_the_partition_count(config: dict[str, str]) -> None:
    spec = named("ScaledObject", WORKER)["spec"]
    partitions = int(config["SIE_TOPICS__PARTITIONS"])
    assert spec["maxReplicaCount"] == partitions
    assert 1 <= spec["minReplicaCount"] <= partitions
    assert named("Deployment", WORKER)["spec"]["replicas"] <= partitions


def test_topic_job_creates_the_configured_topics_and_partitions(
    config: dict[str, str], tmp_path: Path
) -> None:
    (job,) = of_kind("Job")
    cont = job["spec"]["template"]["spec"]["containers"][0]
    assert {"configMapRef": {"name": "sie-config"}} in cont["envFrom"]
    assert cont["command"] == ["/bin/bash", "-c"]
    env = config | {e["name"]: e["value"] for e in cont.get("env", [])}
    topics = created_topics(run_topic_script(cont["args"][0], env, tmp_path))
    assert set(topics) == {config[f"SIE_TOPICS__{t}"] for t in ("EVENTS", "PREDICTIONS", "DLQ")}
    for options in topics.values():
        assert options["--partitions"] == config["SIE_TOPICS__PARTITIONS"]
        assert options["--bootstrap-server"] == config["SIE_KAFKA__BOOTSTRAP_SERVERS"]


def test_worker_rollout_never_adds_a_consumer_beyond_the_partitions() -> None:
    strategy = named("Deployment", WORKER)["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxSurge"] == 0


def test_worker_runs_unprivileged_and_drains_before_it_is_killed() -> None:
    pod = named("Deployment", WORKER)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    runs = " ".join(args for kw, args in dockerfile_instructions(REPO / "Dockerfile") if kw == "RUN")
    image_uid = re.search(r"useradd\b[^&;]*--uid\s+(\d+)", runs)
    assert image_uid, "the image creates its user without --uid"
    assert pod["securityContext"]["runAsUser"] == int(image_uid[1])
    assert pod["terminationGracePeriodSeconds"] >= 40
    data_dir = named("ConfigMap", "sie-config")["data"]["SIE_DATA_DIR"]
    assert data_dir in {m["mountPath"] for m in container(named("Deployment", WORKER))["volumeMounts"]}
