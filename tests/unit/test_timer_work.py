"""A server's timer work survives a bad entry (issue 13: a negative pid from a status ended every scheduler when
the timer handed it to psutil): the step fails, is logged on one rate-limited line, and the loop goes on."""

from __future__ import annotations

import logging

import pytest

from cbctl.runtime.process import TimerWork, process_alive


@pytest.mark.parametrize("pid", [-1, 0, -33538, 2**40, 2**63])
def test_process_alive_is_false_for_what_no_process_has(pid):
    assert process_alive(pid) is False


def test_a_failing_step_is_logged_once_and_the_next_steps_run(caplog):
    timers = TimerWork(logging.getLogger("test.timers"))
    ran = []

    def bad() -> None:
        raise ValueError("pid must be a positive integer (got -33538)")

    with caplog.at_level(logging.WARNING, logger="test.timers"):
        timers.run(bad)
        timers.run(ran.append, "after")
    assert ran == ["after"]
    (record,) = caplog.records
    assert "bad failed, skipped: ValueError: pid must be a positive integer" in record.getMessage()
    assert record.exc_info is None  # one line, no traceback: the same entry may fail every second


def test_a_step_failing_every_tick_is_rate_limited(caplog):
    timers = TimerWork(logging.getLogger("test.timers.flood"))
    with caplog.at_level(logging.WARNING, logger="test.timers.flood"):
        for _ in range(1000):
            timers.run(int, "not a number")
    assert 1 <= len(caplog.records) <= 20
