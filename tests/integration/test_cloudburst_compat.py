"""Cloudburst client programs (tests/integration/cloudburst_programs/), each run unmodified through
``python -m cbctl.compat.cloudburst`` against a real cluster, their printed results checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

PROGRAMS = Path(__file__).resolve().parent / "cloudburst_programs"
#: The coordination program runs this many calls at once; each waits for the others, so every one needs an
#: executor of its own. Until the scheduler never queues a call behind a busy executor (issue 17), the cluster
#: has one more executor than that, the program makes one round of calls on the fresh cluster (a second round
#: finds the first round's executors in backoff, and doubles calls up on the others), and its waits are bounded.
CONCURRENT = 3
pytestmark = pytest.mark.cbctl(executors=CONCURRENT + 1)  # one cluster for the module


@pytest.fixture
def home(cbctl_cluster) -> Path:
    return cbctl_cluster.home


def run_program(home: Path, name: str, *args: str, timeout: float = 120) -> object:
    """Run a Cloudburst program as its user would; what it printed after ``RESULTS``."""
    env = {**os.environ, "CBCTL_HOME": str(home)}
    done = subprocess.run([sys.executable, "-m", "cbctl.compat.cloudburst", str(PROGRAMS / name), *args],
                          capture_output=True, text=True, env=env, timeout=timeout)
    assert done.returncode == 0, f"{name} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULTS ")]
    assert lines, f"{name} printed no results:\n{done.stdout}"
    return json.loads(lines[-1][len("RESULTS "):])


def test_functions_coordinating_through_the_store_and_messages(home):
    # first on the fresh cluster: see CONCURRENT
    for round_ in run_program(home, "coordination.py", str(CONCURRENT)):
        assert round_["averages"] == [round_["expected"]] * CONCURRENT
        assert round_["heard"] == [list(range(CONCURRENT))] * CONCURRENT  # every value reached every call
        assert len(set(round_["executors"])) == CONCURRENT  # they ran at the same time, so on distinct executors


def test_quickstart(home):
    results = run_program(home, "quickstart.py")
    assert results == {
        "incr": 2, "square": 4,
        "register_dag": [True, "NO_CLOUDBURST_ERROR"], "register_again": [False, "DAG_ALREADY_EXISTS"],
        "dag_future": 4, "dag_direct": 16, "many": [i * i for i in range(10)], "exec_func": 49,
        "tuple_spread": 45, "output_key_future": ["dag-output", 25], "output_key_object": 25,
        "future_argument": 9, "multi": 36, "single_future": 49, "causal_get": [5, [5]],
        "get_object": {"hello": "world"}, "get_missing": None,
        "get_function_missing": True, "get_function": 25, "delete_dag": [True, True],
    }


def test_references_to_arrays_and_the_user_library(home):
    results = run_program(home, "references.py")
    assert results["dot"] == pytest.approx(results["dot_expected"])
    assert results["dag_ref"] == pytest.approx(results["dag_ref_expected"])
    assert results["array_result"] == [0, 2, 4, 6]
    assert results["user_library"] == {"lattice_type": "LWWPairLattice", "revealed": {"uid": "u1"},
                                       "plain": ["u1", "u1"], "missing": None, "missing_single": None,
                                       "executor_id_is_str": True}
    assert results["client_sees_lattice"] == "LWWPairLattice"
    assert results["package_global"] == "DAG_ALREADY_EXISTS"


def test_classes_and_multiexec(home):
    results = run_program(home, "classes_multiexec.py")
    assert results["classes"] == ["value=0", "value=3", "value=6"]
    assert results["race_registered"] is True
    assert results["race"] == results["race_future"] == "winner:10"  # the only valid result of three runs
    assert results["race_sink"] == 7
    assert results["batched"] == [10, 11, 12]
    assert results["race_none_valid"].startswith("FunctionError: NoValidResult: every result of MULTIEXEC "
                                                 "function 'check'")


def test_continuations_and_errors(home):
    results = run_program(home, "continuations_errors.py")
    assert results["continuation_direct"] == 8  # (1 + 1) ** 2, doubled
    assert results["continuation_future"] == 109  # (2 + 1) ** 2 + 100
    assert results["continuation_mismatch"] == "Continuation does not have same direct response setting as " \
                                               "current call."
    kind, message, remote_traceback = results["raised"]
    assert (kind, message) == ("FunctionError", "ZeroDivisionError: division by zero")
    # the user's file and line, not the compat layer's or cloudpickle's <dynamic-code>
    assert 'continuations_errors.py", line' in remote_traceback and "return 10 / x" in remote_traceback
    assert "cbctl/compat" not in remote_traceback
    assert results["unregistered"] == "Function nope not registered. Please register before including it in a DAG."
    assert results["no_such_dag"] == "NoSuchFunction"
    assert results["inner_args"] == 25  # 10 * (1 + 1) + 5
    assert results["inner_args_output_key"] == [31, 31]  # a tuple argument spreads: 10 * 3 + 1
    assert results["args_for_unknown_function"] == [
        "InvalidArgument", "arguments given for 'nope', which is not a function of DAG 'first' (its functions: "
        "incr, square)"]


def test_a_call_referencing_a_cached_key_runs_where_it_is_cached(home):
    """A ``CloudburstReference`` argument counts for placement as a ``cbctl.Ref`` does. (A DAG's functions are
    pinned, so its calls go where they are pinned; this is a single function, placed per call.)"""
    import cbctl
    import cbctl.compat.cloudburst as compat

    client = cbctl.connect(home)
    with compat.CloudburstConnection(str(home)) as cloud:
        where = cloud.register(lambda cloudburst, blob: [cloudburst.getid(), len(blob)], "where")
        cloud.put_object("blob", b"x" * 200_000)
        ref = compat.CloudburstReference("blob", True)
        first, size = where(ref).get(timeout=10)
        assert size == 200_000
        deadline = time.monotonic() + 10
        while "blob" not in client.cluster_info()["executors"][first]["cached_keys"]:
            assert time.monotonic() < deadline, f"{first} never reported the cached key"
            time.sleep(0.05)
        seen = client.cluster_info()["policy"]["updates"]
        while client.cluster_info()["policy"]["updates"] <= seen:
            assert time.monotonic() < deadline + 10, "no policy update"
            time.sleep(0.05)
        assert {where(ref).get(timeout=10)[0] for _ in range(12)} == {first}
        # the same function given the value instead of the reference spreads: locality is what kept it there
        assert len({where(b"y").get(timeout=10)[0] for _ in range(12)}) > 1
    client.close()


def test_delete_dag_removes_its_variants_and_helpers(home):
    import cbctl
    import cbctl.compat.cloudburst as compat

    def names(client: cbctl.Client) -> set[str]:
        listed = client.list()
        return {f["name"] for f in listed["functions"]} | {d["name"] for d in listed["dags"]}

    with compat.CloudburstConnection(str(home)) as cloud:
        cloud.register(lambda _, a: a, "pass_on")
        cloud.register(lambda _, offset, a: a + offset, "shift")
        cloud.register(lambda _, a: a if a > 0 else None, "positive")
        cloud.register_dag("doomed", ["pass_on", "shift", ("positive", [None])],
                           [("pass_on", "shift"), ("shift", "positive")])
        assert cloud.call_dag("doomed", {"pass_on": 1, "shift": 2}, output_key="doomed-out").get() == 3
        mine = {n for n in names(cloud.client) if n.startswith("cloudburst-compat/doomed/")}
        assert mine == {"cloudburst-compat/doomed/first-valid/positive", "cloudburst-compat/doomed/fixed-args/shift",
                        "cloudburst-compat/doomed/args=shift+tail"}
        assert cloud.delete_dag("doomed") == (True, compat.CloudburstError.NO_CLOUDBURST_ERROR)
        assert not {n for n in names(cloud.client) if "doomed" in n}
        assert cloud.delete_dag("doomed") == (False, compat.CloudburstError.NO_SUCH_DAG)


def test_a_tcp_cluster_is_reached_by_its_address(start_cluster, monkeypatch):
    """Cloudburst's ``func_addr`` as HOST:PORT: the cluster in $CBCTL_HOME that listens there (CURVE keys and
    all); another address is refused with what to do."""
    import socket

    import cbctl
    import cbctl.compat.cloudburst as compat

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    handle = start_cluster(executors=1, extra_args=("--listen", f"tcp://127.0.0.1:{port}"))
    monkeypatch.setenv("CBCTL_HOME", str(handle.home))
    with compat.CloudburstConnection(f"127.0.0.1:{port}", "127.0.0.1") as cloud:
        assert cloud.register(lambda _, a: a + 1, "incr_tcp")(41).get(timeout=10) == 42
        assert cloud.response_address.startswith("tcp://127.0.0.1:")
    with compat.CloudburstConnection(f"tcp://localhost:{port}") as cloud:
        assert cloud.get_function("incr_tcp")(1).get(timeout=10) == 2
    with pytest.raises(cbctl.ClusterNotRunning, match=f"listens on tcp://127.0.0.1:{port}, not tcp://127.0.0.1:1"):
        compat.CloudburstConnection("127.0.0.1:1")
