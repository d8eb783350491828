"""What a caller is told when user code fails on an executor (or a deploy file fails to import).

Everything here runs only after something already failed, never on a call that succeeds. It trims
tracebacks to the user's own frames (the executor's and importlib's frames say nothing to the user), and
replaces the two messages every first-time user meets with ones that name the mistake:

- calling a function with the wrong number of arguments: Python's count includes ``cb``, which the caller
  never passes, so "takes 3 positional arguments but 4 were given" reads as off by one;
- returning something that cannot be serialised: the error comes from cloudpickle, deep in the executor,
  after the function itself returned fine.
"""

from __future__ import annotations

import inspect
import traceback
from pathlib import Path
from typing import Any

#: Frames from files under here are cbctl's own: dropped from a traceback that has frames of the user's.
_PACKAGE_DIR = str(Path(__file__).resolve().parent.parent) + "/"


class ResultNotSerializable(TypeError):
    """A function returned a value that msgpack and cloudpickle both refuse (a lock, a generator, a socket)."""


class WrongArgumentCount(TypeError):
    """A function was called with more or fewer arguments than it takes after ``cb``."""


#: The errors above, by the name a caller sees as ``FunctionError.remote_type``: cbctl's diagnoses of how
#: user code was called or what it returned, not exceptions the code raised (the CLI words them so).
DIAGNOSES = frozenset({ResultNotSerializable.__name__, WrongArgumentCount.__name__})


def _is_internal(filename: str) -> bool:
    return filename.startswith(_PACKAGE_DIR) or filename.startswith("<frozen ")


def user_traceback(exc: BaseException, only_users: bool = False) -> str:
    """The traceback text of ``exc`` (and what it chains to), without cbctl's and importlib's frames when
    at least one frame is the user's (or ``only_users``: a deploy file's import, where they never matter);
    all frames otherwise, so a fault in cbctl itself still shows where."""
    formatted = traceback.TracebackException.from_exception(exc)
    link: traceback.TracebackException | None = formatted
    while link is not None:
        if only_users or any(not _is_internal(frame.filename) for frame in link.stack):
            link.stack = traceback.StackSummary.from_list([f for f in link.stack if not _is_internal(f.filename)])
        link = link.__cause__ or link.__context__
    return "".join(formatted.format())


def unserializable_result(function: str, result: Any, exc: BaseException) -> ResultNotSerializable:
    """The error a caller gets for a result that cannot travel (``exc`` is what the encoder raised)."""
    return ResultNotSerializable(
        f"function {function!r} returned a {type(result).__name__}, which cannot be serialised ({exc}): return "
        "plain data (None, bool, int, float, str, bytes, list, tuple, dict), a numpy array or a picklable object")


def explain_call_error(exc: BaseException, function: str, target: Any, args: list[Any] | None) -> BaseException:
    """``exc`` itself, unless it is the TypeError of calling ``target`` with arguments it does not take; then
    a ``WrongArgumentCount`` that counts the arguments after ``cb`` and says what the function takes."""
    if type(exc) is not TypeError or target is None or args is None:
        return exc
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None or not _is_internal(tb.tb_frame.f_code.co_filename):
        return exc  # raised inside the user's code: its own TypeError, reported as it is
    try:
        signature = inspect.signature(target)
        signature.bind(None, *args)
    except TypeError:
        pass  # the binding fails too: the arguments are what is wrong
    except ValueError:
        return exc  # no signature to explain with (a builtin)
    else:
        return exc
    parameters = list(signature.parameters.values())
    if not parameters or parameters[0].kind not in (parameters[0].POSITIONAL_ONLY,
                                                       parameters[0].POSITIONAL_OR_KEYWORD):
        return WrongArgumentCount(
            f"function {function!r} is defined as {function}{signature}, but every function receives the user "
            f"library as its first argument: define it as def {function}(cb, ...)")
    return WrongArgumentCount(
        f"function {function!r} takes {_takes(parameters[1:])} after cb ({function}{signature}), but was called "
        f"with {len(args)}: pass one value per parameter after cb ({exc})")


def _takes(parameters: list[inspect.Parameter]) -> str:
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = sum(1 for p in positional if p.default is p.empty)
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return f"at least {required} argument{'s' if required != 1 else ''}"
    if required == len(positional):
        return f"{required} argument{'s' if required != 1 else ''}"
    return f"{required} to {len(positional)} arguments"


def check_takes_user_library(target: Any, name: str) -> str:
    """An error message if ``target`` (a function, or a class's ``run``) cannot receive ``cb`` first, else ''.
    Checked at registration, so the mistake is named before any call is made."""
    is_class = isinstance(target, type)
    try:
        signature = inspect.signature(target.run if is_class else target)
    except (TypeError, ValueError):
        return ""  # a callable Python cannot describe: let it run
    parameters = list(signature.parameters.values())
    if is_class and not isinstance(inspect.getattr_static(target, "run", None), (staticmethod, classmethod)):
        parameters = parameters[1:]  # self
    if any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in parameters):
        return ""
    if is_class:
        return (f"{name}.run{signature} takes nothing after self, but it receives the user library first: "
                "define it as run(self, cb, ...)")
    return (f"{name}{signature} takes no positional parameter, but every function receives the user library "
            f"first: define it as {name}(cb, ...)")


def cut(text: str, limit: int, where: str = "", keep_tail: bool = False) -> str:
    """``text`` if it is at most ``limit`` characters, else its first ``limit`` (with ``keep_tail``, its first
    two thirds and last third, where a traceback's raising line is) and a note of how much was cut and
    ``where`` the whole text is."""
    if len(text) <= limit:
        return text
    note = f" [... {len(text) - limit:,} of {len(text):,} characters cut{'; in full in ' + where if where else ''}] "
    if not keep_tail:
        return text[:limit] + note
    head = limit * 2 // 3
    return text[:head] + note + text[len(text) - (limit - head):]
