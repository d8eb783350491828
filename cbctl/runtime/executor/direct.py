"""Direct messages between running functions (``cb.send`` / ``cb.recv``): whom a message is for, and the bound
on what waits to be read. Pure bookkeeping, used from an executor's one thread.

The rule (the README repeats it): a message is for the function running on the receiving executor when it was
sent. Each ``DirectMessage`` carries its wall-clock send time; the receiver keeps a message only while a
function is running there that started before it was sent, and drops what that function did not read when it
returns. So a message sent to an executor where nothing runs, or read by nobody, never reaches a later, unrelated
call; the Cloudburst pattern (a function publishes ``cb.getid()``, another one, running at the same time, sends
to it) keeps working, because the listener is running when the message is sent. Both clocks are the same
machine's, so the comparison is exact there.

The inbox of the running function holds at most ``INBOX_MAX_MESSAGES`` messages and ``INBOX_MAX_BYTES`` (encoded).
A message past either is refused: the receiver answers ``DirectRefused``, and the sender's function, if it is
still the one that sent it, gets ``InboxFull`` from its next ``cb.send`` or ``cb.recv``.
"""

from __future__ import annotations

import collections
import time
from typing import Any

from cbctl.runtime.defaults import INBOX_MAX_BYTES, INBOX_MAX_MESSAGES

#: ``Inbox.admit`` verdicts besides a refusal's reason
ACCEPT = ""
STALE = "stale"


class Inbox:
    def __init__(self, max_messages: int = INBOX_MAX_MESSAGES, max_bytes: int = INBOX_MAX_BYTES) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.messages: collections.deque[tuple[str, Any]] = collections.deque()
        self.bytes = 0
        self.step_started_ns = 0  # when the running function started (wall clock); 0: none is running
        self.refusals: list[str] = []  # refusals of messages the running function sent
        self.dropped = 0  # messages for no running function, or not read before their function returned
        self.refused = 0  # messages refused because the inbox was full

    def begin_step(self) -> None:
        self.step_started_ns = time.time_ns()

    def end_step(self) -> None:
        """The running function returned: what it did not read is dropped, its refusals are forgotten."""
        self.step_started_ns = 0
        if self.messages:
            self.dropped += len(self.messages)
            self.messages.clear()
            self.bytes = 0
        if self.refusals:
            self.refusals.clear()

    def admit(self, sent_ns: int, size: int) -> str:
        """``ACCEPT``, ``STALE`` (for no function running here now: dropped), or why the message is refused."""
        if not self.step_started_ns or sent_ns < self.step_started_ns:
            self.dropped += 1
            return STALE
        if len(self.messages) >= self.max_messages or self.bytes + size > self.max_bytes:
            self.refused += 1
            return (f"its inbox holds {len(self.messages)} unread messages ({self.bytes} bytes; at most "
                    f"{self.max_messages} and {self.max_bytes} bytes): the function there must cb.recv() them")
        return ACCEPT

    def add(self, sender: str, value: Any, size: int) -> None:
        self.messages.append((sender, value))
        self.bytes += size

    def take(self) -> list[tuple[str, Any]]:
        messages = list(self.messages)
        self.messages.clear()
        self.bytes = 0
        return messages

    def on_refused(self, sent_ns: int, text: str) -> bool:
        """A refusal came back: kept for the running function if it sent that message (True), else not."""
        if self.step_started_ns and sent_ns >= self.step_started_ns:
            self.refusals.append(text)
            return True
        return False

    def take_refusals(self) -> list[str]:
        refusals, self.refusals = self.refusals, []
        return refusals
