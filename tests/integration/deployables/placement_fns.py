"""What the placement tests and `benchmarks.placement` deploy: a rendezvous (each call writes its key, then
waits until every call of its round wrote one: Cloudburst's distributed-aggregation pattern), a 50 ms nap,
a no-op, and the warm-up mix (a 2-function DAG, a call with a reference, a DAG of a nap)."""

import time

import cbctl

#: Seconds one rendezvous call waits for the others before it fails (a test's bound, not a sleep).
RENDEZVOUS_WAIT_S = 15.0
#: Seconds ``nap`` sleeps.
NAP_S = 0.05


@cbctl.function
def rendezvous(cb, round_id, index, n):
    cb.put(f"rendezvous/{round_id}/{index}", cb.getid())
    deadline = time.monotonic() + RENDEZVOUS_WAIT_S
    while time.monotonic() < deadline:
        if all(cb.get(f"rendezvous/{round_id}/{i}", None) is not None for i in range(n)):
            return cb.getid()
        time.sleep(0.001)
    missing = [i for i in range(n) if cb.get(f"rendezvous/{round_id}/{i}", None) is None]
    raise TimeoutError(f"round {round_id}: calls {missing} never wrote their keys (queued behind this one?)")


@cbctl.function
def nap(cb, x):
    time.sleep(NAP_S)
    return x


@cbctl.function
def noop(cb, x):
    return x


@cbctl.function
def bump(cb, x):
    return x + 1


@cbctl.function
def double(cb, x):
    return 2 * x


@cbctl.function
def read_ref(cb, value):
    return len(value)


cbctl.dag("bump_double", [bump, double])
cbctl.dag("nap_double", [nap, double])
