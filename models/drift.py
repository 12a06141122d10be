"""Data drift: live inputs and scores against each model's training reference profile.

``model_repository/train.py`` writes ``<model>/reference_profile.json`` with,
per input feature and for the model's score, the 0.0, 0.1, ..., 1.0 quantiles
of the training data. Those quantiles cut the real line into (about) ten bins
that each held a tenth of the training data. The engine keeps a sliding window
of the last ``window`` live events per model and computes the population
stability index of each feature and of the score over those bins::

    PSI = sum_i (live_i - ref_i) * ln(live_i / ref_i)

(shares clipped at 1e-4). Rules of thumb: < 0.1 stable, 0.1-0.25 a moderate
shift, > 0.25 a significant shift - the default threshold here and in the
``SieInputDrift`` alert. Pure numpy; the caller exports the numbers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.settings import DriftSettings

PROFILE_FILE = "reference_profile.json"
DRIFT_THRESHOLD = 0.25
_EPS = 1e-4


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two share vectors over the same bins."""
    e = np.clip(np.asarray(expected, dtype=np.float64), _EPS, None)
    a = np.clip(np.asarray(actual, dtype=np.float64), _EPS, None)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass(frozen=True)
class Bins:
    """Bins cut at a reference's inner quantiles, with the reference share of each."""

    edges: np.ndarray  # ascending, unique inner cut points
    expected: np.ndarray  # reference share per bin, len(edges) + 1, sums to 1

    @classmethod
    def from_quantiles(cls, levels: Sequence[float], quantiles: Sequence[float]) -> Bins:
        """Bins ``(-inf, q_1], (q_1, q_2], ..., (q_k, inf)`` from quantiles at ``levels``.

        Equal quantiles (ties, e.g. many zeros) merge into one cut whose
        cumulative share is the highest level at that value.
        """
        inner_q = np.asarray(quantiles, dtype=np.float64)[1:-1]
        inner_l = np.asarray(levels, dtype=np.float64)[1:-1]
        edges, last = np.unique(inner_q[::-1], return_index=True)
        cumulative = inner_l[::-1][last]
        expected = np.diff(np.concatenate([[0.0], cumulative, [1.0]]))
        return cls(edges=edges, expected=expected)

    def shares(self, values: np.ndarray) -> np.ndarray:
        """Share of ``values`` in each bin."""
        idx = np.searchsorted(self.edges, values, side="left")
        counts = np.bincount(idx, minlength=len(self.edges) + 1)
        return counts / max(len(values), 1)

    def psi(self, values: np.ndarray) -> float:
        """PSI of ``values`` against the reference."""
        return psi(self.expected, self.shares(values))


@dataclass(frozen=True)
class Reference:
    """One model's reference profile, as bins."""

    model: str
    feature_names: tuple[str, ...]
    features: tuple[Bins, ...]
    score_name: str
    score: Bins

    @classmethod
    def load(cls, path: Path) -> Reference:
        """Read a ``reference_profile.json``."""
        doc = json.loads(Path(path).read_text())
        levels = doc["quantile_levels"]
        feats = sorted(doc["features"], key=lambda f: f["index"])
        return cls(
            model=str(doc.get("model") or Path(path).parent.name),
            feature_names=tuple(str(f["name"]) for f in feats),
            features=tuple(Bins.from_quantiles(levels, f["quantiles"]) for f in feats),
            score_name=str(doc["score"]["name"]),
            score=Bins.from_quantiles(levels, doc["score"]["quantiles"]),
        )


def load_references(reference_dir: Path) -> dict[str, Reference]:
    """Every ``<model>/reference_profile.json`` under ``reference_dir``, by model directory name."""
    return {p.parent.name: Reference.load(p) for p in sorted(Path(reference_dir).glob(f"*/{PROFILE_FILE}"))}


def score_of(probabilities: np.ndarray, score_name: str) -> np.ndarray | None:
    """The drift score of each row, as ``train.py`` defines it (None if unknown)."""
    p = np.asarray(probabilities)
    if p.ndim != 2:
        return None
    if score_name == "positive_class_probability" and p.shape[1] == 2:
        return p[:, 1]
    if score_name == "max_probability":
        return p.max(axis=1)
    return None


class Window:
    """The last ``capacity`` rows of features and scores (a ring buffer)."""

    def __init__(self, capacity: int, n_features: int) -> None:
        self._x = np.zeros((capacity, n_features), dtype=np.float64)
        self._s = np.full(capacity, np.nan)
        self._next = 0
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, x: np.ndarray, scores: np.ndarray | None) -> None:
        """Append rows (and their scores; NaN when unknown), dropping the oldest."""
        cap = len(self._x)
        s = np.full(len(x), np.nan) if scores is None else np.asarray(scores, dtype=np.float64)
        x, s = x[-cap:], s[-cap:]
        idx = (self._next + np.arange(len(x))) % cap
        self._x[idx], self._s[idx] = x, s
        self._next = int((self._next + len(x)) % cap)
        self._size = min(self._size + len(x), cap)

    def rows(self) -> np.ndarray:
        """The features held (order not kept)."""
        return self._x[: self._size]

    def scores(self) -> np.ndarray:
        """The known scores held."""
        s = self._s[: self._size]
        return s[~np.isnan(s)]


@dataclass(frozen=True)
class DriftReport:
    """PSI of each feature (by name) and of the score, over ``samples`` live events."""

    model: str
    samples: int
    features: Mapping[str, float]
    score: float | None

    def drifted(self, threshold: float = DRIFT_THRESHOLD) -> list[str]:
        """Names of the features whose PSI is over ``threshold``."""
        return [name for name, value in self.features.items() if value > threshold]


def compute(reference: Reference, window: Window) -> DriftReport:
    """PSI of every feature and of the score in ``window``."""
    x = window.rows()
    pairs = zip(reference.feature_names, reference.features, strict=True)
    features = {name: bins.psi(x[:, i]) for i, (name, bins) in enumerate(pairs)}
    scores = window.scores()
    score = reference.score.psi(scores) if len(scores) else None
    return DriftReport(reference.model, len(window), features, score)


class DriftMonitor:
    """Sliding windows per model; reports PSI every ``every`` events once ``min_samples`` are in."""

    def __init__(
        self,
        references: Mapping[str, Reference],
        settings: DriftSettings,
        on_report: Callable[[DriftReport], None] | None = None,
    ) -> None:
        self._refs = dict(references)
        self._settings = settings
        self._on_report = on_report
        self._windows = {m: Window(settings.window, len(r.features)) for m, r in self._refs.items()}
        self._since = dict.fromkeys(self._refs, 0)
        self.last: dict[str, DriftReport] = {}

    @property
    def models(self) -> list[str]:
        """Models with a reference profile."""
        return sorted(self._refs)

    def observe(
        self, model: str, features: np.ndarray, probabilities: np.ndarray | None
    ) -> DriftReport | None:
        """Add a batch's inputs (``[n, n_features]``) and outputs; a report when one is due."""
        reference = self._refs.get(model)
        if reference is None:
            return None
        x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
        if x.shape[1] != len(reference.features):
            return None
        scores = score_of(probabilities, reference.score_name) if probabilities is not None else None
        window = self._windows[model]
        window.add(x, scores)
        self._since[model] += len(x)
        if len(window) < self._settings.min_samples or self._since[model] < self._settings.every:
            return None
        self._since[model] = 0
        report = compute(reference, window)
        self.last[model] = report
        if self._on_report is not None:
            self._on_report(report)
        return report
