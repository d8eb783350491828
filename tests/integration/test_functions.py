"""Functions end to end: `cbctl deploy`/`call`/`ls`/`rm`, the Python client, and every error a caller sees.

Most tests share one 2-executor cluster per module (starting one costs seconds); each uses names of its
own, so they do not depend on each other's order. Tests that hurt a cluster (a function that never
returns) start their own.
"""

from __future__ import annotations

import json
import time

import psutil
import pytest

import cbctl
from cbctl.declare import DeployFileError
from cbctl.lifecycle import kill_processes
from cbctl.runtime.cluster import socket_dir
from cbctl.runtime.defaults import POLICY_STALE_S
from tests.conftest import EXAMPLES, RunningCluster
from tests.integration.shared_cluster import TOOLKIT, registered_names

pytestmark = [pytest.mark.cbctl(deploy=[EXAMPLES / "pipeline.py", TOOLKIT]), pytest.mark.both_stores]  # two executors


def executor_pids(handle: RunningCluster) -> dict[str, int]:
    return {f"{p.role}-{p.index}": p.pid for p in handle.cluster_file().processes if p.role == "executor"}


# --- cbctl deploy ----------------------------------------------------------------------------------------


def test_deploy_prints_what_it_registered_and_json(shared, tmp_path):
    out = shared.cli("deploy", str(EXAMPLES / "pipeline.py"), check=True).stdout
    lines = [line.split() for line in out.strip().splitlines()]
    assert ["function", "increment"] in lines and ["function", "sq"] in lines
    assert "dag      pipeline: increment -> sq" in out
    assert "dag      diamond: split->double, split->triple, double->total, triple->total" in out

    model = shared.cli("deploy", str(EXAMPLES / "model.py"), check=True).stdout
    assert "function model (class)" in model

    data = json.loads(shared.cli("deploy", "--json", str(EXAMPLES / "pipeline.py"), check=True).stdout)
    assert {f["name"] for f in data["functions"]} == {"increment", "sq", "split", "double", "triple", "total"}
    assert all(f["gpu"] is False and f["batching"] is False for f in data["functions"])
    dags = {d["name"]: d for d in data["dags"]}
    assert dags["pipeline"]["functions"] == ["increment", "sq"]
    assert dags["pipeline"]["edges"] == [["increment", "sq"]]
    assert len(dags["diamond"]["edges"]) == 4


def test_deploy_of_a_file_that_raises_prints_the_users_traceback(shared, tmp_path):
    bad = tmp_path / "broken_on_import.py"
    bad.write_text(
        "import cbctl\n\n"
        "@cbctl.function\n"
        "def never_registered(cb, x):\n"
        "    return x\n\n"
        "def load_config():\n"
        "    raise RuntimeError('config file missing')\n\n"
        "load_config()\n"
    )
    result = shared.cli("deploy", str(bad))
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert str(bad) in result.stderr and "line 8, in load_config" in result.stderr
    assert "RuntimeError: config file missing" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "never_registered" not in registered_names(shared)[0]

    missing = shared.cli("deploy", str(tmp_path / "nope.py"))
    assert missing.returncode == 1 and "error:" in missing.stderr and "Traceback" not in missing.stderr

    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    nothing = shared.cli("deploy", str(empty))
    assert nothing.returncode == 1 and "declares no functions" in nothing.stderr


def test_redeploy_replaces_the_code_on_every_executor(shared, tmp_path):
    source = tmp_path / "versioned.py"
    source.write_text("import cbctl\n\n@cbctl.function\ndef version(cb):\n    return ['v1', cb.getid()]\n")
    shared.cli("deploy", str(source), check=True)
    client = shared.client()
    assert versions_on_both_executors(client) == {"executor-0": {"v1"}, "executor-1": {"v1"}}
    source.write_text("import cbctl\n\n@cbctl.function\ndef version(cb):\n    return ['v2', cb.getid()]\n")
    shared.cli("deploy", str(source), check=True)
    # both executors had loaded v1, and both now run v2
    assert versions_on_both_executors(client) == {"executor-0": {"v2"}, "executor-1": {"v2"}}
    assert '"v2"' in shared.cli("call", "version", "--json", check=True).stdout


