"""Arguments of the wrong type are refused where they are given, at once, with InvalidArgument naming them: in a
function (cb.get(None) used to stall the call for 15 s and flood the store's log with dropped frames) and in the
client (list_keys(None) likewise)."""

from __future__ import annotations

import time

import pytest

import cbctl
from cbctl.lifecycle import kill_processes
from cbctl.runtime.cluster import ClusterFile
from tests.conftest import run_cli


def read(cb, key):
    return cb.get(key)


def send_to(cb, executor_id):
    cb.send(executor_id, "hello")


def recv_for(cb, timeout):
    return cb.recv(timeout)


def test_function_side_arguments_are_checked_before_they_leave_the_executor(start_cluster):
    handle = start_cluster(executors=1)
    client = handle.client()
    for fn in (read, send_to, recv_for):
        client.register(fn, name=fn.__name__)
    for name, argument, named in (("read", None, "key None"), ("read", 5, "key 5"), ("read", "", "key ''"),
                                  ("read", ["k"], "key ['k']"), ("send_to", 5, "executor id 5"),
                                  ("recv_for", "1", "timeout='1'"), ("recv_for", -1, "timeout=-1")):
        started = time.monotonic()
        with pytest.raises(cbctl.FunctionError) as refused:
            client.call(name, argument, timeout=30)
        took = time.monotonic() - started
        assert refused.value.remote_type == "InvalidArgument", refused.value
        assert named in str(refused.value), refused.value
        assert took < 3, f"{name}({argument!r}) took {took:.1f} s to fail"
    store_log = (handle.home / "logs" / "store-0.log").read_text()
    assert "dropped a bad frame" not in store_log


def inc(cb, x):
    return x + 1


CLIENT_MISUSES = [
    ("list_keys(None)", lambda c: c.list_keys(None), "prefix=None"),
    ("list_keys(5)", lambda c: c.list_keys(5), "prefix=5"),
    ("get(None)", lambda c: c.get(None), "key None"),
    ("get(5)", lambda c: c.get(5), "key 5"),
    ("put(5, 1)", lambda c: c.put(5, 1), "key 5"),
    ("delete_key(b'k')", lambda c: c.delete_key(b"k"), "key b'k'"),
    ("call timeout='5'", lambda c: c.call("inc", 1, timeout="5"), "timeout='5'"),
    ("call timeout=nan", lambda c: c.call("inc", 1, timeout=float("nan")), "timeout=nan"),
    ("result timeout='5'", lambda c: c.call_async("inc", 1).result(timeout="5"), "timeout='5'"),
    ("call consistency=5", lambda c: c.call("inc", 1, consistency=5), "consistency 5"),
    ("call consistency='strong'", lambda c: c.call("inc", 1, consistency="strong"), "consistency 'strong'"),
    ("call_async store_result='yes'", lambda c: c.call_async("inc", 1, store_result="yes"), "store_result='yes'"),
    ("call(None)", lambda c: c.call(None, 1), "None is not a function or DAG name"),
    ("register gpu='yes'", lambda c: c.register(inc, gpu="yes"), "gpu='yes'"),
    ("register init_args=5", lambda c: c.register(inc, init_args=5), "init_args=5"),
    ("register_dag functions=5", lambda c: c.register_dag("d1", 5), "functions=5"),
    ("register_dag name=5", lambda c: c.register_dag(5, ["inc"]), "DAG name 5"),
    ("register_dag edges=5", lambda c: c.register_dag("d1", ["inc"], edges=5), "edges=5"),
    ("add_trigger name=None", lambda c: c.add_trigger(None, "p/", "inc"), "trigger name None"),
    ("add_trigger prefix=5", lambda c: c.add_trigger("t", 5, "inc"), "prefix=5"),
    ("remove_trigger(5)", lambda c: c.remove_trigger(5), "trigger name 5"),
    ("delete(None)", lambda c: c.delete(None), "name None"),
    ("Ref(None)", lambda c: cbctl.Ref(None), "key None is invalid"),
    ("connect(home=5)", lambda c: cbctl.connect(home=5), "home=5"),
]


@pytest.mark.parametrize("misuse", [m[0] for m in CLIENT_MISUSES])
def test_client_side_arguments_are_checked_before_they_leave_the_process(shared_client, misuse):
    (use, named), = [(use, named) for what, use, named in CLIENT_MISUSES if what == misuse]
    started = time.monotonic()
    with pytest.raises(cbctl.InvalidArgument) as refused:
        use(shared_client)
    assert named in str(refused.value), refused.value
    assert time.monotonic() - started < 1


@pytest.fixture(scope="module")
def shared_client(tmp_path_factory):
    home = tmp_path_factory.mktemp("argtypes")
    run_cli(home, "up", "--executors", "1", check=True, timeout=90)
    client = cbctl.connect(home)
    try:
        client.register(inc, name="inc")
        yield client
        assert client.call("inc", 1, timeout=20) == 2, "the client works on after every refusal"
        assert "dropped a bad frame" not in (home / "logs" / "store-0.log").read_text()
        assert "dropped a bad frame" not in (home / "logs" / "scheduler-0.log").read_text()
    finally:
        client.close()
        found = ClusterFile.read(home)
        pids = found.pids() if found else []
        run_cli(home, "down", timeout=60)
        kill_processes(pids)
