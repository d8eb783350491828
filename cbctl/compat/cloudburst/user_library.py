"""What runs on the executors: Cloudburst's user library over cbctl's, and the bodies the compat client registers.

Every function or class a ``CloudburstConnection`` registers is registered as a ``FunctionBody`` class.
cbctl calls its ``run`` with its user library ``cb``, which hands the user's code a ``CloudburstUserLibrary``
over that ``cb`` and the arguments as Cloudburst's executor does (a tuple argument, such as an upstream
function's tuple result, is spread into several arguments). When an executor loads a body, it runs
``install()`` before the user's code is unpickled (see ``InstallFirst``), so that code may refer to, and import,
``cloudburst.*`` and ``anna.lattices`` there, as on Cloudburst.

The other callables here are the small helper functions the compat client adds to DAGs (see ``shapes.py``):
``FirstValid`` after each MULTIEXEC function, ``TailSource`` / ``Tail`` for ``output_key`` and continuations, and
``FixedArgs`` for arguments given to functions that are not sources.
The helpers are module-level classes, pickled by reference; a body class travels by value, with the user's code.
"""

from __future__ import annotations

import pickle
from typing import Any

_installed = False


def _install_once() -> None:
    global _installed
    if not _installed:
        _installed = True
        from cbctl.compat.cloudburst import install  # the package imports this module: import late

        install()


class InstallFirst:
    """The first entry of every body class: unpickling it runs ``install()``. A class travels as its dict, whose
    entries are unpickled in order, so the names are installed in an executor before the user's function, which
    may hold the module ``cloudburst`` itself as a global (``import cloudburst.shared.reference`` in the script),
    is unpickled after it. Pickling it runs nothing: the client's process is left as it was."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return _installed_marker, ()


def _installed_marker() -> InstallFirst:
    _install_once()
    return InstallFirst()


class CloudburstUserLibrary:
    """Cloudburst's user library (``cloudburst.server.executor.user_library``) over cbctl's ``cb``."""

    def __init__(self, cb: Any) -> None:
        self._cb = cb

    def put(self, ref: str, value: Any) -> bool:
        """Store ``value`` (any value, an ``anna.lattices`` object included: it is stored as that object)."""
        self._cb.put(ref, value)
        return True

    def get(self, ref: str | list[str], deserialize: bool = True) -> Any:
        """The value under ``ref``, None if there is none; for a list of keys, a dict of key -> value or None."""
        if type(ref) is list:
            return {key: self._cb.get(key, None) for key in ref}
        return self._cb.get(ref, None)

    def getid(self) -> str:
        """The id ``send`` reaches this function by: its executor's id (Cloudburst's was an (ip, thread) pair)."""
        return self._cb.getid()

    def send(self, dest: str, bytestr: Any) -> None:
        self._cb.send(dest, bytestr)

    def recv(self) -> list[tuple[str, Any]]:
        """The messages that have arrived, as ``(sender id, message)``; returns at once (empty when none)."""
        return self._cb.recv()

    def close(self) -> None:
        """Drop unread messages, as Cloudburst's executor does after each request."""
        self._cb.recv()

    # the names Cloudburst's documentation gives these (docs/function-execution.md)
    get_object = get
    put_object = put
    get_id = getid


