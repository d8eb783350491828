"""Whatever a user's function raises comes back to its caller as a FunctionError, and its executor stays up:
KeyboardInterrupt, SystemExit, GeneratorExit and bare BaseException, from the function, from a class's
constructor, from a batch, and from the pickling of its result."""

from __future__ import annotations

import pytest

import cbctl


class Interrupting:
    def __reduce__(self):
        raise KeyboardInterrupt("from __reduce__")


def raise_keyboard_interrupt(cb):
    raise KeyboardInterrupt("pressed nothing")


def raise_system_exit(cb):
    raise SystemExit(7)


def raise_generator_exit(cb):
    raise GeneratorExit("closed")


def raise_base_exception(cb):
    raise BaseException("bare")


def return_unpicklable(cb):
    return Interrupting()


def batch_interrupt(cb, xs):
    raise KeyboardInterrupt("in a batch")


class InterruptedInit:
    def __init__(self):
        raise KeyboardInterrupt("in __init__")

    def run(self, cb):
        return "never"


CASES = [
    (raise_keyboard_interrupt, "KeyboardInterrupt", {}),
    (raise_system_exit, "SystemExit", {}),
    (raise_generator_exit, "GeneratorExit", {}),
    (raise_base_exception, "BaseException", {}),
    (return_unpicklable, "ResultNotSerializable", {}),
    (InterruptedInit, "KeyboardInterrupt", {}),
    (batch_interrupt, "KeyboardInterrupt", {"batching": True}),
]


def test_every_base_exception_from_user_code_is_a_function_error_and_the_executor_stays(start_cluster):
    handle = start_cluster(executors=1)
    client = handle.client()
    executor_pid = handle.pid_of("executor-0")
    client.register(lambda cb, x: x + 1, name="inc")
    for target, remote_type, options in CASES:
        name = target.__name__
        client.register(target, name=name, **options)
        args = (1,) if options.get("batching") else ()
        with pytest.raises(cbctl.FunctionError) as failed:
            client.call(name, *args, timeout=20)
        assert failed.value.remote_type == remote_type, (name, failed.value)
        assert client.call("inc", 1, timeout=20) == 2, f"the executor must serve on after {name}"
    assert handle.pid_of("executor-0") == executor_pid
    (entry,) = [p for p in handle.cluster_file().processes if p.role == "executor"]
    assert entry.restarts == 0
