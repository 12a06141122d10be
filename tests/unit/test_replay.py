"""``sie replay`` against an in-memory broker: where dead letters go, and how much is read."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from ops.cli import app
from ops.replay import REPLAYED_FROM_HEADER, replay
from tests.unit.fake_kafka import FakeBroker, install

DLQ = "events.dlq"
CONFIG = {"bootstrap.servers": "fake:9092"}


def dead_letter(broker: FakeBroker, n: int, source: str | None, reason: str = "invalid_json") -> None:
    headers = [("traceparent", b"00-1-2-01"), ("error.reason", reason.encode())]
    if source is not None:
        headers.append(("source.topic", source.encode()))
    broker.append(DLQ, f"k{n}".encode(), f"v{n}".encode(), headers)


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch) -> FakeBroker:
    fake = FakeBroker()
    install(monkeypatch, fake)
    return fake


def test_limit_stops_reading_the_dlq_once_enough_dead_letters_were_chosen(broker: FakeBroker) -> None:
    for n in range(50):
        dead_letter(broker, n, "events")

    report = replay(CONFIG, DLQ, "events", limit=2, idle_timeout=0.5)

    assert report.replayed == 2
    assert broker.handed_out == 2, f"read {broker.handed_out} dead letters to replay 2"
    assert report.read == 2


def test_limit_counts_only_chosen_dead_letters_and_reads_no_further(broker: FakeBroker) -> None:
    for n, reason in enumerate(["bad_shape", "invalid_json", "bad_shape", "invalid_json", "invalid_json"]):
        dead_letter(broker, n, "events", reason)

    report = replay(CONFIG, DLQ, "events", reasons=["invalid_json"], limit=2, idle_timeout=0.5)

    assert (report.replayed, report.read, report.skipped) == (2, 4, 2)
    assert broker.handed_out == 4
    assert [key for _, key, _, _ in broker.produced] == [b"k1", b"k3"]


def test_dead_letter_naming_a_topic_that_is_not_an_input_is_skipped_with_the_reason(
    broker: FakeBroker,
) -> None:
    dead_letter(broker, 0, "events")
    dead_letter(broker, 1, "payments")  # not an input topic of this engine
    dead_letter(broker, 2, None)  # no source.topic: the events topic

    report = replay(CONFIG, DLQ, "events", inputs={"events", "events.iris"}, idle_timeout=0.5)

    assert [(topic, key) for topic, key, _, _ in broker.produced] == [("events", b"k0"), ("events", b"k2")]
    assert (report.read, report.replayed, report.skipped) == (3, 2, 1)
    assert report.skip_reasons == {"source.topic 'payments' is not an input topic": 1}


def test_to_topic_sends_every_chosen_dead_letter_there_whatever_its_source(broker: FakeBroker) -> None:
    dead_letter(broker, 0, "events")
    dead_letter(broker, 1, "payments")

    report = replay(CONFIG, DLQ, "events", to_topic="scratch", idle_timeout=0.5)

    assert [(topic, key) for topic, key, _, _ in broker.produced] == [("scratch", b"k0"), ("scratch", b"k1")]
    assert report.replayed == 2 and report.skipped == 0


def test_replayed_record_keeps_key_value_and_headers_minus_the_dlq_ones(broker: FakeBroker) -> None:
    dead_letter(broker, 0, "events")

    replay(CONFIG, DLQ, "events", idle_timeout=0.5)

    ((topic, key, value, headers),) = broker.produced
    assert (topic, key, value) == ("events", b"k0", b"v0")
    assert headers == [("traceparent", b"00-1-2-01"), (REPLAYED_FROM_HEADER, f"{DLQ}:0:0".encode())]


def test_dry_run_counts_targets_and_publishes_nothing(broker: FakeBroker) -> None:
    dead_letter(broker, 0, "events")
    dead_letter(broker, 1, "payments")

    report = replay(CONFIG, DLQ, "events", dry_run=True, idle_timeout=0.5)

    assert broker.produced == []
    assert dict(report.by_topic) == {"events": 1} and report.replayed == 0 and report.skipped == 1


def test_sie_replay_sends_dead_letters_only_back_to_configured_input_topics(
    broker: FakeBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIE_ROUTING__TOPIC_MODELS", '{"events.iris": "iris"}')
    dead_letter(broker, 0, "events")
    dead_letter(broker, 1, "events.iris")
    dead_letter(broker, 2, "payments")

    result = CliRunner().invoke(app, ["replay"])

    assert result.exit_code == 0, result.output
    assert [topic for topic, _, _, _ in broker.produced] == ["events", "events.iris"]
    assert "payments" not in {topic for topic, _, _, _ in broker.produced}
    assert "replayed 2 of 3 dead letters" in result.output
    assert "source.topic 'payments' is not an input topic" in result.output


def test_sie_replay_to_topic_overrides_the_input_topic_check(broker: FakeBroker) -> None:
    dead_letter(broker, 0, "payments")

    result = CliRunner().invoke(app, ["replay", "--to", "events"])

    assert result.exit_code == 0, result.output
    assert [topic for topic, _, _, _ in broker.produced] == ["events"]


def test_dead_letter_cut_down_to_fit_the_dlq_is_skipped_because_its_bytes_are_not_the_original(
    broker: FakeBroker,
) -> None:
    dead_letter(broker, 0, "events")
    broker.topics[DLQ][0]._headers.append(("error.value_truncated", b"true"))
    dead_letter(broker, 1, "events")

    report = replay(CONFIG, DLQ, "events", idle_timeout=0.5)

    assert [key for _, key, _, _ in broker.produced] == [b"k1"]
    assert report.skip_reasons == {"cut down to fit the DLQ (original bytes lost)": 1}
