"""What a deployable file declares: ``@cbctl.function`` and ``cbctl.dag``, and loading such a file.

Declarations only record what the file asks for; nothing talks to a cluster until ``cbctl deploy`` (or
``Client.deploy_file``) registers what ``load_file`` collected. A decorated function stays a plain
function, callable locally as before.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle

from cbctl.errors import CbctlError, InvalidArgument, InvalidDag
from cbctl.runtime import user_errors
from cbctl.runtime.code_loading import source_file_of
from cbctl.runtime.defaults import DEPLOY_IMPORT_TIMEOUT_S
from cbctl.runtime.wire import serialization


@dataclass
class FunctionSpec:
    name: str
    target: Callable[..., Any] | type
    gpu: bool = False
    batching: bool = False
    init_args: tuple[Any, ...] = ()


@dataclass
class DagSpec:
    name: str
    functions: list[str]
    edges: list[list[str]]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TriggerSpec:
    name: str
    prefix: str
    function: str
    batch: int = 0
    window: float = 0.0
    join: list[str] = field(default_factory=list)
    values: bool = False


@dataclass
class Declarations:
    functions: list[FunctionSpec] = field(default_factory=list)
    dags: list[DagSpec] = field(default_factory=list)
    triggers: list[TriggerSpec] = field(default_factory=list)
    #: mistakes seen while declaring (two functions of one name, an empty name): a deploy refuses the file
    problems: list[str] = field(default_factory=list)


@dataclass
class PreparedFunction:
    """A declared function checked and serialised, ready to register: what ``RegisterFunction`` carries."""

    name: str
    code: bytes
    options: dict[str, Any]


@dataclass
class PreparedDeploy:
    """Everything one deploy file registers, checked and serialised (in the import's own process)."""

    functions: list[PreparedFunction] = field(default_factory=list)
    dags: list[DagSpec] = field(default_factory=list)
    triggers: list[TriggerSpec] = field(default_factory=list)


_declared = Declarations()  # what code imported outside ``load_file`` declares (kept, never registered)
#: While ``load_file`` imports a file, its import thread's declarations go to that thread's own ``Declarations``,
#: so an import given up on (still running) can never add to a later one's.
_importing = threading.local()


def _current() -> Declarations:
    return getattr(_importing, "declared", _declared)


def function(target: Callable[..., Any] | type | None = None, *, name: str | None = None, gpu: bool = False,
             batching: bool = False, init_args: Sequence[Any] = ()) -> Any:
    """Declare a function (or a class with ``run(cb, ...)``) for deployment, as ``@cbctl.function`` or
    ``@cbctl.function(name=..., gpu=..., batching=...)``. Its first parameter receives the user library."""

    def declare(obj: Callable[..., Any] | type) -> Any:
        declared = _current()
        if name is not None and (not isinstance(name, str) or not name):
            declared.problems.append(f"{_where(obj)} is declared with name={name!r}: give a non-empty name, or "
                                     "leave name= out to use the function's own")
        spec = FunctionSpec(name or getattr(obj, "__name__", repr(obj)), obj, gpu, batching, tuple(init_args))
        obj.__cbctl__ = spec  # type: ignore[union-attr]
        for earlier in declared.functions:
            if earlier.name == spec.name and earlier.target is not obj:
                declared.problems.append(
                    f"two functions are named {spec.name!r}: {_where(earlier.target)} and {_where(obj)}: give one "
                    "of them another name with @cbctl.function(name=...)")
        declared.functions = [f for f in declared.functions if f.name != spec.name] + [spec]
        return obj

    return declare(target) if target is not None else declare


def dag(name: str, functions: Sequence[Any], edges: Iterable[Sequence[Any]] | None = None,
        **options: Any) -> DagSpec:
    """Declare a DAG: a chain of ``functions`` in order, or the graph given by ``edges`` of (from, to).

    Options: ``multiexec=[f, ...]`` marks functions that run once per upstream result as each arrives
    (see ``cbctl.runtime.multiexec`` for the exact semantics)."""
    names = [function_name(f) for f in functions]
    edge_names = [[function_name(a), function_name(b)] for a, b in edges] if edges is not None else []
    spec = DagSpec(name, names, edge_names, dag_options(options))
    declared = _current()
    if any(d.name == name and d != spec for d in declared.dags):
        declared.problems.append(f"two DAGs are named {name!r}: give one of them another name")
    declared.dags = [d for d in declared.dags if d.name != name] + [spec]
    return spec


def trigger(name: str, prefix: str | None = None, function: Any = None, *, batch: int = 0, window: float = 0.0,
            join: Sequence[str] = (), values: bool = False) -> TriggerSpec:
    """Declare a storage trigger: every put to a key starting with ``prefix`` calls ``function`` (a function
    or DAG, or its name) with ``(key, value)``, asynchronously and at least once (see ``cbctl trigger --help``).

    Or a bucket trigger, calling ``function`` with ``(keys)`` (``(keys, values)`` with ``values=True``):
    ``batch=N`` (N keys put under ``prefix``), ``window=T`` (every T seconds, what was put under ``prefix``),
    ``join=[keys]`` (every named key put; no prefix needed). See ``Client.add_trigger``."""
    if function is None:
        raise InvalidArgument(f"trigger {name!r} names no function: pass function=...")
    if isinstance(join, str):
        raise InvalidArgument(f"trigger {name!r}: join takes a list of keys, not one string")
    spec = TriggerSpec(name, prefix or "", function_name(function), batch, window, list(join), values)
    declared = _current()
    if any(t.name == name and t != spec for t in declared.triggers):
        declared.problems.append(f"two triggers are named {name!r}: give one of them another name")
    declared.triggers = [t for t in declared.triggers if t.name != name] + [spec]
    return spec


def dag_options(options: dict[str, Any]) -> dict[str, Any]:
    """DAG options as they travel: functions named in ``multiexec`` become their registered names (anything
    but a collection is left for the scheduler to refuse with a clear message)."""
    options = dict(options)
    multiexec = options.get("multiexec")
    if isinstance(multiexec, (list, tuple, set, frozenset)):
        options["multiexec"] = sorted(function_name(f) for f in multiexec)
    return options


def function_name(target: Any) -> str:
    """The registered name of a declared function, a plain function, or a name given as a string."""
    if isinstance(target, str):
        return target
    if isinstance(target, DagSpec):
        return target.name
    spec = getattr(target, "__cbctl__", None)
    if isinstance(spec, FunctionSpec):
        return spec.name
    name = getattr(target, "__name__", None)
    if not isinstance(name, str):
        raise InvalidDag(f"{target!r} is not a function or a function name")
    return name


class DeployFileError(CbctlError):
    """A deploy file could not be imported; ``user_traceback`` holds the user's traceback text."""

    def __init__(self, message: str, user_traceback: str = "") -> None:
        super().__init__(message)
        self.user_traceback = user_traceback


def load_file(path: str | Path, import_timeout: float | None = DEPLOY_IMPORT_TIMEOUT_S) -> Declarations:
    """Import a deploy file and return what it declared, including through the local modules it imports
    (a DAG of functions from a sibling file, say). Its module, and every module it newly imported from its
    own directory, is pickled by value, so executors need not be able to import them.

    The import runs on a thread of its own so that a file that hangs at import (a blocking call at module
    level) is given up on after ``import_timeout`` seconds (None: no limit) with a ``DeployFileError``. Python
    cannot stop that thread: it stays blocked in the background (a daemon, so it does not keep the process
    alive), and what it declares later goes nowhere."""
    path = Path(path)
    if not path.is_file():
        raise DeployFileError(f"{path} is not a file: pass the path of a Python file that declares functions")
    module_name = f"cbctl_deploy_{path.stem}_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise DeployFileError(f"{path} is not importable Python: give it a .py name")
    module = importlib.util.module_from_spec(spec)
    found = Declarations()
    directory = path.parent.resolve()
    already_imported = set(sys.modules)
    sys.modules[module_name] = module
    sys.path.insert(0, str(directory))
    failure: list[BaseException] = []

    def run_import() -> None:
        _importing.declared = found
        try:
            spec.loader.exec_module(module)
        except BaseException as exc:  # noqa: BLE001 - the user's file may raise anything, SystemExit included
            failure.append(exc)

    importer = threading.Thread(target=run_import, name=f"cbctl-import-{path.name}", daemon=True)
    try:
        importer.start()
        importer.join(import_timeout)
        if importer.is_alive():
            sys.modules.pop(module_name, None)
            raise DeployFileError(
                f"{path} did not finish importing within {import_timeout:g} s (does it block at module level?): "
                "move slow work into the functions, or allow more time with `cbctl deploy --import-timeout S`")
        if failure:
            exc = failure[0]
            sys.modules.pop(module_name, None)
            text = user_errors.user_traceback(exc, only_users=True)  # not importlib's frames
            raise DeployFileError(f"{path} failed to import: {type(exc).__name__}: {exc}", text) from None
    finally:
        sys.path.remove(str(directory))
    cloudpickle.register_pickle_by_value(module)
    for name in set(sys.modules) - already_imported - {module_name}:
        if _is_local_module(sys.modules[name], directory):
            cloudpickle.register_pickle_by_value(sys.modules[name])
    return found


def check_declaration(target: Any, name: str, init_args: Sequence[Any] = ()) -> str:
    """What is wrong with declaring ``target`` as function ``name`` (one sentence naming the fix), or ''.
    Checked before anything is registered, for ``@cbctl.function`` in a deploy file and ``Client.register``."""
    if isinstance(target, type):
        run = inspect.getattr_static(target, "run", None)
        if run is None:
            return (f"class {target.__name__} has no run(cb, ...) method: add one (the executor constructs the "
                    "class once, with init_args, and calls run per request), or declare a function instead")
        if not callable(getattr(target, "run", None)):
            return f"{target.__name__}.run is not a method: define it as def run(self, cb, ...)"
        call = target.run
        if not isinstance(run, (staticmethod, classmethod)):
            first = next(iter(_parameters(run)), None)
            if first == "cb":
                return (f"{target.__name__}.run takes cb where self goes: define it as def run(self, cb, ...)")
    elif not callable(target):
        return f"{target!r} is neither a function nor a class: declare a function or a class with run(cb, ...)"
    else:
        call = target
        if init_args:
            return (f"init_args are for a class, constructed once per executor with them, but {name} is a "
                    "function, called anew per request: drop init_args (give the values as defaults), or "
                    "declare a class with __init__ and run(self, cb, ...)")
    if inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call):
        return (f"{name} is an async def: executors call functions synchronously and could only return the "
                "coroutine; define it with def (run an event loop inside it if you need one)")
    if inspect.isgeneratorfunction(call):
        return (f"{name} is a generator function (it yields): its result, a generator, cannot travel back; "
                "return a list instead")
    return user_errors.check_takes_user_library(target, name)


