"""What the fault tests deploy: a 2-function DAG whose second step writes a key per call."""

import os
import time

import cbctl


@cbctl.function
def fault_double(cb, tag, x):
    time.sleep(0.02)  # long enough that a killed executor is almost always in the middle of a call
    return [tag, 2 * x]


@cbctl.function
def fault_record(cb, tagged):
    tag, doubled = tagged
    cb.put(f"fault-fn/{tag}", doubled + 1)
    return doubled + 1


cbctl.dag("fault_chain", [fault_double, fault_record])


@cbctl.function
def crash_executor(cb, x):
    """Takes its executor down with it, every time (as a segfaulting extension would)."""
    os._exit(3)


@cbctl.function
def fan_split(cb, tag, x):
    return [tag, x]


@cbctl.function
def fan_left(cb, tagged):
    time.sleep(0.01)
    return [tagged[0], 2 * tagged[1]]


@cbctl.function
def fan_right(cb, tagged):
    time.sleep(0.01)
    return [tagged[0], 3 * tagged[1]]


@cbctl.function
def fan_merge(cb, left, right):
    total = left[1] + right[1]
    cb.put(f"fault-fn/{left[0]}", total)
    return total


# fan_right first: on an executor running both branches, the right one runs (and reaches the join) first, which
# is the order in which a join could mix an older attempt's left result with a newer attempt's right one
cbctl.dag("fault_fan", [fan_split, fan_left, fan_right, fan_merge],
          edges=[(fan_split, fan_right), (fan_split, fan_left), (fan_right, fan_merge), (fan_left, fan_merge)])
