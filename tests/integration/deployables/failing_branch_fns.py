"""A diamond whose one branch fails while the other succeeds later: the join must not keep the survivor."""

import time

import cbctl


@cbctl.function
def fork(cb, x):
    return x


@cbctl.function
def breaks(cb, x):
    raise RuntimeError(f"branch failed on {x}")


@cbctl.function
def survives(cb, x):
    time.sleep(0.2)  # arrives at the join after the other branch has failed the call
    cb.put(f"failing_branch/survived/{x}", x)  # the test's sign that this branch is on its way to the join
    return x


@cbctl.function
def joins(cb, a, b):
    return a + b


cbctl.dag("half_broken", functions=[fork, breaks, survives, joins],
          edges=[(fork, breaks), (fork, survives), (breaks, joins), (survives, joins)])
