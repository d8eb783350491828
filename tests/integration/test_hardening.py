"""Ordinary mistakes and ordinary data, as a new user meets them (issue 16): deploy files that are wrong in small
ways, values that must come back equal, output a script parses. Each case is what the user typed or wrote; each
must end in one clear line (exit 1) or the right result, never a traceback, a silent success or a changed value.

One 2-executor cluster is shared by the module; tests use names of their own.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest

from tests.conftest import RunningCluster
from tests.integration.shared_cluster import module_cluster, registered_names


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Iterator[RunningCluster]:
    with module_cluster(tmp_path_factory.mktemp("cbhard")) as handle:
        yield handle


def one_error_line(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """The failure is exactly one line `error: ...` on stderr containing ``fragments``, with exit code 1."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# --- 1. deploy contracts ------------------------------------------------------------------------------------

#: Each file declares a good function (``hd_good_<case>``) next to its mistake: none of it may be registered.
BAD_DEPLOY_FILES = {
    "duplicate": ('@cbctl.function(name="hd_dup")\ndef a(cb):\n    return 1\n\n'
                  '@cbctl.function(name="hd_dup")\ndef b(cb):\n    return 2\n',
                  ["two functions are named 'hd_dup'", "a (line", "b (line", "name=..."]),
    "class_without_run": ("@cbctl.function(init_args=(1,))\nclass NoRun:\n    def __init__(self, k):\n        pass\n",
                          ["class NoRun has no run(cb, ...) method"]),
    "run_without_cb": ("@cbctl.function\nclass R:\n    def run(self):\n        return 1\n",
                       ["R.run", "define it as run(self, cb, ...)"]),
    "run_without_self": ("@cbctl.function\nclass S:\n    def run(cb, x):\n        return x\n",
                         ["S.run takes cb where self goes"]),
    "init_args_on_a_function": ("@cbctl.function(init_args=(1,))\ndef plain(cb):\n    return 1\n",
                                ["init_args are for a class", "plain is a function", "drop init_args"]),
    "empty_name": ('@cbctl.function(name="")\ndef unnamed(cb):\n    return 1\n',
                   ["unnamed (line", "name=''", "give a non-empty name"]),
    "async": ("@cbctl.function\nasync def coro(cb):\n    return 1\n", ["coro is an async def"]),
    "trigger_arity": ('@cbctl.function\ndef on_put(cb, key):\n    return key\n\n'
                      'cbctl.trigger("hd_t", prefix="hd/", function=on_put)\n',
                      ["trigger 'hd_t' calls on_put with (key, value)", "on_put(cb, key, value)"]),
}


@pytest.mark.parametrize("case", sorted(BAD_DEPLOY_FILES))
def test_a_deploy_file_with_a_mistake_registers_nothing_and_names_file_object_and_fix(shared, tmp_path, case):
    body, fragments = BAD_DEPLOY_FILES[case]
    path = tmp_path / f"{case}.py"
    path.write_text(f"import cbctl\n\n@cbctl.function\ndef hd_good_{case}(cb):\n    return 0\n\n{body}")
    line = one_error_line(shared.cli("deploy", str(path)), *fragments)
    assert str(path) in line
    functions, _ = registered_names(shared)
    assert not any(name.startswith(("hd_good_", "hd_dup", "NoRun", "plain", "unnamed")) for name in functions)


@pytest.mark.parametrize("ending, how", [("os._exit(0)", "exited (code 0)"),
                                         ("os.kill(os.getpid(), signal.SIGKILL)", "was killed by SIGKILL")])
def test_a_deploy_file_that_ends_its_interpreter_is_a_clear_failure(shared, tmp_path, ending, how):
    path = tmp_path / "ends.py"
    path.write_text(f"import os, signal\nimport cbctl\n\n@cbctl.function\ndef hd_ends(cb):\n    return 1\n\n{ending}\n")
    one_error_line(shared.cli("deploy", str(path)), str(path), how, "while importing")
    assert "hd_ends" not in registered_names(shared)[0]


def test_the_python_api_refuses_the_same_mistakes(shared):
    import cbctl

    client = shared.client()

    class NoRun:
        pass

    with pytest.raises(cbctl.InvalidArgument, match="class NoRun has no run"):
        client.register(NoRun, name="hd_norun")
    with pytest.raises(cbctl.InvalidArgument, match="init_args are for a class"):
        client.register(lambda cb: 1, name="hd_fn_init", init_args=(1,))
    with pytest.raises(cbctl.InvalidDag, match="one string"):
        client.register_dag("hd_dag_str", "increment")


def test_a_good_file_still_deploys_and_its_threads_do_not_hold_the_deploy(shared, tmp_path):
    path = tmp_path / "good.py"
    path.write_text("import threading, time\nimport cbctl\n\n"
                    "threading.Thread(target=time.sleep, args=(600,)).start()  # not a daemon\n\n"
                    "@cbctl.function\ndef hd_fine(cb, x):\n    return x + 1\n")
    out = shared.cli("deploy", str(path), check=True, timeout=30).stdout
    assert "function hd_fine" in out
    assert json.loads(shared.cli("call", "hd_fine", "2", "--json", check=True).stdout) == 3
