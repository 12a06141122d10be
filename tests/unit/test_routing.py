"""Routing: topic defaults, deterministic A/B arms, pinned versions, shadows, served-version gauge."""

from __future__ import annotations

import asyncio
from collections import Counter

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from engine.contract.context import DecodeContext
from engine.contract.decode import decode
from engine.errors import ConfigError, Reason
from engine.pipeline import Pipeline
from engine.ports import PipelineParts
from engine.records import Completion, DeadLetter, Event
from engine.retry import CircuitBreaker, Retrier
from engine.routing import Route, Router, bucket, input_topics
from engine.settings import (
    BatchSettings,
    LimitSettings,
    RetrySettings,
    RoutingSettings,
    Settings,
    TopicSettings,
)
from engine.testing import InstantClock, RecordingSink, ScriptedBackend, model_spec, raw_record
from models.hooks import ModelObserver, ServedVersions
from models.shadow import ShadowRunner
from observability.metrics import create_metrics, create_model_metrics

AB = {
    "experiments": {
        "m": [
            {"name": "control", "model": "m", "version": "1", "weight": 3},
            {"name": "treatment", "model": "m", "version": "2", "weight": 1},
        ]
    }
}


def router(**routing: object) -> Router:
    return Router(RoutingSettings.model_validate(routing), "m")


def test_event_model_wins_then_topic_default_then_global_default() -> None:
    r = router(topic_models={"in.other": "other"})
    assert r.route("in", "explicit", b"k") == Route("explicit")
    assert r.route("in.other", None, b"k") == Route("other")
    assert r.route("in", None, b"k") == Route("m")


def test_unrouted_events_keep_the_version_triton_serves() -> None:
    assert router().route("in", "m", b"k") == Route("m", "", "")


@given(st.binary(min_size=1, max_size=40))
def test_the_same_key_always_lands_in_the_same_arm(key: bytes) -> None:
    first = router(**AB).route("in", "m", key)
    again = router(**AB).route("in", None, key)
    assert first == again and first.arm in {"control", "treatment"}
    assert first.version == {"control": "1", "treatment": "2"}[first.arm]


def test_arms_split_keys_by_weight() -> None:
    r = router(**AB)
    arms = Counter(r.route("in", "m", f"key-{i}".encode()).arm for i in range(20_000))
    assert abs(arms["control"] / 20_000 - 0.75) < 0.02


def test_experiments_draw_arms_independently() -> None:
    keys = [f"k{i}".encode() for i in range(5000)]
    a = np.array([bucket("exp-a", k) for k in keys])
    b = np.array([bucket("exp-b", k) for k in keys])
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.05
    assert a.min() >= 0.0 and a.max() < 1.0


def test_an_experiment_can_be_a_virtual_model_name() -> None:
    r = router(experiments={"champion": [{"name": "x", "model": "m"}, {"name": "y", "model": "n"}]})
    routes = {r.route("in", "champion", f"{i}".encode()).model for i in range(200)}
    assert routes == {"m", "n"}
    assert "champion" not in r.targets()


@pytest.mark.parametrize(
    "experiments",
    [{"m": []}, {"m": [{"name": "a", "model": "m"}, {"name": "a", "model": "n"}]}],
)
def test_invalid_experiments_are_refused(experiments: dict) -> None:
    with pytest.raises(ConfigError):
        router(experiments=experiments)


def test_problems_name_targets_the_backend_does_not_serve() -> None:
    r = router(**AB, shadows={"m": [{"model": "ghost"}]})
    assert r.problems({"m": object()}) == [
        "routing names model 'ghost', which the inference backend does not serve"
    ]


def test_workers_consume_the_events_topic_and_routed_topics() -> None:
    s = Settings(topics={"events": "in"}, routing={"topic_models": {"in": "m", "in.iris": "iris"}})
    assert input_topics(s) == ["in", "in.iris"]


