"""benchmarks/profile.py: py-spy's collapsed stacks summarised by stage and by frame."""

from __future__ import annotations

import pytest

from benchmarks.profile import stages, summarize

COLLAPSED = "\n".join(
    [
        "run (ops/worker.py:1);decode_many (engine/codec.py:80);quick_header (engine/binary_codec.py:170) 6",
        "run (ops/worker.py:1);Outcomes._outputs (engine/outcomes.py:120) 3",
        "run (threading.py:9);GroupConsumer._loop_until_closed (streams/group_consumer.py:180) 1",
        "not a sample line",
    ]
)


def test_samples_are_shared_out_by_the_first_stage_that_marks_their_stack() -> None:
    shares = dict(stages(COLLAPSED))
    assert shares["decoding events"] == pytest.approx(0.6)
    assert shares["encoding predictions and dead letters"] == pytest.approx(0.3)
    assert shares["Kafka fetch (librdkafka's consumer thread: consume, buffer)"] == pytest.approx(0.1)
    assert stages("") == []


def test_the_summary_gives_inclusive_shares_of_our_frames_and_self_shares_of_all() -> None:
    text = summarize(COLLAPSED)
    assert text.startswith("10 samples")
    assert " 90.0%  run (ops/worker.py)" in text  # inclusive, path shortened, line number dropped
    assert " 60.0%  quick_header (engine/binary_codec.py)" in text
    assert " 10.0%  GroupConsumer._loop_until_closed (streams/group_consumer.py)" in text  # self
