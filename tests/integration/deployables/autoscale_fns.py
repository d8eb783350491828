"""What the autoscaling tests call: a 50 ms function (one executor serves about 20 a second) that names the
executor it ran on, and a DAG of two such steps."""

import time

import cbctl

#: Seconds one call of ``work`` takes.
WORK_S = 0.05


@cbctl.function
def work(cb, x):
    time.sleep(WORK_S)
    return [cb.getid(), x]


@cbctl.function
def work_then(cb, ran):
    return [cb.getid(), ran[1] + 1]


cbctl.dag("work_chain", [work, work_then])
