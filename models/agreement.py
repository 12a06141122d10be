"""Agreement of shadow predictions with the primary's, batch by batch, as Prometheus metrics.

A shadow answers a copy of a batch (models/shadow.py) while the primary
answers the batch itself; either can come first. :class:`ShadowAgreement`
keeps the first answer of a batch until the other arrives (at most
``max_pending`` batches; the oldest is forgotten beyond that, as is a batch
whose primary failed), then compares them row by row:

* a row agrees when the arg-max of the class output (``probabilities``, else
  the only output) is the same: ``sie_shadow_compared_rows_total`` and
  ``sie_shadow_agreed_rows_total{model, shadow}``, and their ratio since the
  worker started, ``sie_shadow_agreement_ratio``;
* ``sie_shadow_max_abs_diff{model, shadow}``: the largest absolute difference
  of any output value seen so far;
* ``sie_shadow_min_agreement{model, shadow}``: the threshold of the
  ``SieShadowAgreementLow`` alert for that shadow (``routing.shadow_min_agreement``).

``shadow`` is the shadow target's model, with ``:<version>`` when pinned.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from engine.records import Batch
from engine.settings import RouteTarget
from observability.metrics import ModelMetrics

log = logging.getLogger(__name__)

CLASS_OUTPUT = "probabilities"


def shadow_label(target: RouteTarget) -> str:
    """The ``shadow`` label of a target: its model, ``model:version`` when pinned."""
    return f"{target.model}:{target.version}" if target.version else target.model


def compare(primary: Mapping[str, np.ndarray], shadow: Mapping[str, np.ndarray]) -> tuple[int, int, float]:
    """(rows, rows of the same class, largest absolute difference) of two answers to one batch."""
    names = [n for n in primary if n in shadow and np.shape(primary[n]) == np.shape(shadow[n])]
    if not names:
        return 0, 0, 0.0
    diff = max(
        float(np.max(np.abs(np.asarray(primary[n], np.float64) - shadow[n]), initial=0.0)) for n in names
    )
    name = CLASS_OUTPUT if CLASS_OUTPUT in names else names[0]
    p, s = np.asarray(primary[name]), np.asarray(shadow[name])
    if p.ndim < 2:
        return int(p.shape[0]) if p.ndim else 1, int(np.sum(p == s)), diff
    same = np.argmax(p.reshape(len(p), -1), axis=1) == np.argmax(s.reshape(len(s), -1), axis=1)
    return int(same.size), int(same.sum()), diff


@dataclass
class _Pending:
    batch: Batch
    primary: Mapping[str, np.ndarray] | None = None
    shadows: list[tuple[str, Mapping[str, np.ndarray]]] = field(default_factory=list)
    expected: int = 0  # shadow answers still to come


class ShadowAgreement:
    """Pairs the primary's and the shadows' answers to each batch; see the module docstring."""

    def __init__(
        self,
        metrics: ModelMetrics,
        thresholds: Mapping[str, float],
        default_threshold: float,
        *,
        max_pending: int = 1024,
    ) -> None:
        self._metrics = metrics
        self._thresholds = dict(thresholds)
        self._default = default_threshold
        self._max_pending = max_pending
        self._pending: OrderedDict[int, _Pending] = OrderedDict()
        self._totals: dict[tuple[str, str], list[float]] = {}

    def declare(self, model: str, target: RouteTarget) -> None:
        """Publish the alert threshold of ``target`` shadowing ``model`` (before any traffic)."""
        label = shadow_label(target)
        threshold = self._thresholds.get(label, self._thresholds.get(target.model, self._default))
        self._metrics.shadow_min_agreement.labels(model, label).set(threshold)

    def expect(self, batch: Batch, shadows: int) -> None:
        """``shadows`` shadow requests were started for ``batch``."""
        entry = self._entry(batch)
        entry.expected += shadows

    def shadow_failed(self, batch: Batch) -> None:
        """One shadow request of ``batch`` ended without an answer."""
        entry = self._pending.get(id(batch))
        if entry is not None and entry.batch is batch:
            entry.expected -= 1
            self._maybe_done(entry)

    def shadow(self, batch: Batch, target: RouteTarget, outputs: Mapping[str, np.ndarray]) -> None:
        """A shadow's answer to ``batch``."""
        entry = self._pending.get(id(batch))
        if entry is None or entry.batch is not batch:
            return
        entry.expected -= 1
        label = shadow_label(target)
        if entry.primary is None:
            entry.shadows.append((label, outputs))
            return
        self._count(batch.model, label, entry.primary, outputs)
        self._maybe_done(entry)

    def primary(self, batch: Batch, outputs: Mapping[str, np.ndarray]) -> None:
        """The primary's answer to ``batch`` (delivered)."""
        entry = self._pending.get(id(batch))
        if entry is None or entry.batch is not batch:
            return
        entry.primary = outputs
        for label, shadow_outputs in entry.shadows:
            self._count(batch.model, label, outputs, shadow_outputs)
        entry.shadows.clear()
        self._maybe_done(entry)

    def _entry(self, batch: Batch) -> _Pending:
        entry = self._pending.get(id(batch))
        if entry is None or entry.batch is not batch:
            entry = _Pending(batch)
            self._pending[id(batch)] = entry
            while len(self._pending) > self._max_pending:
                self._pending.popitem(last=False)
        return entry

    def _maybe_done(self, entry: _Pending) -> None:
        if entry.primary is not None and entry.expected <= 0:
            self._pending.pop(id(entry.batch), None)

    def _count(
        self, model: str, label: str, primary: Mapping[str, np.ndarray], shadow: Mapping[str, np.ndarray]
    ) -> None:
        rows, agreed, diff = compare(primary, shadow)
        if rows == 0:
            return
        m = self._metrics
        m.shadow_compared.labels(model, label).inc(rows)
        m.shadow_agreed.labels(model, label).inc(agreed)
        totals = self._totals.setdefault((model, label), [0.0, 0.0, 0.0])
        totals[0] += rows
        totals[1] += agreed
        totals[2] = max(totals[2], diff)
        m.shadow_agreement.labels(model, label).set(totals[1] / totals[0])
        m.shadow_max_abs_diff.labels(model, label).set(totals[2])
