"""A chain and a fan-out/fan-in DAG: `cbctl deploy examples/pipeline.py`, then
`cbctl call pipeline 3` (-> 16) and `cbctl call diamond 5` (-> 25)."""

import cbctl


@cbctl.function
def increment(cb, x):
    return x + 1


@cbctl.function(name="sq")
def square(cb, x):
    return x * x


@cbctl.function
def split(cb, x):
    return x


@cbctl.function
def double(cb, x):
    return 2 * x


@cbctl.function
def triple(cb, x):
    return 3 * x


@cbctl.function
def total(cb, doubled, tripled):
    return doubled + tripled


cbctl.dag("pipeline", [increment, square])
cbctl.dag("diamond", functions=[split, double, triple, total],
          edges=[(split, double), (split, triple), (double, total), (triple, total)])
