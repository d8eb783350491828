"""The writer clock: a writer's timestamps only go up, and past any it has seen for a key."""

from __future__ import annotations

from cbctl.runtime.writer_clock import MAX_TIMESTAMP, WriterClock


class SteppingClock:
    def __init__(self, *readings: int) -> None:
        self.readings = list(readings)

    def __call__(self) -> int:
        return self.readings.pop(0) if len(self.readings) > 1 else self.readings[0]


def test_stamps_follow_the_wall_clock_and_never_go_back_when_it_steps_back():
    clock = WriterClock(clock_ns=SteppingClock(1000, 2000, 1500, 1500, 3000))
    stamps = [clock.stamp("k") for _ in range(5)]
    assert stamps == [1000, 2000, 2001, 2002, 3000]


def test_a_seen_timestamp_lifts_that_key_only():
    clock = WriterClock(clock_ns=lambda: 5000)
    clock.observe("skewed", 10**18)
    assert clock.stamp("skewed") == 10**18 + 1
    assert clock.stamp("other") == 5001, "one key from the future must not drag every other key there"
    clock.observe("skewed", 10)  # an older one changes nothing
    assert clock.stamp("skewed") == 10**18 + 2, "each write of the key is later than the one before"


def test_the_top_of_the_wire_range_is_not_exceeded():
    clock = WriterClock(clock_ns=lambda: 5)
    clock.observe("k", MAX_TIMESTAMP)
    assert clock.stamp("k") == MAX_TIMESTAMP


def test_the_keys_remembered_are_bounded_least_recent_first():
    clock = WriterClock(max_keys=2, clock_ns=lambda: 1)
    for key in ("a", "b", "c"):
        clock.observe(key, 100)
    assert clock.stamp("a") < 100 < clock.stamp("b") and clock.stamp("c") > 100
