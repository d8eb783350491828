"""The autoscaler's decision (supervisor/autoscaler.py), driven with a fake clock: no processes."""

from __future__ import annotations

import pytest

from cbctl.errors import InvalidArgument
from cbctl.runtime.supervisor.autoscaler import (
    Autoscaler,
    AutoscaleSettings,
    LoadFigures,
    parse_range,
    spread,
)
from tests.unit.clocks import Clock

SETTINGS = AutoscaleSettings(target_utilization=0.7, up_window_s=2.0, down_window_s=10.0, settle_s=2.0)


def run(scaler: Autoscaler, clock: Clock, figures: LoadFigures, seconds: float) -> list[int]:
    """One report a second for ``seconds``; the targets decided on the way."""
    decided = []
    for _ in range(int(seconds)):
        clock.now += 1.0
        decision = scaler.observe(figures)
        if decision is not None:
            decided.append(decision.target)
    return decided


IDLE = LoadFigures(0.0, 0, 0)


def test_need_counts_running_work_over_the_target_utilization_plus_every_waiting_call():
    scaler = Autoscaler(0, 8, 1, SETTINGS, Clock())
    assert scaler.recommend(LoadFigures(busy=1.4, queued=0, parked=0)) == 2
    assert scaler.recommend(LoadFigures(busy=0.7, queued=0, parked=0)) == 1  # exactly at the target: no more
    assert scaler.recommend(LoadFigures(busy=1.0, queued=3, parked=2)) == 7
    assert scaler.recommend(LoadFigures(busy=0.0, queued=100, parked=0)) == 8  # bounded by MAX


def test_a_queue_that_stays_for_the_up_window_adds_what_it_held_throughout_and_no_more():
    clock = Clock()
    scaler = Autoscaler(1, 8, 1, SETTINGS, clock)
    clock.now += SETTINGS.settle_s
    assert run(scaler, clock, LoadFigures(1.0, 2, 0), 2) == []  # the window is not covered yet
    assert run(scaler, clock, LoadFigures(1.0, 1, 0), 1) == [3]  # ceil(1/0.7 + 1): the lowest need held
    assert scaler.ups == 1 and scaler.target == 3
    assert "work waits" in scaler.last.reason and "queued 1" in scaler.last.reason


def test_a_burst_shorter_than_the_up_window_adds_nothing():
    clock = Clock()
    scaler = Autoscaler(1, 8, 1, SETTINGS, clock)
    clock.now += SETTINGS.settle_s
    run(scaler, clock, IDLE, 3)
    assert run(scaler, clock, LoadFigures(1.0, 20, 0), 1) == []  # one report of a big queue...
    assert run(scaler, clock, LoadFigures(0.3, 0, 0), 5) == []  # ...drained within the window
    assert scaler.target == 1 and scaler.ups == 0


def test_idle_shrinks_to_min_only_after_the_whole_down_window_following_the_highest_need_in_it():
    clock = Clock()
    scaler = Autoscaler(1, 8, 4, SETTINGS, clock)
    clock.now += SETTINGS.settle_s
    assert run(scaler, clock, LoadFigures(1.0, 0, 0), 1) == []  # need 2 once, then calm
    assert run(scaler, clock, IDLE, 9) == []  # 10 s not covered yet
    assert run(scaler, clock, IDLE, 1) == [2]  # the window still holds the need of 2
    # the window goes on: as soon as that need ages out, MIN (not a whole window more per step)
    assert run(scaler, clock, IDLE, 1) == [1]
    assert scaler.downs == 2 and "calm" in scaler.last.reason
    assert run(scaler, clock, IDLE, 30) == []  # and stays


def test_after_a_scale_down_a_need_returning_scales_up_again_after_the_up_window():
    clock = Clock()
    scaler = Autoscaler(1, 8, 3, SETTINGS, clock)
    clock.now += SETTINGS.settle_s
    assert run(scaler, clock, IDLE, 11) == [1]
    assert run(scaler, clock, LoadFigures(1.0, 1, 0), 3) == [3]


def test_scale_to_zero_and_the_first_parked_call_starts_one_at_once():
    clock = Clock()
    scaler = Autoscaler(0, 4, 1, SETTINGS, clock)
    clock.now += SETTINGS.settle_s
    assert run(scaler, clock, IDLE, 11) == [0]
    clock.now += 0.1
    decision = scaler.observe(LoadFigures(0.0, 0, 1))  # no window, no settle: the call waits for it
    assert decision is not None and decision.target == 1 and "no executor runs" in decision.reason
    assert scaler.observe(LoadFigures(0.0, 0, 1)) is None  # starting: settle before anything more


