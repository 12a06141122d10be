"""model_repository/train.py: accurate on held-out data, and reproducible (figures within float tolerance)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
MODEL_REPOSITORY = REPO / "model_repository"
MODELS = ("breast_cancer", "iris")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("trained")
    result = subprocess.run(
        [sys.executable, str(MODEL_REPOSITORY / "train.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    return out, result.stdout


@pytest.mark.parametrize("model", MODELS)
def test_held_out_accuracy_is_at_least_ninety_percent(trained: tuple[Path, str], model: str) -> None:
    out, stdout = trained
    metrics = json.loads((out / model / "1" / "metrics.json").read_text())
    assert metrics["model"] == model and metrics["n_test"] > 0
    assert metrics["test_accuracy"] >= 0.9
    printed = re.search(rf"^{model}: held-out accuracy ([0-9.]+)$", stdout, re.MULTILINE)
    assert printed is not None and float(printed.group(1)) == pytest.approx(
        metrics["test_accuracy"], abs=1e-4
    )


@pytest.mark.parametrize("model", MODELS)
def test_retraining_reproduces_the_committed_weights_exactly(trained: tuple[Path, str], model: str) -> None:
    out, _ = trained
    with (
        np.load(out / model / "1" / "weights.npz") as new,
        np.load(MODEL_REPOSITORY / model / "1" / "weights.npz") as committed,
    ):
        assert new.files == committed.files
        for key in committed.files:
            assert new[key].dtype == committed[key].dtype
            np.testing.assert_array_equal(new[key], committed[key], err_msg=f"{model} {key}")


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("name", ["config.pbtxt", "1/model.py"])
def test_retraining_reproduces_every_committed_text_file_exactly(
    trained: tuple[Path, str], model: str, name: str
) -> None:
    out, _ = trained
    assert (out / model / name).read_text() == (MODEL_REPOSITORY / model / name).read_text()


def _approx_tree(value: Any) -> Any:
    """``value`` with every float wrapped in ``pytest.approx`` (sums differ across CPUs and BLAS)."""
    if isinstance(value, dict):
        return {k: _approx_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_approx_tree(v) for v in value]
    if isinstance(value, float):
        return pytest.approx(value, rel=1e-6, abs=1e-9)
    return value


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("name", ["reference_profile.json", "1/metrics.json"])
def test_retraining_reproduces_every_committed_figure_within_float_tolerance(
    trained: tuple[Path, str], model: str, name: str
) -> None:
    out, _ = trained
    new = json.loads((out / model / name).read_text())
    committed = json.loads((MODEL_REPOSITORY / model / name).read_text())
    assert new == _approx_tree(committed)