def spread_tuples(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Cloudburst's argument rule: each tuple argument becomes its elements (``_exec_func_normal``)."""
    if not any(type(a) is tuple for a in args):
        return args
    spread: tuple[Any, ...] = ()
    for arg in args:
        spread += arg if type(arg) is tuple else (arg,)
    return spread


class FunctionBody:
    """What cbctl runs for one Cloudburst function or class: cbctl registers a subclass made by ``body_class``,
    which it constructs once per executor and calls ``run(cb, *args)`` on per call. A Cloudburst class is
    constructed on the first call, with the user library and its init arguments, and its ``run`` called after."""

    target: Any = None  # the user's function (a staticmethod in the subclass) or class
    init_args: tuple[Any, ...] | None = None  # None: ``target`` is a function

    def __init__(self) -> None:
        self._instance: Any = None
        self._library: CloudburstUserLibrary | None = None

    def run(self, cb: Any, *args: Any) -> Any:
        library = self._library
        if library is None or library._cb is not cb:
            library = self._library = CloudburstUserLibrary(cb)
        args = spread_tuples(args)
        if self.init_args is None:
            return self.target(library, *args)
        if self._instance is None:
            self._instance = self.target(library, *self.init_args)
        return self._instance.run(library, *args)


def body_class(target: Any, init_args: tuple[Any, ...] | None = None) -> type[FunctionBody]:
    """The class cbctl registers for ``target``. It carries the user's code as a class attribute and claims the
    user's module, so that cbctl records the user's source file at registration and puts it back on the code
    it loads on the executors: a remote traceback names the user's file and lines."""
    namespace = {"_install_first": InstallFirst(),  # first: see InstallFirst
                 "target": staticmethod(target) if init_args is None else target, "init_args": init_args,
                 "__module__": getattr(target, "__module__", None) or __name__}
    return type(f"CloudburstBody_{getattr(target, '__name__', 'function')}", (FunctionBody,), namespace)


def _same(result: Any, invalid: Any) -> bool:
    """Whether ``result`` is the invalid result ``invalid``: equal, or (for values whose ``==`` is not a
    truth value, numpy arrays say) pickled alike, which is how Cloudburst compared them."""
    try:
        equal = result == invalid
        if isinstance(equal, bool):
            return equal
    except Exception:  # noqa: BLE001 - a user type's __eq__ may raise
        pass
    try:
        return pickle.dumps(result) == pickle.dumps(invalid)
    except Exception:  # noqa: BLE001 - unpicklable: not the same as a value that was pickled
        return False


class NoValidResult(ValueError):
    """Every run of a MULTIEXEC function returned one of its invalid results."""


class FirstValid:
    """After a MULTIEXEC function: of its results (cbctl gathers them in arrival order), the first that is
    not one of ``invalid_results`` goes on; Cloudburst forwarded the valid results as they came."""

    def __init__(self, function: str, invalid_results: list[Any]) -> None:
        self.function = function
        self.invalid_results = list(invalid_results)

    def __call__(self, cb: Any, results: list[Any]) -> Any:
        for result in results:
            if not any(_same(result, invalid) for invalid in self.invalid_results):
                return result
        raise NoValidResult(f"every result of MULTIEXEC function {self.function!r} was one of its invalid results "
                            f"({len(results)} runs)")


class FixedArgs:
    """A source added for a function given fixed arguments: returns them as one tuple, which the function's body
    spreads ahead of its upstream results (tuples among them spread too, as Cloudburst spread every argument)."""

    def __call__(self, cb: Any, *args: Any) -> tuple[Any, ...]:
        return spread_tuples(args)


class CallTail:
    """What happens after a DAG's sink in one call: its result put under ``output_key``, and/or the call handed
    on to the DAG ``continuation`` names, with ``continuation_args`` and the result (Cloudburst's continuation)."""

    def __init__(self, output_key: str | None = None, continuation: str | None = None,
                 continuation_args: list[Any] | None = None) -> None:
        self.output_key = output_key
        self.continuation = continuation
        self.continuation_args = list(continuation_args or ())


class TailSource:
    """A source added to a DAG called with a ``CallTail``: passes it on to ``Tail``."""

    def __call__(self, cb: Any, tail: CallTail) -> CallTail:
        return tail


class Tail:
    """The sink added to a DAG called with a ``CallTail``: joins the DAG's result with it and carries it out."""

    def __call__(self, cb: Any, *inputs: Any) -> Any:
        (tail,) = [i for i in inputs if type(i) is CallTail]
        (result,) = [i for i in inputs if type(i) is not CallTail]
        if tail.output_key:
            cb.put(tail.output_key, result)
        if tail.continuation:
            from cbctl import Continue

            return Continue(tail.continuation, *tail.continuation_args, result)
        return result
