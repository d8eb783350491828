"""The pytest plugin (``cbctl_cluster``, ``cbctl_client``, ``@pytest.mark.cbctl``) as a user meets it: a
directory of the user's functions and tests, run by pytest in a process of its own, with cbctl installed
(the plugin comes through the ``pytest11`` entry point, nothing to configure). A harness conftest records
each test's cluster (home and pids) so that sharing, isolation and teardown can be checked by pid."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cbctl.runtime.process import process_alive

pytest_plugins = ["pytester"]

USER_FUNCTIONS = '''
import cbctl

@cbctl.function
def increment(cb, x):
    return x + 1

@cbctl.function
def square(cb, x):
    return x * x

cbctl.dag("pipeline", [increment, square])
'''

USER_TESTS = '''
import pytest
import cbctl

pytestmark = pytest.mark.cbctl(deploy=["functions.py"])


def test_register_and_call(cbctl_client):
    cbctl_client.register(lambda cb, x: x * 2, name="double")
    assert cbctl_client.call("double", 21) == 42


def test_the_deployed_file(cbctl_client):
    assert cbctl_client.call("pipeline", 3) == 16


def test_state(cbctl_client):
    cbctl_client.put("greeting", "hello")
    assert cbctl_client.get("greeting") == "hello"


def test_a_raising_function(cbctl_client):
    def fails(cb):
        raise ValueError("nope")

    cbctl_client.register(fails)
    with pytest.raises(cbctl.FunctionError, match="nope"):
        cbctl_client.call("fails")


@pytest.mark.cbctl(scope="function", executors=1)
def test_a_cluster_of_its_own(cbctl_cluster, cbctl_client):
    assert len(cbctl_client.cluster_info()["executors"]) <= 1
    assert cbctl_client.call("pipeline", 2) == 9  # the module's deploy= still applies


@pytest.mark.cbctl(executors=0)
def test_a_cluster_that_cannot_start(cbctl_client):
    pass
'''

USER_OTHER_MODULE = '''
import pytest
import cbctl


def test_a_fresh_cluster_per_module(cbctl_client):
    with pytest.raises(cbctl.NoSuchFunction):
        cbctl_client.call("double", 1)
'''

HARNESS_CONFTEST = '''
import json
import pytest

@pytest.fixture(autouse=True)
def record_cluster(request):
    wanted = "cbctl_cluster" in request.fixturenames and "cannot_start" not in request.node.name
    cluster = request.getfixturevalue("cbctl_cluster") if wanted else None
    yield
    if cluster is not None:
        with open({records!r}, "a") as out:
            out.write(json.dumps({{"test": request.node.name, "home": str(cluster.home),
                                   "pids": cluster.pids()}}) + "\\n")
'''


def alive(pids: list[int]) -> list[int]:
    """The pids still running a process (a zombie counts as gone: only its parent's wait is missing)."""
    return [pid for pid in pids if process_alive(pid)]


def test_the_fixtures_in_a_users_test_suite(pytester: pytest.Pytester):
    records = pytester.path / "records.jsonl"
    pytester.makepyfile(functions=USER_FUNCTIONS, test_user=USER_TESTS, test_other=USER_OTHER_MODULE)
    pytester.makeconftest(HARNESS_CONFTEST.format(records=str(records)))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v", timeout=300)
    result.assert_outcomes(passed=6, errors=1)
    result.stdout.fnmatch_lines(["*did not start: a cluster needs at least one executor*"])

    seen = {entry["test"]: entry for entry in map(json.loads, records.read_text().splitlines())}
    shared = [seen[name] for name in ("test_register_and_call", "test_the_deployed_file", "test_state",
                                      "test_a_raising_function")]
    assert len({entry["home"] for entry in shared}) == 1  # one cluster for the module
    assert len({tuple(entry["pids"]) for entry in shared}) == 1  # the same processes, not a restart
    own, other = seen["test_a_cluster_of_its_own"], seen["test_a_fresh_cluster_per_module"]
    assert len({shared[0]["home"], own["home"], other["home"]}) == 3

    every_pid = [pid for entry in seen.values() for pid in entry["pids"]]
    assert len(every_pid) >= 3 * 4
    deadline = time.monotonic() + 10
    while alive(every_pid) and time.monotonic() < deadline:  # the run is over: only reaping may lag
        time.sleep(0.05)
    assert not alive(every_pid), "the plugin left processes of its clusters behind"
    for entry in seen.values():  # homes in pytest's temporary directory, logs kept for a post-mortem
        home = Path(entry["home"])
        assert home.is_relative_to(pytester.path) and (home / "logs" / "executor-0.log").exists()
        assert not (home / "cluster.json").exists()