def versions_on_both_executors(client, tries: int = 80) -> dict[str, set[str]]:
    """What ``version() -> [version, executor id]`` returned on each executor, once both have run it."""
    seen: dict[str, set[str]] = {}
    for _ in range(tries):
        version, executor_id = client.call("version", timeout=10)
        seen.setdefault(executor_id, set()).add(version)
        if len(seen) == 2:
            return seen
    raise AssertionError(f"version() ran only on {sorted(seen)} in {tries} calls")


# --- cbctl call --------------------------------------------------------------------------------------------


def test_call_arguments_are_json_when_they_parse_else_strings(shared):
    out = shared.cli("call", "echo", "3", '"3"', "abc", "[1, 2]", '{"a": 1}', "null", "true", "2.5",
                     check=True).stdout
    assert json.loads(out) == [["int", 3], ["str", "3"], ["str", "abc"], ["list", [1, 2]],
                               ["dict", {"a": 1}], ["NoneType", None], ["bool", True], ["float", 2.5]]
    assert shared.cli("call", "pipeline", "3", check=True).stdout == "16\n"


def test_call_json_output(shared):
    assert shared.cli("call", "whoami", check=True).stdout.startswith("executor-")
    as_json = shared.cli("call", "--json", "whoami", check=True).stdout
    assert json.loads(as_json).startswith("executor-") and as_json.startswith('"')
    assert json.loads(shared.cli("call", "--json", "pipeline", "4", check=True).stdout) == 25


def test_function_that_raises_reports_type_message_traceback_and_executor_survives(shared):
    before = executor_pids(shared)
    result = shared.cli("call", "fail", "the disk is full")
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "toolkit.py" in result.stderr and "in fail" in result.stderr
    assert "ValueError: the disk is full" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "error: the function raised ValueError: the disk is full"

    client = shared.client()
    with pytest.raises(cbctl.FunctionError) as raised:
        client.call("fail", "again", timeout=10)
    assert raised.value.remote_type == "ValueError"
    assert "again" in str(raised.value) and "in fail" in raised.value.remote_traceback
    # every executor still serves, with the same pids
    assert [client.call("pipeline", i, timeout=10) for i in range(20)] == [(i + 1) ** 2 for i in range(20)]
    assert executor_pids(shared) == before


def test_call_of_unknown_name_and_bad_arguments_exit_1(shared):
    unknown = shared.cli("call", "no_such_thing", "1")
    assert unknown.returncode == 1 and "no function or DAG is registered as 'no_such_thing'" in unknown.stderr
    bad_arg = shared.cli("call", "two_sources", "--arg", "nonsense")
    assert bad_arg.returncode == 1 and "FUNCTION=VALUE" in bad_arg.stderr
    timeout = shared.cli("call", "--timeout", "0.3", "nap", "2")
    assert timeout.returncode == 1 and "did not finish within 0.3 s" in timeout.stderr


# --- cbctl ls / rm --------------------------------------------------------------------------------------------


def test_ls_and_rm(shared, tmp_path):
    source = tmp_path / "removable.py"
    source.write_text(
        "import cbctl\n\n"
        "@cbctl.function\ndef rm_a(cb, x):\n    return x\n\n"
        "@cbctl.function(batching=True)\ndef rm_b(cb, x):\n    return x\n\n"
        "cbctl.dag('rm_chain', [rm_a, rm_b])\n"
    )
    shared.cli("deploy", str(source), check=True)

    def listed_once_pinned() -> dict | None:  # `ls` shows pins as executors report them (within a status)
        listed = json.loads(shared.cli("ls", "--json", check=True).stdout)
        return listed if all(f["pinned"] for f in listed["functions"] if f["name"] == "rm_a") else None

    listed = shared.wait_for(listed_once_pinned, timeout=10, what="rm_a to be listed as pinned")
    functions = {f["name"]: f for f in listed["functions"]}
    assert functions["rm_b"]["batching"] is True and functions["rm_a"]["gpu"] is False
    assert len(functions["rm_a"]["pinned"]) == 1 and functions["rm_a"]["pinned"][0] in {"executor-0", "executor-1"}, \
        functions["rm_a"]  # a DAG's function is pinned on one executor when the DAG is registered
    dags = {d["name"]: d for d in listed["dags"]}
    assert dags["rm_chain"]["functions"] == ["rm_a", "rm_b"] and dags["rm_chain"]["edges"] == [["rm_a", "rm_b"]]
    table = shared.cli("ls", check=True).stdout
    assert "rm_chain" in table and "rm_a->rm_b" in table

    in_use = shared.cli("rm", "rm_a")
    assert in_use.returncode == 1 and "used by DAG(s) rm_chain" in in_use.stderr
    assert shared.cli("rm", "rm_chain", check=True).stdout.strip() == "removed dag rm_chain"
    assert shared.cli("rm", "rm_a", check=True).stdout.strip() == "removed function rm_a"
    functions, dags = registered_names(shared)
    assert "rm_a" not in functions and "rm_b" in functions and "rm_chain" not in dags
    gone = shared.cli("rm", "rm_chain")
    assert gone.returncode == 1 and "no function or DAG is registered as 'rm_chain'" in gone.stderr
    called = shared.cli("call", "rm_chain", "1")
    assert called.returncode == 1 and "no function or DAG" in called.stderr


