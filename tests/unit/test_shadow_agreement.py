"""models/agreement.py: shadow answers compared with the primary's, whichever comes first."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from engine.records import Batch
from engine.settings import RouteTarget
from models.agreement import ShadowAgreement, compare, shadow_label
from observability.metrics import create_model_metrics

INT8 = RouteTarget(model="m_int8")


def tracker(max_pending: int = 1024) -> tuple[ShadowAgreement, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = create_model_metrics(registry)
    return ShadowAgreement(metrics, {"m_int8": 0.95}, 0.99, max_pending=max_pending), registry


def value(registry: CollectorRegistry, name: str, shadow: str = "m_int8") -> float | None:
    return registry.get_sample_value(name, {"model": "m", "shadow": shadow})


def batch() -> Batch:
    return Batch(model="m", events=(), opened_at=0.0)


def probs(classes: list[int], n_classes: int = 3, sharp: float = 0.9) -> dict[str, np.ndarray]:
    out = np.full((len(classes), n_classes), (1 - sharp) / (n_classes - 1), np.float32)
    out[np.arange(len(classes)), classes] = sharp
    return {"probabilities": out}


def test_compare_counts_rows_of_the_same_class_and_the_largest_difference() -> None:
    rows, agreed, diff = compare(probs([0, 1, 2, 2]), probs([0, 1, 1, 2], sharp=0.8))
    assert (rows, agreed) == (4, 3)
    assert diff == pytest.approx(0.9 - 0.1, abs=1e-6)  # row 3: class 2 at 0.9 against 0.1


def test_shadow_answer_first_then_primary_is_counted_once() -> None:
    agreement, registry = tracker()
    b = batch()
    agreement.expect(b, 1)
    agreement.shadow(b, INT8, probs([0, 1, 1, 2]))
    assert value(registry, "sie_shadow_compared_rows_total") is None
    agreement.primary(b, probs([0, 1, 2, 2]))
    agreement.primary(b, probs([0, 1, 2, 2]))  # a second delivery of the same batch counts nothing
    assert value(registry, "sie_shadow_compared_rows_total") == 4
    assert value(registry, "sie_shadow_agreed_rows_total") == 3
    assert value(registry, "sie_shadow_agreement_ratio") == 0.75


def test_primary_first_then_shadow_and_the_ratio_accumulates_over_batches() -> None:
    agreement, registry = tracker()
    for shadow_classes in ([0, 0], [1, 1]):
        b = batch()
        agreement.expect(b, 1)
        agreement.primary(b, probs([0, 1]))
        agreement.shadow(b, INT8, probs(shadow_classes))
    assert value(registry, "sie_shadow_compared_rows_total") == 4
    assert value(registry, "sie_shadow_agreement_ratio") == 0.5
    assert value(registry, "sie_shadow_max_abs_diff") > 0.8


def test_answers_of_unexpected_or_forgotten_batches_are_ignored() -> None:
    agreement, registry = tracker(max_pending=2)
    stranger = batch()
    agreement.shadow(stranger, INT8, probs([0]))  # never expected
    agreement.primary(stranger, probs([0]))
    old, *recent = batch(), batch(), batch()
    for b in (old, *recent):
        agreement.expect(b, 1)
    agreement.shadow(old, INT8, probs([0]))  # evicted: only the 2 most recent are kept
    agreement.primary(old, probs([0]))
    assert value(registry, "sie_shadow_compared_rows_total") is None


def test_a_failed_shadow_releases_its_batch() -> None:
    agreement, registry = tracker(max_pending=1)
    b = batch()
    agreement.expect(b, 2)
    agreement.primary(b, probs([2]))
    agreement.shadow_failed(b)
    agreement.shadow(b, RouteTarget(model="m_fp16"), probs([2]))
    assert value(registry, "sie_shadow_agreed_rows_total", "m_fp16") == 1
    assert agreement._pending == {}


def test_thresholds_are_published_per_shadow_with_the_default_for_others() -> None:
    agreement, registry = tracker()
    agreement.declare("m", INT8)
    pinned = RouteTarget(model="m", version="2")
    agreement.declare("m", pinned)
    assert value(registry, "sie_shadow_min_agreement") == 0.95
    assert shadow_label(pinned) == "m:2"
    assert value(registry, "sie_shadow_min_agreement", "m:2") == 0.99
