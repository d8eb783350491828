"""Functions that hand cbctl values of a chosen size (for tests/integration/test_limits.py)."""

import threading
import time

import cbctl


@cbctl.function
def lim_blob(cb, size):
    """Returns ``size`` bytes."""
    return b"x" * size


@cbctl.function
def lim_size(cb, value):
    """The length of what it was given (a DAG's second step, or a call with a big argument)."""
    return len(value)


@cbctl.function
def lim_put(cb, key, size):
    """Writes ``size`` bytes under ``key``."""
    cb.put(key, b"x" * size)
    return "stored"


@cbctl.function
def lim_put_caught(cb, key, size):
    """Writes ``size`` bytes under ``key``, and returns the error's text if cbctl refuses it."""
    try:
        cb.put(key, b"x" * size)
    except cbctl.MessageTooLarge as exc:
        return f"refused: {exc}"
    return "stored"


@cbctl.function
def lim_continue(cb, size):
    """Hands the call on with ``size`` bytes as the next function's argument."""
    return cbctl.Continue("lim_size", b"x" * size)


@cbctl.function
def lim_lock(cb):
    """Returns something that cannot be serialised, as the first step of a DAG."""
    return threading.Lock()


@cbctl.function
def lim_nap(cb, seconds):
    time.sleep(seconds)
    return seconds


cbctl.dag("lim_chain", [lim_blob, lim_size])
cbctl.dag("lim_lock_chain", [lim_lock, lim_size])
