"""Cloudburst programs on cbctl, unmodified: Cloudburst's client API over cbctl's client and user library.

``install()`` makes Cloudburst's module names importable in this process, backed by cbctl (as
``pymysql.install_as_MySQLdb()`` does for MySQLdb)::

    import cbctl.compat.cloudburst as cb
    cb.install()
    from cloudburst.client.client import CloudburstConnection

    cloud = CloudburstConnection("127.0.0.1", "127.0.0.1", local=True)   # the cluster in $CBCTL_HOME

or run a Cloudburst script as it is: ``python -m cbctl.compat.cloudburst SCRIPT.py [ARGS]``. Functions the
connection registers may import the same names on the executors (see ``user_library.FunctionBody``).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
import warnings

from cbctl.compat.cloudburst.client import CloudburstConnection, DagCall
from cbctl.compat.cloudburst.function import CloudburstFunction
from cbctl.compat.cloudburst.future import CloudburstFuture
from cbctl.compat.cloudburst.proto import MULTI, NORMAL, SINGLE, CloudburstError, ConsistencyType
from cbctl.compat.cloudburst.reference import CloudburstReference
from cbctl.compat.cloudburst.user_library import CloudburstUserLibrary

#: Cloudburst's (and Anna's) module names, and the cbctl modules that stand in for them.
MODULES = {
    "cloudburst.client.client": "cbctl.compat.cloudburst.client",
    "cloudburst.shared.function": "cbctl.compat.cloudburst.function",
    "cloudburst.shared.future": "cbctl.compat.cloudburst.future",
    "cloudburst.shared.reference": "cbctl.compat.cloudburst.reference",
    "cloudburst.shared.serializer": "cbctl.compat.cloudburst.serializer",
    "cloudburst.shared.proto.cloudburst_pb2": "cbctl.compat.cloudburst.proto",
    "cloudburst.server.executor.user_library": "cbctl.compat.cloudburst.user_library",
    "anna.lattices": "cbctl.compat.cloudburst.lattices",
}
#: The packages above them, made as empty namespace modules marked as ours.
PACKAGES = ("cloudburst", "cloudburst.client", "cloudburst.shared", "cloudburst.shared.proto", "cloudburst.server",
            "cloudburst.server.executor", "anna")
_MARK = "__cbctl_compat__"


def installed() -> bool:
    """Whether ``install()`` put cbctl's stand-ins in this process's ``sys.modules``."""
    return getattr(sys.modules.get("cloudburst"), _MARK, False)


def real_packages() -> list[str]:
    """The top-level packages (``cloudburst``, ``anna``) that a real installation provides in this process."""
    found = []
    for name in ("cloudburst", "anna"):
        module = sys.modules.get(name)
        if module is not None:
            if not getattr(module, _MARK, False):
                found.append(name)
        elif importlib.util.find_spec(name) is not None:
            found.append(name)
    return found


def install(override: bool = False) -> bool:
    """Make Cloudburst's module names (``MODULES``) importable, backed by cbctl; True if they are now.

    If a real Cloudburst or Anna client is importable, this warns and changes nothing (returns False), unless
    ``override``: then cbctl's stand-ins replace them in this process (the real packages stay installed)."""
    if installed():
        return True
    real = real_packages()
    if real and not override:
        warnings.warn(f"a real {' and '.join(real)} is importable here ({_where(real)}): cbctl's Cloudburst "
                      "compat layer was not installed; pass install(override=True) (or `python -m "
                      "cbctl.compat.cloudburst --override`) to use cbctl instead", RuntimeWarning, stacklevel=2)
        return False
    for name in [m for m in sys.modules if m.split(".")[0] in ("cloudburst", "anna")]:
        del sys.modules[name]  # the real packages' modules, when overriding
    for name in PACKAGES:
        package = types.ModuleType(name, f"cbctl's stand-in for {name} (cbctl.compat.cloudburst)")
        package.__path__ = []  # a package: its submodules are the ones installed below
        setattr(package, _MARK, True)
        sys.modules[name] = package
    for alias, real_name in MODULES.items():
        module = importlib.import_module(real_name)
        sys.modules[alias] = module
        parent, _, leaf = alias.rpartition(".")
        setattr(sys.modules[parent], leaf, module)
    for name in PACKAGES:
        parent, _, leaf = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], leaf, sys.modules[name])
    return True


def uninstall() -> None:
    """Remove what ``install()`` added to ``sys.modules`` (nothing if it added nothing)."""
    if not installed():
        return
    for name in [*MODULES, *PACKAGES]:
        sys.modules.pop(name, None)


def _where(names: list[str]) -> str:
    places = []
    for name in names:
        module = sys.modules.get(name)
        spec = module.__spec__ if module is not None else importlib.util.find_spec(name)
        places.append(str(spec.origin or (list(spec.submodule_search_locations or []) or ["?"])[0]) if spec else "?")
    return ", ".join(places)


__all__ = [
    "MULTI",
    "NORMAL",
    "SINGLE",
    "CloudburstConnection",
    "CloudburstError",
    "CloudburstFunction",
    "CloudburstFuture",
    "CloudburstReference",
    "CloudburstUserLibrary",
    "ConsistencyType",
    "DagCall",
    "install",
    "installed",
    "real_packages",
    "uninstall",
]