# --- the Python client --------------------------------------------------------------------------------


class Scaler:
    """A class registered from Python: constructed once per executor with ``init_args``."""

    def __init__(self, factor):
        self.factor = factor

    def run(self, cb, x):
        return x * self.factor


def test_client_register_call_list_delete(shared):
    client = shared.client()
    described = client.register(lambda cb, x: x + 100, name="py_add")
    assert described["name"] == "py_add" and described["is_class"] is False
    assert client.register(Scaler, name="py_scale", init_args=(7,))["is_class"] is True
    with pytest.raises(cbctl.InvalidArgument, match="no run"):
        client.register(dict, name="not_a_function")
    client.register_dag("py_chain", ["py_add", "py_scale"])
    client.register_dag("py_edges", ["py_scale", "py_add"], edges=[("py_scale", "py_add")])
    assert client.call("py_add", 1, timeout=10) == 101
    assert client.call("py_scale", 3, timeout=10) == 21
    assert client.call("py_chain", 1, timeout=10) == 707
    assert client.call("py_edges", 1, timeout=10) == 107

    future = client.call_async("py_chain", 2)
    assert future.result(timeout=10) == 714 and future.done()
    slow = client.call_async("nap", 0.5)
    assert not slow.done()
    assert slow.result(timeout=10) == 0.5 and slow.done()

    listed = client.list()
    assert {"py_add", "py_scale"} <= {f["name"] for f in listed["functions"]}
    assert {"py_chain", "py_edges"} <= {d["name"] for d in listed["dags"]}
    assert client.delete("py_edges") == {"removed": "py_edges", "kind": "dag"}
    with pytest.raises(cbctl.NoSuchFunction):
        client.call("py_edges", 1, timeout=10)


def test_client_get_put_and_cb_get_put(shared):
    client = shared.client()
    client.put("fn/greeting", {"text": "hello", "n": [1, 2]})
    assert client.get("fn/greeting") == {"text": "hello", "n": [1, 2]}
    with pytest.raises(cbctl.NoSuchKey):
        client.get("fn/never-written")
    with pytest.raises(cbctl.InvalidArgument):
        client.put("__cb/fn/sneaky", 1)
    # a function writes with cb.put and reads back with cb.get; the client sees the write
    assert client.call("writekey", "fn/from-function", [1, "two"], timeout=10) == [1, "two"]
    assert client.get("fn/from-function") == [1, "two"]
    assert shared.cli("get", "fn/from-function", check=True).stdout.strip() == '[1, "two"]'


def test_ref_argument_is_resolved_to_the_stored_value(shared):
    client = shared.client()
    client.put("fn/ref-value", {"weights": [0.5, 0.25]})
    assert client.call("echo", cbctl.Ref("fn/ref-value"), 3, timeout=10) == [["dict", {"weights": [0.5, 0.25]}],
                                                                            ["int", 3]]
    with pytest.raises(cbctl.NoSuchKey):
        client.call("echo", cbctl.Ref("fn/ref-missing"), timeout=10)


def test_store_result_future_reads_from_the_store(shared):
    client = shared.client()
    future = client.call_async("pipeline", 6, store_result=True)
    assert future.result(timeout=10) == 49
    # the result outlives the caller's connection: it is in the store under the call id
    stored = client.call_async("fail", "stored failure", store_result=True)
    with pytest.raises(cbctl.FunctionError, match="stored failure"):
        stored.result(timeout=10)
    missing = client.call_async("no_such_fn", store_result=True)
    with pytest.raises(cbctl.NoSuchFunction):
        missing.result(timeout=10)