def _parameters(function: Any) -> list[str]:
    try:
        return list(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return []


def _where(obj: Any) -> str:
    """An object as a user finds it in their file: ``name (line N)``."""
    label = getattr(obj, "__qualname__", None) or repr(obj)
    try:
        line = inspect.getsourcelines(obj)[1]
    except (TypeError, OSError):
        return label
    return f"{label} (line {line})"


def prepare(declared: Declarations, path: str | Path) -> PreparedDeploy:
    """Check what a deploy file declared and serialise its functions, in the process that imported it; a
    ``DeployFileError`` naming the file, the object and the fix for the first mistake (nothing is registered
    then)."""
    problems = list(declared.problems)
    prepared = PreparedDeploy(dags=declared.dags, triggers=declared.triggers)
    takes = {f.name: f.target for f in declared.functions}
    for fn in declared.functions:
        problem = check_declaration(fn.target, fn.name, fn.init_args)
        if not problem and (fn.name.startswith("__") or fn.name == "<lambda>"):
            problem = (f"{_where(fn.target)} cannot be registered as {fn.name!r}: give it a name (not starting "
                       "with '__') with @cbctl.function(name=...)")
        if problem:
            problems.append(problem)
            continue
        try:
            init_args = serialization.encode(tuple(fn.init_args), out_of_band=False) if fn.init_args else b""
            code = cloudpickle.dumps(fn.target)
        except Exception as exc:
            problems.append(f"{fn.name} cannot be serialised ({type(exc).__name__}: {exc}): what it or its "
                            "init_args hold must be picklable (no locks, sockets or open files)")
            continue
        options = {"gpu": fn.gpu, "batching": fn.batching, "is_class": isinstance(fn.target, type),
                   "init_args": init_args, "source_file": source_file_of(fn.target)}
        prepared.functions.append(PreparedFunction(fn.name, code, options))
    for t in declared.triggers:
        target = takes.get(t.function)
        bucket = bool(t.batch or t.window or t.join)  # called with (keys), or (keys, values) with values=True
        args = ("keys", "values") if bucket and t.values else ("keys",) if bucket else ("key", "value")
        if target is not None and not _takes_arguments(target, len(args)):
            shown = ", ".join(args)
            problems.append(f"trigger {t.name!r} calls {t.function} with ({shown}), but "
                            f"{t.function}{_signature(target)} does not take them after cb: define it as "
                            f"{t.function}(cb, {shown})")
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise DeployFileError(f"{path}: {problems[0]}{more}")
    return prepared


def _signature(target: Any) -> str:
    try:
        return str(inspect.signature(target.run if isinstance(target, type) else target))
    except (TypeError, ValueError):
        return "(...)"


def _takes_arguments(target: Any, count: int) -> bool:
    """Whether a trigger's function accepts cb and ``count`` arguments; a class's run counts without self."""
    try:
        signature = inspect.signature(target.run if isinstance(target, type) else target)
        if isinstance(target, type) and not isinstance(inspect.getattr_static(target, "run"),
                                                       (staticmethod, classmethod)):
            signature.bind(None, None, *[None] * count)
        else:
            signature.bind(None, *[None] * count)
    except TypeError:
        return False
    except ValueError:
        return True  # nothing to check against
    return True


def _is_local_module(module: Any, directory: Path) -> bool:
    """Whether ``module`` is the user's own code next to a deploy file (pickled by value), rather than an
    installed package (pickled by reference, as executors import those themselves)."""
    file = getattr(module, "__file__", None)
    if not file:
        return False
    resolved = Path(file).resolve()
    if "site-packages" in resolved.parts or "dist-packages" in resolved.parts:
        return False
    installed = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    installed.add(Path(__file__).resolve().parent)  # cbctl itself
    return resolved.is_relative_to(directory) and not any(resolved.is_relative_to(p) for p in installed)
