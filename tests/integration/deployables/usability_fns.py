"""Functions that make the mistakes a first-time user makes (tests/integration/test_usability.py)."""

import threading

import cbctl


@cbctl.function
def ux_lock(cb):
    """Returns something that cannot be serialised."""
    return threading.Lock()


@cbctl.function
def ux_add(cb, a, b):
    return a + b


@cbctl.function
def ux_inner_type_error(cb, x):
    """A TypeError of the function's own: reported as it is, not as a wrong argument count."""
    return len(x)


@cbctl.function
def ux_identity(cb, value):
    return value


@cbctl.function
def ux_write(cb, key, value):
    """Writes ``key`` (causally in a causal call) and returns what the call reads back."""
    cb.put(key, value)
    return cb.get(key)


cbctl.dag("ux_chain", [ux_identity, ux_inner_type_error])
