"""Synthetic input events for the demo producer, benchmarks and tests.

Feature vectors come from the model's own data set when scikit-learn (a dev
dependency) can load it: real rows, resampled with a little jitter, so inputs
and scores follow the training distribution and the drift gauges stay quiet.
Otherwise each feature is drawn independently from a normal distribution with
the mean and standard deviation in the model's ``reference_profile.json``
(written by ``model_repository/train.py``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from engine.contract.wire import encode_binary_event
from inference.repository import parse_config

FORMATS = ("json", "binary")


@dataclass(frozen=True)
class FeatureProfile:
    """Per-feature mean and standard deviation of one model's training inputs."""

    model: str
    mean: np.ndarray
    std: np.ndarray
    rows: np.ndarray | None = None  # real data rows to resample, when available
    input_name: str = "features"  # the model's one input (binary events name it)

    @classmethod
    def load(cls, model_dir: Path) -> FeatureProfile:
        """Read ``<model_dir>/reference_profile.json`` (and the input's name from ``config.pbtxt``)."""
        doc = json.loads((Path(model_dir) / "reference_profile.json").read_text())
        features = sorted(doc["features"], key=lambda f: f["index"])
        config = Path(model_dir) / "config.pbtxt"
        return cls(
            model=Path(model_dir).name,
            mean=np.array([f["mean"] for f in features], dtype=np.float64),
            std=np.array([f["std"] for f in features], dtype=np.float64),
            input_name=parse_config(config).input[0].name if config.exists() else "features",
        )

    def with_data_rows(self) -> FeatureProfile:
        """This profile plus the data set's rows, if scikit-learn ships a loader for it."""
        rows = dataset_rows(self.model)
        if rows is None or rows.shape[1] != self.mean.size:
            return self
        return FeatureProfile(self.model, self.mean, self.std, rows, self.input_name)

    def sample(self, rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
        """``n`` float32 rows; ``shift`` moves every feature by that many std (drift)."""
        if self.rows is not None:
            base = self.rows[rng.integers(0, len(self.rows), n)]
            jitter = rng.standard_normal((n, self.mean.size)) * 0.02
            return (base + (jitter + shift) * self.std).astype(np.float32)
        z = rng.standard_normal((n, self.mean.size)) + shift
        return (self.mean + z * self.std).astype(np.float32)


def dataset_rows(name: str) -> np.ndarray | None:
    """Rows of scikit-learn's bundled data set ``name`` (``breast_cancer``, ``iris``), or None."""
    try:
        from sklearn import datasets
    except ImportError:
        return None
    loader = getattr(datasets, f"load_{name}", None)
    if loader is None:
        return None
    return np.asarray(loader().data, dtype=np.float64)


@dataclass(frozen=True)
class GeneratedEvent:
    """One encoded event and what produced it."""

    id: str
    key: bytes
    value: bytes
    model: str
    features: np.ndarray
    headers: tuple[tuple[str, bytes], ...] = ()  # binary events: content-type and header length


def encode_event(event_id: str, features: np.ndarray, model: str | None = None) -> bytes:
    """The JSON value of an event using the ``features`` shorthand."""
    doc: dict[str, object] = {"id": event_id, "features": features}
    if model is not None:
        doc["model"] = model
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def generate(
    profiles: list[FeatureProfile],
    count: int,
    *,
    seed: int = 0,
    keys: int = 64,
    prefix: str = "ev",
    shift: float = 0.0,
    fmt: str = "json",
) -> Iterator[GeneratedEvent]:
    """``count`` events cycling over ``profiles``, keyed ``k0..k{keys-1}``.

    ``fmt``: ``json`` (the ``features`` shorthand) or ``binary`` (engine/contract/wire.py).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown event format {fmt!r}; choose one of {', '.join(FORMATS)}")
    rng = np.random.default_rng(seed)
    chunk = 1024
    made = 0
    while made < count:
        n = min(chunk, count - made)
        rows = {p.model: p.sample(rng, n, shift) for p in profiles}
        for i in range(n):
            profile = profiles[(made + i) % len(profiles)]
            features = rows[profile.model][i]
            event_id = f"{prefix}-{made + i}"
            headers: tuple[tuple[str, bytes], ...] = ()
            if fmt == "binary":
                value, headers = encode_binary_event(event_id, {profile.input_name: features}, profile.model)
            else:
                value = encode_event(event_id, features, profile.model)
            yield GeneratedEvent(
                id=event_id,
                key=f"k{(made + i) % keys}".encode(),
                value=value,
                model=profile.model,
                features=features,
                headers=headers,
            )
        made += n


def load_profiles(
    model_repository: Path, models: list[str] | None = None, *, data_rows: bool = False
) -> list[FeatureProfile]:
    """Profiles of ``models`` (default: every model with a profile) in a repository.

    ``data_rows`` resamples the models' real data sets where scikit-learn has them.
    """
    dirs = sorted(p.parent for p in Path(model_repository).glob("*/reference_profile.json"))
    profiles = [FeatureProfile.load(d) for d in dirs if models is None or d.name in models]
    return [p.with_data_rows() for p in profiles] if data_rows else profiles
