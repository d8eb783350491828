"""Functions the placement-policy tests deploy: a chain slow enough to saturate its executors, and a reader
of a referenced value that says where it ran."""

import time

import cbctl

#: Seconds each step of ``slow_chain`` sleeps: with a few dozen calls in flight, its executors stay busy.
STEP_S = 0.005


@cbctl.function
def slow_step(cb, x):
    time.sleep(STEP_S)
    return x + 1


@cbctl.function
def slow_tail(cb, x):
    time.sleep(STEP_S)
    return x * 2


@cbctl.function
def blob_size(cb, blob):
    """[executor id, len(blob)]: called with a ``cbctl.Ref``, the executor resolves it (through its cache)."""
    return [cb.getid(), len(blob)]


cbctl.dag("slow_chain", [slow_step, slow_tail])
