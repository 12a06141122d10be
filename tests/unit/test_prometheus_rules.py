"""Prometheus config and alert rules: promtool checks them and runs their unit tests.

promtool comes with the Debian package ``prometheus`` (``apt-get install -y prometheus``).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "observability" / "prometheus"
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (Debian package `prometheus`: apt-get install -y prometheus)",
)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120, cwd=PROMETHEUS_DIR)


def alert_names() -> set[str]:
    doc = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    return {rule["alert"] for group in doc["groups"] for rule in group["rules"] if "alert" in rule}


@needs_promtool
def test_promtool_accepts_the_scrape_config() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_accepts_the_alert_rules() -> None:
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
@pytest.mark.parametrize("rule_test", RULE_TESTS, ids=lambda p: p.stem)
def test_alert_rule_unit_tests_pass(rule_test: Path) -> None:
    result = promtool("test", "rules", str(rule_test))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        for group in yaml.safe_load(path.read_text())["tests"]:
            for case in group.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = alert_names()
    assert names, "no alerts found"
    assert names - firing == set(), "alerts never shown firing"
    assert names - quiet == set(), "alerts never shown quiet"


def test_scrape_config_finds_workers_by_dns_and_scrapes_triton() -> None:
    doc = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in doc["scrape_configs"]}
    assert jobs["sie-workers"]["dns_sd_configs"] == [
        {"names": ["worker"], "type": "A", "port": 9300, "refresh_interval": "15s"}
    ]
    assert jobs["triton"]["static_configs"] == [{"targets": ["triton:8002"]}]
    assert doc["rule_files"] == ["alerts.yml"]
