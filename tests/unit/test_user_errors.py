"""What a caller is told when user code fails (cbctl/runtime/user_errors.py), without processes."""

from __future__ import annotations

import threading

import pytest

from cbctl.runtime import user_errors
from cbctl.runtime.user_errors import (
    ResultNotSerializable,
    WrongArgumentCount,
    check_takes_user_library,
    explain_call_error,
    unserializable_result,
    user_traceback,
)
from cbctl.runtime.wire import serialization


def add(cb, a, b=0):
    return a + b


def own_type_error(cb, x):
    return len(x)


def call_like_the_executor(target, args):
    """Calls ``target`` and catches its TypeError in a frame of cbctl's package, as the executor does (this
    test file is not in the package, so its frames count as the user's)."""
    runner = compile("try:\n    target(None, *args)\nexcept TypeError as exc:\n    caught = exc\n",
                     user_errors.__file__, "exec")
    scope = {"target": target, "args": args}
    exec(runner, scope)
    return scope["caught"]


INTERNAL = f'File "{user_errors.__file__}"'


@pytest.mark.parametrize(("args", "says"), [((), "takes 1 to 2 arguments after cb"),
                                            ((1, 2, 3), "but was called with 3")])
def test_a_wrong_argument_count_is_explained_without_cb(args, says):
    explained = explain_call_error(call_like_the_executor(add, args), "add", add, list(args))
    assert isinstance(explained, WrongArgumentCount) and says in str(explained)
    assert "add(cb, a, b=0)" in str(explained)


def test_the_functions_own_type_error_is_left_alone():
    raised = call_like_the_executor(own_type_error, (5,))
    assert explain_call_error(raised, "own_type_error", own_type_error, [5]) is raised


def test_a_function_without_any_parameter_is_told_to_take_cb():
    def bare():
        return 1

    explained = explain_call_error(call_like_the_executor(bare, ()), "bare", bare, [])
    assert "def bare(cb, ...)" in str(explained)
    assert "bare() takes no positional parameter" in check_takes_user_library(bare, "bare")
    assert check_takes_user_library(add, "add") == ""
    assert check_takes_user_library(lambda *args: 1, "star") == ""

    class NoCb:
        def run(self):
            return 1

    class WithCb:
        def run(self, cb):
            return 1

    assert "run(self, cb, ...)" in check_takes_user_library(NoCb, "NoCb")
    assert check_takes_user_library(WithCb, "WithCb") == ""


def test_an_unserializable_result_names_the_function_and_the_type():
    lock = threading.Lock()
    with pytest.raises(TypeError) as raised:
        serialization.encode(lock)
    error = unserializable_result("locker", lock, raised.value)
    assert isinstance(error, ResultNotSerializable)
    assert str(error).startswith("function 'locker' returned a lock, which cannot be serialised")


def test_tracebacks_keep_the_users_frames_only_when_there_are_some():
    text = user_traceback(call_like_the_executor(own_type_error, (5,)))
    assert "in own_type_error" in text and INTERNAL not in text
    inner = call_like_the_executor(add, ())  # no user frame at all: everything is kept
    assert INTERNAL in user_traceback(inner)
    assert INTERNAL not in user_traceback(inner, only_users=True)


def test_cut_keeps_short_text_and_bounds_long_text():
    from cbctl.runtime.user_errors import cut

    assert cut("short", 10) == "short"
    long = "a" * 1000 + "TAIL"
    head_only = cut(long, 100, "the log")
    assert head_only.startswith("a" * 100) and "904 of 1,004 characters cut; in full in the log" in head_only
    assert len(head_only) < 200 and "TAIL" not in head_only
    both = cut(long, 100, keep_tail=True)
    assert both.endswith("TAIL") and len(both) < 200
