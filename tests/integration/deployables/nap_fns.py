"""A chain whose first step naps, so calls wait upstream of the second step for long: what the departure test
deploys (first, on a fresh cluster, so nap_first is pinned on executor-0 and nap_then on executor-1)."""

import time

import cbctl

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


cbctl.dag("nap_chain", [nap_first, nap_then])
