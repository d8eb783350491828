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
