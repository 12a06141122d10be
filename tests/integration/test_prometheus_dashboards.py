"""Every dashboard panel's PromQL returns data from a real Prometheus scraping a live worker and Triton.

A ``prometheus`` server (Debian package ``prometheus``) scrapes a worker and the
session's tritonserver every second, with the alert rules loaded, while a few
thousand events (some malformed, so dead-letter series exist) go through. Then
each panel's queries run through the HTTP API over the run's time range with
Grafana's variables substituted; a panel whose queries return no sample fails
the test by name.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.settings import RoutingSettings, Settings
from ops.embedded import ManagedProcess, TritonProcess, create_topics, free_port
from ops.eventgen import generate, load_profiles
from tests.integration.conftest import MODEL_REPOSITORY, REPO, StartWorker
from tests.integration.kafka import collect, produce

pytestmark = pytest.mark.integration

DASHBOARD = REPO / "observability" / "grafana" / "dashboards" / "sie.json"
ALERTS = REPO / "observability" / "prometheus" / "alerts.yml"
PROMETHEUS = shutil.which("prometheus")
VALID = 3000
MALFORMED = 60
# Grafana's built-in variables and the dashboard's own, as a 1 s scrape interval makes them.
VARIABLES = {"$__rate_interval": "15s", "$__interval": "5s", "$__range": "5m", "$model": ".*"}


class Prometheus:
    """The HTTP API of a running server."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, **params: Any) -> Any:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                body = json.load(response)
        except urllib.error.HTTPError as err:
            body = json.load(err)
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base}/-/ready", timeout=2) as response:
                return int(response.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    def targets_up(self) -> dict[str, str]:
        active = self.get("/api/v1/targets", state="active")["activeTargets"]
        return {t["labels"]["job"]: t["health"] for t in active}


def scrape_config(worker_ports: list[int], triton: TritonProcess) -> dict[str, Any]:
    """The compose scrape jobs' names, pointed at the local workers and Triton, every second."""
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {
                "job_name": "sie-workers",
                "static_configs": [{"targets": [f"127.0.0.1:{port}" for port in worker_ports]}],
            },
            {"job_name": "triton", "static_configs": [{"targets": [f"127.0.0.1:{triton.metrics_port}"]}]},
        ],
    }


