"""``sie replay``: dead letters go back to the input topic, byte for byte, after a fix."""

from __future__ import annotations

import subprocess
import sys
import uuid

import orjson
import pytest

from engine.settings import LimitSettings, Settings
from ops.embedded import child_env, create_topics
from ops.eventgen import generate, load_profiles
from ops.replay import REPLAYED_FROM_HEADER, replay
from ops.stack import settings_env
from streams.kafka_config import client_config
from tests.integration.conftest import MODEL_REPOSITORY, REPO, StartWorker
from tests.integration.kafka import Msg, collect, produce

pytestmark = pytest.mark.integration

PER_MODEL = 20
GARBAGE = 5


def _traceparent(n: int) -> bytes:
    return f"00-{n:032x}-{n:016x}-01".encode()


def _ids(msgs: list[Msg]) -> list[str]:
    return [orjson.loads(m.value or b"")["id"] for m in msgs]


def test_replay_republishes_dead_letters_of_one_reason_after_the_fix(
    stack_settings: Settings, workers: StartWorker
) -> None:
    t = stack_settings.topics
    bootstrap = stack_settings.kafka.bootstrap_servers
    # Before the fix: a limit too small for breast_cancer's 30 features.
    strict = stack_settings.model_copy(update={"limits": LimitSettings(max_elements=10)})
    first = workers(strict)
    events = list(generate(load_profiles(MODEL_REPOSITORY), 2 * PER_MODEL, seed=3, prefix="rp"))
    big = [e for e in events if e.model == "breast_cancer"]
    records = [
        (e.key, e.value, [("traceparent", f"00-{i + 1:032x}-{i + 1:016x}-01".encode())])
        for i, e in enumerate(events)
    ]
    records += [(None, f"garbage {n}".encode(), []) for n in range(GARBAGE)]
    produce(bootstrap, t.events, records)
    before = collect(
        bootstrap,
        [t.predictions, t.dlq],
        lambda got: len(got[t.predictions]) >= PER_MODEL and len(got[t.dlq]) >= PER_MODEL + GARBAGE,
        timeout=120,
        settle=2.0,
    )
    reasons = [m.headers["error.reason"].decode() for m in before[t.dlq]]
    assert sorted(set(reasons)) == ["invalid_json", "too_large"], reasons
    first.stop()

    workers(stack_settings)  # the fix: default limits
    env = child_env(settings_env(stack_settings))
    done = subprocess.run(
        [sys.executable, "-m", "ops.cli", "replay", "--reason", "too_large"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert f"replayed {PER_MODEL} of {PER_MODEL + GARBAGE} dead letters" in done.stderr, done.stderr

    after = collect(
        bootstrap,
        [t.predictions, t.dlq],
        lambda got: len(got[t.predictions]) >= 2 * PER_MODEL,
        timeout=120,
        settle=3.0,
    )
    predicted = _ids(after[t.predictions])
    assert sorted(predicted) == sorted(e.id for e in events), "each event predicted exactly once"
    assert len(after[t.dlq]) == PER_MODEL + GARBAGE, "nothing new was dead-lettered"
    replayed = [m for m in after[t.predictions] if orjson.loads(m.value or b"")["id"] in {e.id for e in big}]
    sent_trace = {e.key: r[2][0][1] for e, r in zip(events, records, strict=False)}
    for msg in replayed:
        assert msg.headers["traceparent"] == sent_trace[msg.key], "trace context survives the replay"


def test_replay_keeps_bytes_key_and_headers_and_honours_limit_dry_run_and_input_topics(
    stack_settings: Settings,
) -> None:
    t = stack_settings.topics
    bootstrap = stack_settings.kafka.bootstrap_servers
    scratch = f"replay-{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, {scratch: 1})
    letters = [
        (f"k{n}".encode(), f"bad \xff {n}".encode("latin-1"), reason)
        for n, reason in enumerate(["invalid_json", "bad_shape", "invalid_json", "invalid_json"])
    ]
    produce(
        bootstrap,
        t.dlq,
        [
            (key, value, [("tracestate", b"a=1"), ("error.reason", reason.encode()), ("source.topic", b"x")])
            for key, value, reason in letters
        ],
    )
    config = client_config(stack_settings.kafka)

    dry = replay(config, t.dlq, t.events, reasons=["invalid_json"], dry_run=True, to_topic=scratch)
    assert (dry.replayed, dict(dry.by_reason), dry.read) == (0, {"invalid_json": 3}, 4)

    report = replay(config, t.dlq, t.events, reasons=["invalid_json"], limit=2, to_topic=scratch)
    # Reading stops at the second invalid_json letter: at most the one bad_shape letter was skipped.
    assert report.replayed == 2 and report.skipped <= 1
    assert report.read == report.replayed + report.skipped

    elsewhere = replay(config, t.dlq, t.events, reasons=["bad_shape"])  # source.topic "x": no input
    assert (elsewhere.replayed, elsewhere.read) == (0, 4)
    assert dict(elsewhere.skip_reasons) == {
        "error.reason 'invalid_json' not selected": 3,
        "source.topic 'x' is not an input topic": 1,
    }
    got = collect(bootstrap, [scratch], lambda g: len(g[scratch]) >= 2, timeout=60, settle=1.0)[scratch]
    assert len(got) == 2
    wanted = {key: value for key, value, reason in letters if reason == "invalid_json"}
    for msg in got:
        assert msg.value == wanted[msg.key], "original bytes, unchanged"
        assert msg.headers["tracestate"] == b"a=1"
        assert "error.reason" not in msg.headers and "source.topic" not in msg.headers
        topic, partition, offset = msg.headers[REPLAYED_FROM_HEADER].decode().rsplit(":", 2)
        assert topic == t.dlq and int(partition) >= 0 and int(offset) >= 0
    assert len({m.key for m in got}) == 2
