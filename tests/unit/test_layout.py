"""The runtime's layering: each role's package (and ``wire/``, and the shared modules) imports, in a fresh
interpreter, without loading any module of another role. A cross-role import fails here, not in review."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

ROLES = ("supervisor", "scheduler", "executor", "store")

_PROBE = """
import importlib, json, pkgutil, sys
import cbctl.runtime as runtime
roles = {roles!r}
target = {target!r}
if target == "shared":
    names = [f"cbctl.runtime.{{m.name}}" for m in pkgutil.iter_modules(runtime.__path__)
             if not m.ispkg]
else:
    package = importlib.import_module(f"cbctl.runtime.{{target}}")
    names = [package.__name__] + [f"{{package.__name__}}.{{m.name}}" for m in pkgutil.iter_modules(package.__path__)]
for name in names:
    importlib.import_module(name)
loaded = sorted(m for m in sys.modules if any(m == f"cbctl.runtime.{{r}}" or m.startswith(f"cbctl.runtime.{{r}}.")
                                               for r in roles if r != target))
print(json.dumps({{"imported": names, "foreign": loaded}}))
"""


@pytest.mark.parametrize("target", [*ROLES, "wire", "shared"])
def test_package_loads_no_other_role(target: str) -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE.format(roles=ROLES, target=target)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(report["imported"]) > 1, report  # the probe found the package's modules
    assert report["foreign"] == [], f"importing cbctl.runtime.{target} loaded {report['foreign']}"


def _imports_of(path) -> set[str]:
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):  # every import, TYPE_CHECKING and function-local too
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.update([node.module, *(f"{node.module}.{a.name}" for a in node.names)])
    return names


def test_shared_modules_and_wire_import_no_role_even_for_type_hints() -> None:
    from pathlib import Path

    import cbctl.runtime

    root = Path(cbctl.runtime.__file__).parent
    below = [*root.glob("*.py"), *(root / "wire").glob("*.py")]
    offenders = {f"{p.relative_to(root)} -> {name}" for p in below for name in _imports_of(p)
                 if any(name == f"cbctl.runtime.{r}" or name.startswith(f"cbctl.runtime.{r}.") for r in ROLES)}
    assert not offenders, sorted(offenders)
