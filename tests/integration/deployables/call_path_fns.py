"""Functions the call-path tests deploy: odd exceptions, writes handed on with a continuation."""

import cbctl


class UnprintableError(Exception):
    """An exception whose message cannot even be made: ``str()`` of it raises."""

    def __str__(self):
        raise RuntimeError("this exception has no message")


@cbctl.function
def raise_unprintable(cb):
    raise UnprintableError()


@cbctl.function
def read_key(cb, key):
    """[executor id, the key's value or None]."""
    return [cb.getid(), cb.get(key, None)]


@cbctl.function
def whoami(cb, *_ignored):
    return cb.getid()


@cbctl.function
def write_then_continue(cb, key, value):
    """Write, then hand the call on: the caller's result comes from ``whoami``."""
    cb.put(key, value)
    return cbctl.Continue("whoami")


@cbctl.function
def read_then_continue(cb, key):
    """Read under the call's mode (a repeatable-read snapshot is kept), then hand the call on."""
    cb.get(key, None)
    return cbctl.Continue("whoami")


@cbctl.function
def read_first(cb, key, seconds):
    """A DAG's first step: read under the call's mode (a repeatable-read snapshot is kept until the call ends)."""
    cb.get(key, None)
    return seconds


@cbctl.function
def nap_after(cb, seconds):
    """The DAG's sink: holds the call (and so the first step's snapshot) for ``seconds``."""
    import time

    time.sleep(seconds)
    return cb.getid()


cbctl.dag("read_then_nap", [read_first, nap_after])
