"""Functions the placement-policy tests deploy: a chain slow enough to saturate its executors, a chain whose
first step naps (so calls wait upstream for long), and a reader of a referenced value that says where it ran.
``nap_chain`` is declared first, so on a fresh cluster its functions are pinned on executor-0 and executor-1,
and ``slow_chain``'s on executor-2 and executor-3."""

import time

import cbctl

#: Seconds each step of ``slow_chain`` sleeps: with a few dozen calls in flight, its executors stay busy.
STEP_S = 0.005
#: Seconds ``nap_first`` sleeps: longer than any quiet period a departing executor could wait for, so a
#: departure that only waited for quiet would lose the calls still queued upstream of it.
NAP_S = 0.4


@cbctl.function
def nap_first(cb, x):
    time.sleep(NAP_S)
    return x


@cbctl.function
def nap_then(cb, x):
    return [cb.getid(), x]


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


cbctl.dag("nap_chain", [nap_first, nap_then])
cbctl.dag("slow_chain", [slow_step, slow_tail])
