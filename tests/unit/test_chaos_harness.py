"""The chaos tests' check that no partition is read again from below a position the group reached."""

from __future__ import annotations

from tests.chaos.harness import positions_read_again

W1 = """2026-12-06 21:30:01,100 INFO streams.group_consumer: assigned events[0]@0, events[1]@0
2026-12-06 21:30:09,000 INFO streams.group_consumer: revoked [('events', 1)] (committed events[1]@4100)
"""
W2_OK = "2026-12-06 21:30:09,500 INFO streams.group_consumer: assigned events[1]@4100\n"
W2_REREAD = "2026-12-06 21:30:09,500 INFO streams.group_consumer: assigned events[1]@0\n"


def test_an_assignment_at_the_committed_position_is_fine() -> None:
    assert positions_read_again([W1, W2_OK]) == []


def test_an_assignment_below_the_last_committed_position_is_reported() -> None:
    bad = positions_read_again([W1, W2_REREAD])
    assert len(bad) == 1 and "events[1] assigned at 0, below 4100" in bad[0]


def test_logs_are_merged_in_time_order_across_workers() -> None:
    later = "2026-12-06 21:31:00,000 INFO streams.group_consumer: assigned events[0]@10\n"
    assert positions_read_again([later, W1]) == []
