"""What a module costs to import, in modules: the cold start depends on the command line, the supervisor's
entry point and ``import cbctl`` loading only what they use (see README, Performance). Each probe runs in a
fresh interpreter and lists the heavy modules it loaded."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("zmq", "zmq.auth", "asyncio", "rich", "cloudpickle", "psutil", "cbctl.client", "cbctl.runtime.wire.messages",
         "cbctl.runtime.supervisor.supervisor", "cbctl.runtime.scheduler.policy")

_PROBE = """
import json, sys
import {module}
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def heavy_modules_loaded_by(module: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", _PROBE.format(module=module, heavy=HEAVY)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module, allowed", [
    ("cbctl", ()),  # the public API's names load on first use
    ("cbctl.cli", ()),  # what `cbctl up` of an ipc cluster in a fresh home needs, and no more
    # the supervisor's entry point starts the forkserver before anything heavy is imported
    ("cbctl.runtime.supervisor.forkserver", ()),
    ("cbctl.runtime.supervisor.spec", ()),
])
def test_module_loads_only_what_it_uses(module: str, allowed: tuple[str, ...]) -> None:
    assert [m for m in heavy_modules_loaded_by(module) if m not in allowed] == []


def test_the_public_api_still_has_every_name() -> None:
    import cbctl

    for name in cbctl.__all__:
        assert getattr(cbctl, name) is not None, name
    assert set(cbctl.__all__) <= set(dir(cbctl))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        cbctl.nope  # noqa: B018