@pytest.fixture
def start_prometheus(tmp_path: Path) -> Iterator[Any]:
    if PROMETHEUS is None:
        pytest.skip("prometheus not installed (Debian package `prometheus`: apt-get install -y prometheus)")
    started: list[ManagedProcess] = []

    def start(config: dict[str, Any]) -> Prometheus:
        config_path = tmp_path / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        port = free_port()
        process = ManagedProcess(
            name="prometheus",
            argv=(
                str(PROMETHEUS),
                f"--config.file={config_path}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ),
            env={},
            log_path=tmp_path / "prometheus.log",
        )
        started.append(process)
        api = Prometheus(port)
        process.wait_ready(api.ready, timeout=60)
        return api

    yield start
    for process in started:
        process.stop()


def dashboard_queries() -> dict[str, list[str]]:
    """Panel title -> its PromQL expressions, Grafana variables substituted."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    out: dict[str, list[str]] = {}
    for panel in panels:
        exprs = [t["expr"] for t in panel.get("targets", []) if t.get("expr")]
        if exprs:
            out[panel["title"]] = [substitute(e) for e in exprs]
    return out


def substitute(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    left = re.findall(r"\$\w+", expr)
    assert not left, f"unknown variables {left} in {expr}"
    return expr


def _exactly_once(settings: Settings) -> Settings:
    """``settings`` under exactly-once, on topics and a group of its own (created)."""
    t = settings.topics
    topics = t.model_copy(update={n: f"{getattr(t, n)}-eos" for n in ("events", "predictions", "dlq")})
    kafka = settings.kafka.model_copy(
        update={"processing_guarantee": "exactly_once", "group_id": f"{settings.kafka.group_id}-eos"}
    )
    create_topics(kafka.bootstrap_servers, {topics.events: 4, topics.predictions: 4, topics.dlq: 4})
    return settings.model_copy(
        update={"topics": topics, "kafka": kafka, "worker_name": f"{settings.worker_name}-eos"}
    )


def _records() -> list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]:
    events = generate(load_profiles(MODEL_REPOSITORY), VALID, seed=5, keys=40)
    records: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]] = [
        (e.key, e.value, []) for e in events
    ]
    malformed = [
        b"{not json",
        b'{"id": "x", "features": [1, 2]}',
        b'{"id": "y", "model": "nope", "features": []}',
    ]
    for n in range(MALFORMED):
        records.insert(n * (VALID // MALFORMED), (b"bad", malformed[n % len(malformed)], []))
    return records


def _scalar(api: Prometheus, expr: str) -> float:
    result = api.get("/api/v1/query", query=expr)["result"]
    return float(result[0]["value"][1]) if result else math.nan


def _wait_for(api: Prometheus, expr: str, expected: float, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    value = _scalar(api, expr)
    while value != expected and time.monotonic() < deadline:
        time.sleep(1)
        value = _scalar(api, expr)
    return value


def test_every_dashboard_panel_returns_data_from_a_live_worker_and_triton(
    stack_settings: Settings, workers: StartWorker, triton: TritonProcess, start_prometheus: Any
) -> None:
    # breast_cancer shadowed by its ONNX export: the shadow agreement panel has data too.
    shadow_topic = f"{stack_settings.topics.events}.shadow"
    create_topics(stack_settings.kafka.bootstrap_servers, {shadow_topic: 1})
    shadows = {"breast_cancer": [{"model": "breast_cancer_onnx"}]}
    routing = RoutingSettings.model_validate({"shadows": shadows, "shadow_topic": shadow_topic})
    worker = workers(stack_settings.model_copy(update={"routing": routing}))
    # The exactly-once panels need a worker under that guarantee: one of its own, on its own topics.
    eos = workers(_exactly_once(stack_settings))
    api = start_prometheus(scrape_config([worker.settings.metrics_port, eos.settings.metrics_port], triton))
    deadline = time.monotonic() + 60
    while api.targets_up() != {"sie-workers": "up", "triton": "up"} and time.monotonic() < deadline:
        time.sleep(1)
    assert api.targets_up() == {"sie-workers": "up", "triton": "up"}

    started = time.time()
    t, e = stack_settings.topics, eos.settings.topics
    produce(stack_settings.kafka.bootstrap_servers, e.events, _records()[:200])
    produce(stack_settings.kafka.bootstrap_servers, t.events, _records())
    out = collect(
        stack_settings.kafka.bootstrap_servers,
        [t.predictions, t.dlq],
        done=lambda got: len(got[t.predictions]) >= VALID and len(got[t.dlq]) >= MALFORMED,
        timeout=240,
    )
    assert (len(out[t.predictions]), len(out[t.dlq])) == (VALID, MALFORMED)
    # The counters as Prometheus scraped them agree with what reached the topics.
    mine = f'instance="127.0.0.1:{worker.settings.metrics_port}"'
    assert _wait_for(api, f"sum(sie_predictions_total{{{mine}}})", VALID, timeout=30) == VALID
    assert _wait_for(api, f"sum(sie_dead_letters_total{{{mine}}})", MALFORMED, timeout=30) == MALFORMED
    assert _scalar(api, f"sum(sie_events_consumed_total{{{mine}}})") == VALID + MALFORMED
    time.sleep(3)  # a few more scrapes: gauges (lag, in flight) settle

    empty = []
    for title, exprs in dashboard_queries().items():
        samples = 0
        for expr in exprs:
            result = api.get(
                "/api/v1/query_range", query=expr, start=started - 5, end=time.time(), step="1s"
            )["result"]
            samples += sum(1 for series in result for _, v in series["values"] if not math.isnan(float(v)))
        if samples == 0:
            empty.append(title)
    assert empty == [], f"dashboard panels with no data: {empty}"
