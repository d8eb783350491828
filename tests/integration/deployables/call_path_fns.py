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
def read_too(cb, key, seconds):
    """The DAG's other source: with it, the sink joins two steps and is placed by its pins, apart from
    ``read_first`` (a chain's next step would run on ``read_first``'s executor, which could then not report the
    snapshot while it naps)."""
    return seconds


@cbctl.function
def nap_after(cb, seconds, _seconds_too):
    """The DAG's sink: holds the call (and so the first step's snapshot) for ``seconds``."""
    import time

    time.sleep(seconds)
    return cb.getid()


cbctl.dag("read_then_nap", [read_first, read_too, nap_after],
          edges=[(read_first, nap_after), (read_too, nap_after)])


# --- large values (frames of their own, see wire/frames.py) -------------------------------------------------


@cbctl.function
def big_sum(cb, array):
    """[its size, its sum, whether it may be written]: what a function sees of a large argument."""
    return [int(array.nbytes), int(array.sum()), bool(array.flags.writeable)]


@cbctl.function
def big_double(cb, array):
    array *= 2  # in place: a received argument is the function's own
    return array


@cbctl.function
def big_same(cb, array):
    return array


@cbctl.function
def big_continue(cb, array):
    return cbctl.Continue("big_sum", array)


@cbctl.function
def big_send_to_self(cb, array):
    """A large direct message, to this executor's own inbox and back out."""
    cb.send(cb.getid(), array)
    ((_sender, received),) = cb.recv(timeout=5)
    return received


cbctl.dag("big_chain", [big_double, big_same])
