"""Turning a registered function record back into something an executor can call.

cloudpickle (3.1 and later) replaces the file name of every code object it pickles by value with
``<dynamic-code>``, so a user's remote traceback would not say which file and line raised. The client
records the source file at registration, and loading puts it back on every code object of the user's
module that the function can reach (itself, its nested functions, the module-level helpers it uses, a
class's methods): tracebacks then name the user's file and line, and show the line itself when the file
is on this machine.
"""

from __future__ import annotations

import inspect
import types
from typing import Any

import cloudpickle

from cbctl.runtime.registry import FunctionRecord
from cbctl.runtime.wire import serialization

DYNAMIC_FILENAME = "<dynamic-code>"


def source_file_of(target: Any) -> str:
    """Where a function or class was defined, or '' when Python cannot tell (built in a REPL, say)."""
    try:
        return inspect.getsourcefile(target) or ""
    except (TypeError, OSError):
        return ""


def load_target(record: FunctionRecord) -> Any:
    """The callable to run per request: the function, or the ``run`` method of the class constructed once
    with its ``init_args``."""
    target = cloudpickle.loads(record.code)
    if record.source_file:
        restore_source_file(target, record.source_file)
    if record.is_class:
        init_args = serialization.decode(record.init_args) if record.init_args else ()
        return target(*init_args).run
    return target


def restore_source_file(target: Any, path: str) -> None:
    seen: set[int] = set()
    pending = [target]
    while pending:
        obj = pending.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, (staticmethod, classmethod)):
            pending.append(obj.__func__)
        elif isinstance(obj, property):
            pending.extend(f for f in (obj.fget, obj.fset, obj.fdel) if f is not None)
        elif isinstance(obj, type):
            pending.extend(vars(obj).values())
        elif isinstance(obj, types.FunctionType):
            obj.__code__ = _renamed(obj.__code__, path)
            pending.extend(cell.cell_contents for cell in obj.__closure__ or () if _has_contents(cell))
            # only the helpers that came with the pickle: imported modules' functions keep their files
            pending.extend(v for v in obj.__globals__.values() if isinstance(v, (types.FunctionType, type))
                           and _is_dynamic(v))


def _is_dynamic(obj: Any) -> bool:
    code = getattr(obj, "__code__", None)
    if code is not None:
        return code.co_filename == DYNAMIC_FILENAME
    return any(_is_dynamic(v) for v in vars(obj).values() if isinstance(v, types.FunctionType))


def _has_contents(cell: types.CellType) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises
        return True
    except ValueError:
        return False


def _renamed(code: types.CodeType, path: str) -> types.CodeType:
    consts = tuple(_renamed(c, path) if isinstance(c, types.CodeType) else c for c in code.co_consts)
    if code.co_filename == DYNAMIC_FILENAME:
        return code.replace(co_filename=path, co_consts=consts)
    return code.replace(co_consts=consts) if consts != code.co_consts else code
