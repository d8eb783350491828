"""A clock a test sets by hand, for the pure state machines that take ``clock=`` (policy, autoscaler, stores)."""

from __future__ import annotations


class Clock:
    """Returns ``now`` (seconds) when called; the test moves it with ``advance`` or by setting ``now``."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