def test_decode_applies_the_route_to_the_event() -> None:
    ctx = DecodeContext({"m": model_spec("m", 3)}, "m", LimitSettings(), router=router(**AB))
    event = decode(raw_record(orjson.dumps({"id": "e1", "features": [1, 2, 3]}), key=b"user-7"), ctx)
    assert isinstance(event, Event)
    expected = router(**AB).route("events", None, b"user-7")
    assert (event.model, event.version, event.arm) == (expected.model, expected.version, expected.arm)


def test_keyless_events_are_bucketed_by_id() -> None:
    ctx = DecodeContext({"m": model_spec("m", 3)}, "m", LimitSettings(), router=router(**AB))
    event = decode(raw_record(orjson.dumps({"id": "e1", "features": [1, 2, 3]}), key=None), ctx)
    assert isinstance(event, Event) and event.arm == router(**AB).route("events", "m", b"e1").arm


def test_a_route_to_a_model_not_served_is_dead_lettered() -> None:
    ctx = DecodeContext(
        {"m": model_spec("m", 3)}, "m", LimitSettings(), router=router(topic_models={"events": "x"})
    )
    letter = decode(raw_record(orjson.dumps({"id": "e1", "features": [1, 2, 3]})), ctx)
    assert isinstance(letter, DeadLetter) and letter.reason is Reason.UNKNOWN_MODEL


# --- the pipeline with routing, hooks and shadows -----------------------------------


def versioned(broken: frozenset[str] = frozenset()) -> ScriptedBackend:
    """A backend answering as version 2 when no version is pinned; ``broken`` models fail."""
    return ScriptedBackend(
        models={"m": model_spec("m", 3, 64), "s": model_spec("s", 3, 64)}, version="2", broken=broken
    )


def pipeline(
    backend: ScriptedBackend, sink: RecordingSink, routing: dict, shadow_sink: RecordingSink | None = None
):  # type: ignore[no-untyped-def]
    registry = CollectorRegistry()
    metrics, model_metrics = create_metrics(registry), create_model_metrics(registry)
    r = router(**routing)
    observer = ModelObserver(model_metrics, ServedVersions(metrics.model_version))
    if shadow_sink is not None:
        observer.shadow = ShadowRunner(r, backend, shadow_sink, "shadow", model_metrics, max_in_flight=1)
    clock = InstantClock()
    retry = RetrySettings(initial_backoff_s=0.001, failure_threshold=100)
    parts = PipelineParts(
        decode_ctx=DecodeContext(
            {"m": model_spec("m", 3, 64), "s": model_spec("s", 3, 64)}, "m", LimitSettings(), r
        ),
        backend=backend,
        retrier=Retrier(retry, clock, CircuitBreaker(retry, clock)),
        sink=sink,
        topics=TopicSettings(events="in", predictions="out", dlq="dlq"),
        batch=BatchSettings(max_size=8, max_delay_ms=1, max_in_flight=2),
        metrics=metrics,
        models=observer,
    )
    return Pipeline(parts, clock), registry


def chunk(n: int, acked: list[int]) -> list:
    done = Completion(n, lambda: acked.append(n))
    return [
        raw_record(
            orjson.dumps({"id": f"e{i}", "features": [i, 1, 0]}),
            offset=i,
            key=f"k{i}".encode(),
            completion=done,
        )
        for i in range(n)
    ]


async def test_ab_arms_are_sent_pinned_and_recorded_on_output_and_metrics() -> None:
    backend, sink = versioned(), RecordingSink()
    p, registry = pipeline(backend, sink, AB)
    await p.start()
    acked: list[int] = []
    await p.submit(chunk(40, acked))
    assert await p.drain(5) and acked == [40]
    docs = [orjson.loads(r.value) for r in sink.on("out")]
    assert len(docs) == 40
    for doc in docs:
        assert doc["model_version"] == {"control": "1", "treatment": "2"}[doc["arm"]]
        assert doc["arm"] == router(**AB).route("in", "m", doc["id"].replace("e", "k").encode()).arm
    assert {(c.model, c.version) for c in backend.calls} == {("m", "1"), ("m", "2")}
    for arm, version in (("control", "1"), ("treatment", "2")):
        n = registry.get_sample_value(
            "sie_ab_predictions_total", {"model": "m", "version": version, "arm": arm}
        )
        assert n == sum(d["arm"] == arm for d in docs)
    await p.stop()


