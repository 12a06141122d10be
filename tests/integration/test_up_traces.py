"""``sie up``'s stack runs the project's Collector: spans land in its file and go on to the user's endpoint.

The "user's endpoint" is a second Collector (standing in for a Jaeger or Tempo
that accepts OTLP/HTTP). Everything on free ports.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from engine.settings import Settings
from ops.embedded import free_port
from ops.embedded.otelcol import CollectorProcess, start_collector
from ops.embedded.otelcol_dist import otelcol_binary
from ops.eventgen import generate, load_profiles
from ops.stack import Stack, StackPorts, start_stack
from ops.trace_file import Span, read_spans
from ops.traces_cli import show_traces
from tests.integration.conftest import MODEL_REPOSITORY
from tests.integration.kafka import collect, produce

pytestmark = pytest.mark.integration

EVENTS = 20


@pytest.fixture
def downstream(tmp_path: Path) -> Iterator[CollectorProcess]:
    """Where the user wants their spans: another Collector, writing its own file."""
    process = start_collector(tmp_path / "downstream", grpc_port=free_port(), http_port=free_port())
    yield process
    process.stop()


@pytest.fixture
def stack(tmp_path: Path, downstream: CollectorProcess) -> Iterator[Stack]:
    base = Settings(worker_name="up-traces", data_dir=tmp_path / "data")
    running = start_stack(
        base,
        tmp_path / "stack",
        MODEL_REPOSITORY,
        workers=1,
        ports=StackPorts.free(),
        otelcol=otelcol_binary(),
        otlp_forward=f"http://127.0.0.1:{downstream.http_port}",
    )
    yield running
    running.stop()


def _wait_for(path: Path, event_spans: int, timeout: float = 60) -> list[Span]:
    """The spans in ``path`` once it holds ``event_spans`` worker event spans and Triton's (or on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        spans = read_spans(path)
        events = [s for s in spans if s.service == "sie-worker" and s.name.endswith(" process")]
        if len(events) >= event_spans and any(s.service == "triton" for s in spans):
            return spans
        if time.monotonic() > deadline:
            return spans
        time.sleep(0.5)


def test_sie_ups_collector_writes_worker_and_triton_spans_under_the_stack_and_forwards_them(
    stack: Stack, downstream: CollectorProcess, tmp_path: Path
) -> None:
    collector = stack.collector
    assert collector is not None and collector.traces_file == tmp_path / "stack" / "traces.jsonl"
    assert stack.settings.otlp_endpoint == collector.traces_url
    assert stack.triton is not None and collector.traces_url in " ".join(stack.triton.process.argv)
    assert "otel collector" in stack.endpoints()

    events = list(generate(load_profiles(MODEL_REPOSITORY), EVENTS, seed=5, keys=4))
    t, bootstrap = stack.settings.topics, stack.settings.kafka.bootstrap_servers
    produce(bootstrap, t.events, [(ev.key, ev.value, []) for ev in events])
    out = collect(bootstrap, [t.predictions], lambda got: len(got[t.predictions]) >= EVENTS, timeout=120)
    assert len(out[t.predictions]) == EVENTS

    local = _wait_for(collector.traces_file, EVENTS)
    forwarded = _wait_for(downstream.traces_file, EVENTS)
    events_traced = {s.trace_id for s in local if s.name == f"{t.events} process"}
    assert len(events_traced) == EVENTS, "every event traced at the default sampling"
    assert events_traced <= {s.trace_id for s in forwarded}, "the same spans reached the user's endpoint"
    assert {"sie-worker", "triton"} <= {s.service for s in forwarded}

    console = Console(record=True, width=200)
    assert show_traces(console, collector.traces_file, top=1) == 0
    assert "triton infer" in console.export_text()
