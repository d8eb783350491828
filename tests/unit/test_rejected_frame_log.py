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


def test_dropped_sends_to_a_peer_that_is_not_an_address_are_rate_limited(caplog):
    """Reply addresses come from frames: a flood naming bogus ones costs a few log lines, not one per message."""
    import zmq

    from cbctl.runtime.defaults import REJECTED_FRAME_LOG_PER_S
    from cbctl.runtime.process import PeerSockets

    context = zmq.Context()
    peers = PeerSockets(context)
    try:
        with caplog.at_level(logging.WARNING, logger="cbctl.runtime.process"):
            for i in range(200):
                assert not peers.send(f"bogus-{i}", b"frame")
        assert peers.dropped == 200
        lines = [r for r in caplog.records if "dropped a message" in r.getMessage()]
        assert 0 < len(lines) <= 2 * REJECTED_FRAME_LOG_PER_S  # the loop may straddle a second
    finally:
        peers.close()
        context.term()