def test_a_load_oscillating_around_a_threshold_does_not_flap():
    """Needs 3 for 4 s, then 1 for 4 s, over and over: one scale-up, then it holds (the down window always
    sees the high phase), never adding and removing every cycle."""
    clock = Clock()
    scaler = Autoscaler(1, 8, 1, SETTINGS, clock)
    clock.now += SETTINGS.settle_s
    high, low = LoadFigures(1.5, 0, 0), LoadFigures(0.5, 0, 0)  # ceil(1.5/0.7) = 3, ceil(0.5/0.7) = 1
    targets = []
    for _ in range(15):  # two minutes
        targets += run(scaler, clock, high, 4)
        targets += run(scaler, clock, low, 4)
    assert targets == [3]
    assert scaler.ups == 1 and scaler.downs == 0


def test_a_need_flickering_between_two_sizes_every_report_does_not_flap():
    clock = Clock()
    scaler = Autoscaler(1, 8, 2, SETTINGS, clock)
    clock.now += SETTINGS.settle_s
    targets = []
    for i in range(120):
        targets += run(scaler, clock, LoadFigures(1.45 if i % 2 else 1.35, 0, 0), 1)  # needs 3, 2, 3, 2, ...
    assert targets == []  # never 2 reports in a row above 2, never 10 s below 3


def test_no_decision_while_settling_after_a_change():
    clock = Clock()
    scaler = Autoscaler(1, 8, 1, SETTINGS, clock)
    clock.now += SETTINGS.settle_s
    run(scaler, clock, LoadFigures(1.0, 5, 0), 3)
    assert scaler.target == 7
    # the new executors have not reported yet: the old figures must not add more
    assert run(scaler, clock, LoadFigures(1.0, 30, 0), 1) == []
    assert scaler.target == 7


def test_a_new_range_moves_the_target_into_it_at_once():
    clock = Clock()
    scaler = Autoscaler(0, 8, 5, SETTINGS, clock)
    decision = scaler.set_range(0, 3)
    assert decision is not None and decision.target == 3 and "range" in decision.reason
    assert scaler.set_range(2, 4) is None and scaler.target == 3
    assert scaler.set_range(4, 6).target == 4


def test_parse_range_and_settings_refuse_bad_input_in_one_line():
    assert parse_range("0:4", 2) == (0, 4)
    assert parse_range("1:", 3) == (1, 3)
    for bad in ("4", "a:b", "3:1", "0:0", "-1:2", "0:100000"):
        with pytest.raises(InvalidArgument, match="--autoscale"):
            parse_range(bad, 2)
    assert AutoscaleSettings.from_options({"autoscale_up_window_s": "1.5"}).up_window_s == 1.5
    with pytest.raises(InvalidArgument, match="unknown autoscale setting"):
        AutoscaleSettings.from_options({"autoscale_nope": 1})
    with pytest.raises(InvalidArgument, match="> 0"):
        AutoscaleSettings.from_options({"autoscale_target_utilization": 0})


def test_spread_keeps_what_hosts_run_and_adds_where_capacity_is_free():
    capacity = {"head": 2, "b": 4}
    assert spread(3, capacity, {"head": 2}) == {"head": 2, "b": 1}
    assert spread(6, capacity, {"head": 2, "b": 1}) == {"head": 2, "b": 4}
    assert spread(9, capacity, {}) == {"head": 2, "b": 4}  # bounded by the capacity offered
    assert spread(1, capacity, {"head": 2, "b": 4}) == {"head": 1, "b": 0}


def test_spread_favours_the_head_on_ties_adding_to_it_first_and_taking_from_it_last():
    capacity = {"head": 2, "a": 2}
    assert spread(1, capacity, {}, home="head") == {"head": 1, "a": 0}
    assert spread(1, capacity, {}) == {"head": 0, "a": 1}  # no home: by name
    assert spread(1, capacity, {"head": 1, "a": 1}, home="head") == {"head": 1, "a": 0}
    assert spread(3, capacity, {"head": 1, "a": 0}, home="head") == {"head": 2, "a": 1}
    assert spread(0, capacity, {"head": 2, "a": 2}, home="head") == {"head": 0, "a": 0}
