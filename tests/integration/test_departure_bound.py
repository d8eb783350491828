"""A scale-down never drops a call: an executor that departs with a call running longer than the departure
bound is stopped, and that call is dispatched again on an executor that stays (at least once)."""

from __future__ import annotations

import json
import time


def slow(cb, i, seconds):
    cb.put(f"slow-on-{i}", cb.getid())
    time.sleep(seconds)
    return [i, cb.getid()]


def test_a_call_longer_than_the_departure_bound_is_dispatched_again_not_lost(start_cluster):
    handle = start_cluster(executors=2, extra_args=("--departure-timeout", "2"))
    client = handle.client()
    client.register(slow, name="slow")
    futures = [client.call_async("slow", i, 6) for i in range(2)]
    running_on = lambda: {client.get(k) for k in client.list_keys("slow-on-")}  # noqa: E731
    handle.wait_for(lambda: running_on() == {"executor-0", "executor-1"}, timeout=15,
                    what="one call running on each executor")

    started = time.monotonic()
    result = json.loads(handle.cli("scale", "--executors", "1", "--json", check=True, timeout=60).stdout)
    took = time.monotonic() - started
    assert result == {"executors": 1, "started": [], "stopped": ["executor-1"], "cut_short": ["executor-1"]}
    assert took < 6, f"the scale-down waited {took:.1f} s, past the 2 s bound, for a call still running"

    # both calls return, neither with CallTimeout: the cut-short one ran again on the executor that stays
    results = sorted(future.result(timeout=40) for future in futures)
    assert results == [[0, "executor-0"], [1, "executor-0"]]
    supervisor_log = (handle.home / "logs" / "supervisor-0.log").read_text()
    assert "executor-1 did not leave within 2 s: killing it; its calls are dispatched again" in supervisor_log
    scheduler_log = (handle.home / "logs" / "scheduler-0.log").read_text()
    assert "dispatching its 1 call(s) again" in scheduler_log
