"""The training data: scikit-learn's bundled sets on a fixed split, and ``seq_trend``'s sequences.

Shared by ``train.py`` (fitting, held-out accuracy) and ``onnx_export.py`` (calibration inputs);
everything is seeded, so both see the same rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.datasets import load_breast_cancer, load_iris
from sklearn.model_selection import train_test_split

SPLIT_SEED = 42
TEST_SIZE = 0.25
MAX_BATCH_SIZE = 256  # the max_batch_size of every model config written from these sets

LOADERS: dict[str, Callable[..., Any]] = {
    "breast_cancer": load_breast_cancer,
    "iris": load_iris,
}
SEQUENCE_MODELS = ("seq_trend",)
SEQUENCE_DATA_SEED = 7
SEQUENCE_COUNT = 3000
SEQUENCE_LENGTHS = (4, 64)  # inclusive


@dataclass(frozen=True)
class Split:
    """A data set's fixed stratified train/test split."""

    name: str
    x_train: np.ndarray
    x_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray
    feature_names: tuple[str, ...]
    class_names: tuple[str, ...]


def load_split(name: str) -> Split:
    """The stratified 75/25 split (``random_state=42``) used for training and tests."""
    data = LOADERS[name]()
    x = np.asarray(data.data, dtype=np.float32)
    y = np.asarray(data.target, dtype=np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=y
    )
    return Split(
        name=name,
        x_train=x_train,
        x_test=x_test,
        y_train=y_train,
        y_test=y_test,
        feature_names=tuple(str(f) for f in data.feature_names),
        class_names=tuple(str(c) for c in data.target_names),
    )


def trend_sequences(
    count: int = SEQUENCE_COUNT, seed: int = SEQUENCE_DATA_SEED
) -> tuple[list[np.ndarray], np.ndarray]:
    """Noisy lines of 4 to 64 values, rising (label 1) or falling (0): the ``seq_trend`` data."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, count)
    sequences = []
    for label in labels:
        length = int(rng.integers(SEQUENCE_LENGTHS[0], SEQUENCE_LENGTHS[1] + 1))
        drift = rng.uniform(0.05, 0.5) * (1.0 if label else -1.0)
        t = np.arange(length, dtype=np.float64)
        values = rng.normal(0.0, 5.0) + drift * t + rng.normal(0.0, rng.uniform(0.1, 1.0), length)
        sequences.append(values.astype(np.float32))
    return sequences, labels.astype(np.int64)


def split_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) row indices of a labelled set: the same stratified split as :func:`load_split`."""
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=labels
    )
    return train_idx, test_idx
