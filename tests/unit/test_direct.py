"""Whom a direct message is for, and the bound on a function's unread messages (cbctl/runtime/direct.py)."""

from __future__ import annotations

import time

from cbctl.runtime.executor.direct import ACCEPT, STALE, Inbox


def test_a_message_is_for_the_function_running_when_it_was_sent():
    inbox = Inbox()
    assert inbox.admit(time.time_ns(), 1) == STALE  # nothing runs here
    sent_before = time.time_ns()
    inbox.begin_step()
    assert inbox.admit(sent_before, 1) == STALE  # sent before this function started: for an earlier one
    assert inbox.admit(time.time_ns(), 1) == ACCEPT
    inbox.add("executor-2", "hello", 1)
    inbox.end_step()  # returned without reading it
    inbox.begin_step()
    assert inbox.take() == [] and inbox.dropped == 3


def test_the_inbox_is_bounded_by_count_and_bytes():
    inbox = Inbox(max_messages=2, max_bytes=100)
    inbox.begin_step()
    for size in (40, 40):
        assert inbox.admit(time.time_ns(), size) == ACCEPT
        inbox.add("s", b"x", size)
    assert "2 unread messages" in inbox.admit(time.time_ns(), 1)
    assert inbox.take() == [("s", b"x"), ("s", b"x")]
    assert "must cb.recv()" in inbox.admit(time.time_ns(), 101)
    assert inbox.refused == 2


def test_a_refusal_is_kept_only_for_the_function_that_sent_the_message():
    inbox = Inbox()
    inbox.begin_step()
    sent = time.time_ns()
    assert inbox.on_refused(sent, "full") is True
    assert inbox.take_refusals() == ["full"] and inbox.take_refusals() == []
    inbox.end_step()
    inbox.begin_step()
    assert inbox.on_refused(sent, "full") is False  # its sender has returned: not this call's error