def test_getid_names_a_real_executor(shared):
    client = shared.client()
    ids = {client.call("whoami", timeout=10) for _ in range(30)}
    assert ids <= set(executor_pids(shared)) and ids


def test_class_is_constructed_once_per_executor(shared):
    client = shared.client()
    client.deploy_file(EXAMPLES / "model.py")
    results = [client.call("model", i, timeout=10) for i in range(40)]
    assert [r["prediction"] for r in results] == [3 * i for i in range(40)]
    by_executor: dict[str, list[dict]] = {}
    for r in results:
        by_executor.setdefault(r["executor"], []).append(r)
    for executor, answers in by_executor.items():
        assert len({a["instance"] for a in answers}) == 1, f"{executor} constructed the class more than once"
        assert [a["served"] for a in answers] == list(range(1, len(answers) + 1))
    constructions = client.list_keys("model/instances/")
    per_executor = {key.split("/")[2] for key in constructions}
    assert len(constructions) == len(per_executor) == len(by_executor)


def test_context_manager_closes_the_client(shared):
    with cbctl.connect(shared.home) as client:
        assert client.call("pipeline", 1, timeout=10) == 4
    with pytest.raises(cbctl.CbctlError, match="closed"):
        client.call_async("pipeline", 1)
    client.close()  # closing twice is harmless
    assert not list(socket_dir(shared.home).glob(f"client-{client.client_id}"))


def test_error_types(shared, tmp_path):
    client = shared.client()
    with pytest.raises(cbctl.NoSuchFunction, match="no function or DAG is registered as 'missing_fn'"):
        client.call("missing_fn", timeout=10)
    with pytest.raises(cbctl.InvalidDag, match="unregistered function"):
        client.register_dag("bad_dag", ["increment", "not_registered"])
    with pytest.raises(cbctl.CallTimeout, match="did not finish within 0.2 s"):
        client.call("nap", 1.0, timeout=0.2)
    with pytest.raises(cbctl.ClusterNotRunning, match="cbctl up"):
        cbctl.connect(home=tmp_path / "no-cluster-here")
    with pytest.raises(DeployFileError):
        client.deploy_file(tmp_path / "nope.py")
    for cls in (cbctl.FunctionError, cbctl.NoSuchFunction, cbctl.InvalidDag, cbctl.ClusterNotRunning,
                cbctl.CallTimeout):
        assert issubclass(cls, cbctl.CbctlError)


def test_connect_reads_cbctl_home(shared, monkeypatch):
    monkeypatch.setenv("CBCTL_HOME", str(shared.home))
    with cbctl.connect() as client:
        assert client.call("pipeline", 2, timeout=10) == 9


# --- a function that never returns ------------------------------------------------------------------------


def test_function_that_never_returns_times_out_and_others_keep_serving(start_cluster):
    handle = start_cluster(executors=2)
    handle.cli("deploy", str(EXAMPLES / "pipeline.py"), check=True)
    handle.cli("deploy", str(TOOLKIT), check=True)
    client = handle.client()
    assert client.call("pipeline", 1, timeout=10) == 4
    started = time.monotonic()
    forever = client.call_async("nap", 3600, "fn/napping")
    with pytest.raises(cbctl.CallTimeout):
        forever.result(timeout=1.0)
    assert time.monotonic() - started < 3  # the timeout, not the nap (an hour), ended the wait
    stuck = handle.wait_for(lambda: client.get("fn/napping") if client.list_keys("fn/napping") else None,
                            timeout=5, what="the napping executor to record itself")
    # once its status has been quiet for POLICY_STALE_S the scheduler sends it nothing more
    handle.wait_for(lambda: client.cluster_info()["executors"][stuck]["status_age_s"] > POLICY_STALE_S,
                    timeout=10, interval=0.1, what=f"{stuck} to go quiet")
    try:
        answers = [client.call("pipeline", i, timeout=3) for i in range(100)]
        assert answers == [(i + 1) ** 2 for i in range(100)]
        ran_on = {client.call("whoami", timeout=3) for _ in range(20)}
        assert stuck not in ran_on and ran_on
        assert psutil.Process(handle.pid_of(stuck)).is_running()  # stuck, not dead
    finally:
        # teardown would otherwise wait out the warm-stop deadline: killing only the napping executor is not
        # enough, since its call would be retried (at least once) on the other one
        kill_processes(handle.pids())
