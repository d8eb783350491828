"""`cbctl up --verbose`'s phases, from the start-up steps' times."""

from __future__ import annotations

import time

from cbctl.lifecycle import STARTUP_PHASES, process_started_at, startup_phases


def test_every_phase_from_consecutive_steps_adds_up_to_the_total():
    steps = [STARTUP_PHASES[0][1]] + [end for _, _, end in STARTUP_PHASES]
    stamps = {step: 1000.0 + 0.1 * i for i, step in enumerate(steps)}
    phases = startup_phases(stamps)
    assert [name for name, _, _ in phases] == [name for name, _, _ in STARTUP_PHASES]
    assert all(abs(took - 0.1) < 1e-9 for _, took, _ in phases)
    assert abs(phases[-1][2] - sum(took for _, took, _ in phases)) < 1e-9  # "at" of the last: the whole start


def test_a_phase_with_a_step_missing_is_left_out():
    stamps = {"cli_started": 10.0, "cli_entered": 10.2, "launching": 10.3, "seen": 11.0, "printed": 11.1}
    assert [name for name, _, _ in startup_phases(stamps)] == [
        "cli: interpreter, imports", "cli: options, home", "cli: printed ready"]


def test_this_process_started_before_now_and_not_long_ago():
    age = time.time() - process_started_at()
    assert 0 < age < 3600  # pytest has run for a while, not for hours
