"""Drift: PSI of live windows against the models' training reference profiles, gauges, alert rule."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry

from engine.settings import DriftSettings
from model_repository import train
from model_repository.numpy_reference import load_reference
from models.drift import DRIFT_THRESHOLD, Bins, DriftMonitor, Reference, Window, load_references, psi
from models.hooks import ModelObserver, ServedVersions
from observability.metrics import create_metrics, create_model_metrics
from ops.eventgen import generate, load_profiles

REPO = Path(__file__).resolve().parents[2]
MODEL_REPOSITORY = REPO / "model_repository"
PROMETHEUS_DIR = REPO / "observability" / "prometheus"
SETTINGS = DriftSettings(reference_dir=MODEL_REPOSITORY, window=2000, min_samples=500, every=500)
MODELS = ("breast_cancer", "iris")


@pytest.fixture(scope="module")
def references() -> dict[str, Reference]:
    return load_references(MODEL_REPOSITORY)


def real_rows(model: str, n: int, seed: int) -> np.ndarray:
    """``n`` rows drawn from the model's own data set (train and test split), with replacement."""
    split = train.load_split(model)
    rows = np.concatenate([split.x_train, split.x_test])
    return rows[np.random.default_rng(seed).integers(0, len(rows), n)]


def feed(monitor: DriftMonitor, model: str, x: np.ndarray, batch: int = 128) -> None:
    forward = load_reference(MODEL_REPOSITORY / model)
    for i in range(0, len(x), batch):
        monitor.observe(model, x[i : i + batch], forward(x[i : i + batch]))


def test_psi_is_zero_for_equal_shares_and_grows_with_the_shift() -> None:
    ref = np.full(10, 0.1)
    assert psi(ref, ref) == 0.0
    moved = np.array([0.0, 0.0, 0.05, 0.05, 0.1, 0.1, 0.1, 0.2, 0.2, 0.2])
    assert psi(ref, moved) > psi(ref, (ref + moved) / 2) > 0


def test_tied_quantiles_merge_into_one_bin_with_their_share() -> None:
    levels = [round(0.1 * i, 1) for i in range(11)]
    quantiles = [0, 0, 0, 0, 0.5, 1, 2, 3, 4, 5, 9]  # 40% zeros
    bins = Bins.from_quantiles(levels, quantiles)
    assert list(bins.edges) == [0, 0.5, 1, 2, 3, 4, 5]
    assert bins.expected[0] == pytest.approx(0.3) and bins.expected.sum() == pytest.approx(1.0)
    live = np.array(
        [0.0] * 30 + [0.4] * 10 + [0.9] * 10 + [1.5] * 10 + [2.5] * 10 + [3.5] * 10 + [4.5] * 10 + [6.0] * 10
    )
    assert bins.psi(live) < 0.01


def test_window_keeps_only_the_latest_rows() -> None:
    window = Window(4, 1)
    window.add(np.arange(3.0).reshape(3, 1), np.array([0.1, 0.2, 0.3]))
    window.add(np.arange(3.0, 6.0).reshape(3, 1), None)
    assert len(window) == 4
    assert sorted(window.rows()[:, 0]) == [2.0, 3.0, 4.0, 5.0]
    assert sorted(window.scores()) == [0.3]


@pytest.mark.parametrize("model", MODELS)
def test_in_distribution_data_is_not_flagged(model: str, references: dict[str, Reference]) -> None:
    monitor = DriftMonitor(references, SETTINGS)
    feed(monitor, model, real_rows(model, 4000, seed=11))
    report = monitor.last[model]
    assert report.samples == 2000
    assert report.drifted() == [], report.features
    assert report.score is not None and report.score < DRIFT_THRESHOLD


@pytest.mark.parametrize("model", MODELS)
def test_events_shifted_by_two_standard_deviations_flag_every_feature(
    model: str, references: dict[str, Reference]
) -> None:
    monitor = DriftMonitor(references, SETTINGS)
    shifted = generate(load_profiles(MODEL_REPOSITORY, [model]), 2000, seed=3, shift=2.0)
    feed(monitor, model, np.stack([e.features for e in shifted]))
    report = monitor.last[model]
    assert sorted(report.drifted()) == sorted(references[model].feature_names)


