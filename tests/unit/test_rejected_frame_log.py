"""Warnings about rejected frames are rate-limited (a flood of garbage must not fill the disk) and say how many
were left out."""

from __future__ import annotations

import logging

from cbctl.runtime.process import RejectedFrameLog


def test_at_most_the_limit_per_second_and_the_next_line_counts_the_rest(caplog):
    now = [100.0]
    limited = RejectedFrameLog(logging.getLogger("test.rejected"), per_second=3, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.rejected"):
        for i in range(50):
            limited.warning("dropped a bad frame: %d", i)
        assert [r.getMessage() for r in caplog.records] == [f"dropped a bad frame: {i}" for i in range(3)]
        now[0] += 1.0
        limited.warning("dropped a bad frame: %d", 50)
        limited.warning("dropped a bad frame: %d", 51)
    assert [r.getMessage() for r in caplog.records[3:]] == [
        "dropped a bad frame: 50 (47 more rejected frames were not logged)", "dropped a bad frame: 51"]
