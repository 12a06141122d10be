"""The model hooks: what the pipeline tells the model-lifecycle features, and those features wired
together (:class:`engine.ports.ModelHooks` implemented; not the worker's lifecycle).

The pipeline calls two hooks (a no-op by default, so it works without any of
this): ``on_dispatch(batch)`` when a batch is sent to Triton, and
``on_delivered(batch, result)`` when its predictions are acknowledged by the
broker. :class:`ModelObserver` turns them into

* ``sie_model_version_info{model, version}``: 1 for each version answering
  now (learned from the ``model_version`` of Triton's responses), 0 for a
  version that answered before and no longer does - a promote or rollback
  shows up as a flip of the two series;
* ``sie_ab_predictions_total{model, version, arm}`` per A/B arm;
* drift windows and ``sie_drift_psi`` / ``sie_drift_score_psi`` gauges;
* shadow requests (models/shadow.py) and their agreement with the primary (models/agreement.py).

Hooks never raise into the pipeline: a failure here is logged and ignored.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Gauge

from engine.modelspec import ModelSpec
from engine.ports import InferenceBackend, Sink
from engine.records import Batch, InferenceResult
from engine.routing import Router
from engine.settings import Settings
from models.agreement import ShadowAgreement
from models.drift import DriftMonitor, DriftReport, load_references
from models.shadow import ShadowRunner
from observability.metrics import ModelMetrics, create_model_metrics

log = logging.getLogger(__name__)


class ServedVersions:
    """Keeps ``sie_model_version_info`` equal to the versions answering now.

    Each (model, pinned version) route remembers the version that last
    answered it; a version is "in use" while some route's last answer came
    from it. Versions READY at startup count as in use until the model's first
    answer.
    """

    def __init__(self, gauge: Gauge) -> None:
        self._gauge = gauge
        self._slots: dict[tuple[str, str], str] = {}
        self._known: dict[str, set[str]] = {}
        self._seeded: dict[str, set[str]] = {}

    def seed(self, versions: Mapping[str, Sequence[str]]) -> None:
        """Versions Triton reports READY before any answer."""
        for model, vs in versions.items():
            self._seeded[model] = set(vs)
            self._known.setdefault(model, set()).update(vs)
            self._publish(model)

    def observe(self, model: str, pinned: str, version: str) -> None:
        """Route (``model``, ``pinned``) was just answered by ``version``."""
        if self._slots.get((model, pinned)) == version:
            return
        self._slots[(model, pinned)] = version
        self._seeded.pop(model, None)
        self._known.setdefault(model, set()).add(version)
        self._publish(model)

    def in_use(self, model: str) -> set[str]:
        """Versions of ``model`` answering now."""
        used = {v for (m, _), v in self._slots.items() if m == model}
        return used | self._seeded.get(model, set())

    def _publish(self, model: str) -> None:
        used = self.in_use(model)
        for version in self._known.get(model, ()):
            self._gauge.labels(model, version).set(1 if version in used else 0)


class ModelObserver:
    """The pipeline's model hooks: versions, A/B counts, drift, shadows."""

    def __init__(
        self,
        metrics: ModelMetrics,
        versions: ServedVersions,
        drift: DriftMonitor | None = None,
        shadow: ShadowRunner | None = None,
    ) -> None:
        self.metrics = metrics
        self.versions = versions
        self.drift = drift
        self.shadow = shadow

    def on_dispatch(self, batch: Batch) -> None:
        """Offer the batch to the shadows."""
        if self.shadow is not None:
            self.shadow.offer(batch)

    def on_delivered(self, batch: Batch, result: InferenceResult) -> None:
        """Record the answering version, A/B arms and drift inputs."""
        try:
            self.versions.observe(batch.model, batch.version, result.model_version)
            arms = Counter(e.arm for e in batch.events if e.arm)
            for arm, n in arms.items():
                self.metrics.ab_predictions.labels(batch.model, result.model_version, arm).inc(n)
            if self.drift is not None:
                self._observe_drift(batch, result)
            if self.shadow is not None and self.shadow.agreement is not None:
                self.shadow.agreement.primary(batch, result.outputs)
        except Exception:
            log.exception("model hooks failed for a batch of %s", batch.model)

    def _observe_drift(self, batch: Batch, result: InferenceResult) -> None:
        assert self.drift is not None
        inputs = batch.stacked_inputs()
        if len(inputs) != 1:
            return
        x = next(iter(inputs.values()))
        outputs = result.outputs
        probs = outputs.get("probabilities", next(iter(outputs.values())) if len(outputs) == 1 else None)
        self.drift.observe(batch.model, x, None if probs is None else np.asarray(probs))

    def publish_drift(self, report: DriftReport) -> None:
        """Export one drift report as gauges."""
        m = self.metrics
        for feature, value in report.features.items():
            m.drift_psi.labels(report.model, feature).set(value)
        if report.score is not None:
            m.drift_score_psi.labels(report.model).set(report.score)
        m.drift_window.labels(report.model).set(report.samples)
        drifted = report.drifted()
        if drifted:
            log.info("drift on %s over %d events: %s", report.model, report.samples, drifted[:5])

    async def close(self) -> None:
        """Stop the shadows."""
        if self.shadow is not None:
            await self.shadow.close()


async def build_model_hooks(
    settings: Settings,
    router: Router,
    specs: Mapping[str, ModelSpec],
    backend: InferenceBackend,
    version_gauge: Gauge,
    registry: CollectorRegistry,
    make_sink: Callable[[], Sink],
) -> ModelObserver:
    """Wire the observer for one worker (called once the backend serves models).

    ``make_sink()`` gives the sink of shadow predictions (the composition root passes the Kafka one:
    a producer of its own, or the worker's transactional sink under exactly-once).
    """
    for problem in router.problems(specs):
        log.error("%s", problem)
    metrics = create_model_metrics(registry)
    versions = ServedVersions(version_gauge)
    versions.seed(await backend.model_versions())
    observer = ModelObserver(metrics, versions)
    if settings.drift.reference_dir is not None:
        references = load_references(settings.drift.reference_dir)
        observer.drift = DriftMonitor(references, settings.drift, on_report=observer.publish_drift)
        log.info("drift monitoring for %s", sorted(references))
    if router.has_shadows:
        sink = make_sink()
        routing = settings.routing
        agreement = ShadowAgreement(
            metrics, routing.shadow_min_agreement, routing.shadow_default_min_agreement
        )
        for model, targets in routing.shadows.items():
            for target in targets:
                agreement.declare(model, target)
        observer.shadow = ShadowRunner(
            router,
            backend,
            sink,
            routing.shadow_topic,
            metrics,
            max_in_flight=routing.shadow_max_in_flight,
            agreement=agreement,
        )
    return observer