def test_only_the_shifted_features_are_named(references: dict[str, Reference]) -> None:
    ref = references["breast_cancer"]
    moved = ("mean texture", "worst area")
    x = real_rows("breast_cancer", 2000, seed=5)
    for name in moved:
        i = ref.feature_names.index(name)
        x[:, i] += 2.0 * x[:, i].std()
    monitor = DriftMonitor(references, SETTINGS)
    feed(monitor, "breast_cancer", x)
    assert sorted(monitor.last["breast_cancer"].drifted()) == sorted(moved)


def test_no_report_before_min_samples_then_one_every_n_events(references: dict[str, Reference]) -> None:
    reports: list = []
    monitor = DriftMonitor(references, SETTINGS, on_report=reports.append)
    feed(monitor, "iris", real_rows("iris", 499, seed=1), batch=499)
    assert reports == []
    monitor = DriftMonitor(references, SETTINGS, on_report=reports.append)
    feed(monitor, "iris", real_rows("iris", 2000, seed=2), batch=100)
    assert [r.samples for r in reports] == [500, 1000, 1500, 2000]
    assert monitor.observe("unknown", np.zeros((5, 4)), None) is None
    assert monitor.observe("iris", np.zeros((5, 7)), None) is None  # not the profile's width


def shifted_gauges(references: dict[str, Reference]) -> tuple[CollectorRegistry, list[str]]:
    registry = CollectorRegistry()
    observer = ModelObserver(
        create_model_metrics(registry), ServedVersions(create_metrics(registry).model_version)
    )
    moved = ["mean radius", "smoothness error"]
    x = real_rows("breast_cancer", 2000, seed=8)
    for name in moved:
        i = references["breast_cancer"].feature_names.index(name)
        x[:, i] += 3.0 * x[:, i].std()
    feed(DriftMonitor(references, SETTINGS, on_report=observer.publish_drift), "breast_cancer", x)
    feed(
        DriftMonitor(references, SETTINGS, on_report=observer.publish_drift),
        "iris",
        real_rows("iris", 2000, 9),
    )
    return registry, moved


def test_reports_become_gauges_labelled_by_model_and_feature(references: dict[str, Reference]) -> None:
    registry, moved = shifted_gauges(references)

    def gauge(model: str, feature: str) -> float | None:
        return registry.get_sample_value("sie_drift_psi", {"model": model, "feature": feature})

    assert all(gauge("breast_cancer", f) > DRIFT_THRESHOLD for f in moved)  # type: ignore[operator]
    assert gauge("breast_cancer", "mean texture") < DRIFT_THRESHOLD  # type: ignore[operator]
    assert gauge("iris", "petal width (cm)") < DRIFT_THRESHOLD  # type: ignore[operator]
    assert registry.get_sample_value("sie_drift_window_events", {"model": "iris"}) >= SETTINGS.min_samples
    assert registry.get_sample_value("sie_drift_score_psi", {"model": "iris"}) is not None


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus)"
)
def test_the_drift_alert_fires_for_the_shifted_features_only(
    references: dict[str, Reference], tmp_path: Path
) -> None:
    """The worker's real gauge values, held for 10 minutes, through the real alert rule."""
    registry, moved = shifted_gauges(references)
    series = [
        {
            "series": f'sie_drift_psi{{model="{s.labels["model"]}",feature="{s.labels["feature"]}"}}',
            "values": f"{s.value:.6f}+0x10",
        }
        for family in registry.collect()
        if family.name == "sie_drift_psi"
        for s in family.samples
    ]
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    rule = next(r for g in rules["groups"] for r in g["rules"] if r.get("alert") == "SieInputDrift")

    def value(feature: str) -> float:
        got = registry.get_sample_value("sie_drift_psi", {"model": "breast_cancer", "feature": feature})
        assert got is not None
        return round(got, 6)  # as written to the input series

    expected = [
        {
            "exp_labels": {"severity": "ticket", "model": "breast_cancer", "feature": f},
            "exp_annotations": {
                "summary": f"Input drift on breast_cancer: feature {f} (PSI {value(f):.2f})",
                "description": rule["annotations"]["description"],
            },
        }
        for f in moved
    ]
    spec = {
        "rule_files": [str(PROMETHEUS_DIR / "alerts.yml")],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    {"eval_time": "10m", "alertname": "SieInputDrift", "exp_alerts": expected}
                ],
            }
        ],
    }
    path = tmp_path / "drift_from_worker.yml"
    path.write_text(yaml.safe_dump(spec))
    result = subprocess.run(
        ["promtool", "test", "rules", str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