async def test_outputs_without_an_experiment_have_no_arm() -> None:
    sink = RecordingSink()
    p, _ = pipeline(versioned(), sink, {})
    await p.start()
    await p.submit(chunk(3, []))
    assert await p.drain(5)
    assert all("arm" not in orjson.loads(r.value) for r in sink.on("out"))
    await p.stop()


async def test_shadow_predictions_go_to_the_shadow_topic_only() -> None:
    backend, sink, shadow_sink = versioned(), RecordingSink(), RecordingSink()
    p, registry = pipeline(backend, sink, {"shadows": {"m": [{"model": "s"}]}}, shadow_sink)
    await p.start()
    await p.submit(chunk(8, []))
    assert await p.drain(5)
    await asyncio.sleep(0.05)
    assert {r.topic for r in sink.sent} == {"out"} and len(sink.sent) == 8
    shadow_docs = [orjson.loads(r.value) for r in shadow_sink.sent]
    assert {r.topic for r in shadow_sink.sent} == {"shadow"}
    assert sorted(d["id"] for d in shadow_docs) == sorted(f"e{i}" for i in range(8))
    assert all(d["model"] == "s" and d["shadow_of"] == "m" for d in shadow_docs)
    assert registry.get_sample_value("sie_shadow_predictions_total", {"model": "s", "outcome": "ok"}) == 8
    await p.stop()


async def test_a_failing_shadow_never_affects_the_main_path() -> None:
    backend, sink, shadow_sink = versioned(frozenset({"s"})), RecordingSink(), RecordingSink()
    p, registry = pipeline(backend, sink, {"shadows": {"m": [{"model": "s"}]}}, shadow_sink)
    await p.start()
    acked: list[int] = []
    await p.submit(chunk(16, acked))
    assert await p.drain(5) and acked == [16]
    await asyncio.sleep(0.05)
    assert len(sink.on("out")) == 16 and not sink.on("dlq") and not shadow_sink.sent
    failed = registry.get_sample_value("sie_shadow_predictions_total", {"model": "s", "outcome": "error"})
    dropped = registry.get_sample_value("sie_shadow_predictions_total", {"model": "s", "outcome": "dropped"})
    assert (failed or 0) + (dropped or 0) == 16 and failed
    assert registry.get_sample_value("sie_dead_letters_total", {"reason": "inference_error"}) is None
    await p.stop()


async def test_a_stuck_shadow_is_dropped_not_waited_for() -> None:
    backend, sink, shadow_sink = versioned(), RecordingSink(), RecordingSink()
    shadow_sink.hold = True  # shadow deliveries never complete
    p, registry = pipeline(backend, sink, {"shadows": {"m": [{"model": "s"}]}}, shadow_sink)
    p._parts.models.shadow._max_undelivered = 8  # type: ignore[attr-defined]
    await p.start()
    acked: list[int] = []
    for _ in range(4):
        await p.submit(chunk(8, acked))
        await asyncio.sleep(0.01)
    assert await p.drain(5) and acked == [8, 8, 8, 8]
    dropped = registry.get_sample_value("sie_shadow_predictions_total", {"model": "s", "outcome": "dropped"})
    assert dropped and dropped >= 16
    await p.stop()


def test_version_gauge_flips_when_a_new_version_answers() -> None:
    registry = CollectorRegistry()
    gauge = create_metrics(registry).model_version
    served = ServedVersions(gauge)
    served.seed({"m": ["1"]})

    def value(v: str) -> float | None:
        return registry.get_sample_value("sie_model_version_info", {"model": "m", "version": v})

    served.observe("m", "", "1")
    assert value("1") == 1
    served.observe("m", "", "2")
    assert (value("1"), value("2")) == (0, 1)
    served.observe("m", "1", "1")  # an A/B arm pinned to version 1 keeps it in use
    assert (value("1"), value("2")) == (1, 1)
