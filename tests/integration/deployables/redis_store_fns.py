"""Functions the store-backend tests deploy: a writer and a reader DAG (each pinned to an executor of its own by
registration), and a counter that writes through the store on every call."""

import cbctl


@cbctl.function
def write_value(cb, key, value):
    cb.put(key, value)
    return cb.getid()


@cbctl.function
def read_value(cb, key):
    return [cb.getid(), cb.get(key, None)]


@cbctl.function
def bump(cb, key, value):
    """Write, then read back through this executor's cache."""
    cb.put(key, value)
    return cb.get(key)


# One-function DAGs: registering a DAG pins its functions, the first on an executor with nothing pinned yet, so
# the writer and the reader run on two different executors.
cbctl.dag("writer", [write_value])
cbctl.dag("reader", [read_value])
