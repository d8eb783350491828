"""Small functions the integration tests deploy (not an example: each one exposes one behaviour)."""

import time

import cbctl


@cbctl.function
def echo(cb, *args):
    """Each argument with its type name, so a test sees how the CLI parsed it."""
    return [[type(a).__name__, a] for a in args]


@cbctl.function
def fail(cb, message):
    raise ValueError(message)


@cbctl.function
def whoami(cb, *_ignored):
    return cb.getid()


@cbctl.function
def nap(cb, seconds, marker=None):
    """Sleep; with ``marker``, first record under that key which executor is napping."""
    if marker:
        cb.put(marker, cb.getid())
    time.sleep(seconds)
    return seconds


@cbctl.function
def hold(cb, gate, marker, result):
    """Record under ``marker`` which executor runs this, then wait (60 s at most) until the key ``gate`` is
    written: a call a test ends when it chooses, not after a guessed time."""
    cb.put(marker, cb.getid())
    deadline = time.monotonic() + 60
    while cb.get(gate, None) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return result


@cbctl.function
def writekey(cb, key, value):
    cb.put(key, value)
    return cb.get(key)


@cbctl.function
def where_a(cb, x):
    return [cb.getid()]


@cbctl.function
def where_b(cb, seen):
    return seen + [cb.getid()]


@cbctl.function
def left(cb, x):
    return ["left", x]


@cbctl.function
def right(cb, x):
    return ["right", x]


@cbctl.function
def join(cb, first, second):
    return [first, second]


cbctl.dag("where", [where_a, where_b])
# two sources feeding one sink; ``join`` receives its inputs in the order of its incoming edges
cbctl.dag("two_sources", functions=[left, right, join], edges=[(left, join), (right, join)])
cbctl.dag("two_sources_swapped", functions=[left, right, join], edges=[(right, join), (left, join)])
