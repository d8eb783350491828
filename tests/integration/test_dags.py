"""DAGs end to end: validation at deploy, per-source arguments, the examples, messages per call, many calls
in flight from threads and processes, and calls across an executor killed with SIGKILL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import cbctl
from tests.conftest import EXAMPLES, RunningCluster
from tests.integration.shared_cluster import TOOLKIT, registered_names

pytestmark = [pytest.mark.cbctl(deploy=[EXAMPLES / "pipeline.py", TOOLKIT]), pytest.mark.both_stores]  # two executors


# --- validation ----------------------------------------------------------------------------------------------

INVALID_DAGS = {
    "unknown": ("cbctl.dag('bad_unknown', [unknown_a, 'not_declared_anywhere'])",
                "names unregistered function(s) 'not_declared_anywhere'"),
    "cycle": ("cbctl.dag('bad_cycle', [cycle_a, cycle_b], edges=[(cycle_a, cycle_b), (cycle_b, cycle_a)])",
              "has a cycle"),
    "sinks": ("cbctl.dag('bad_sinks', [sinks_a, sinks_b, sinks_c], edges=[(sinks_a, sinks_b), (sinks_a, sinks_c)])",
              "has 2 sinks (sinks_b, sinks_c)"),
    "twice": ("cbctl.dag('bad_twice', [twice_a, twice_b, twice_a])", "uses function 'twice_a' twice"),
}


@pytest.mark.parametrize("kind", sorted(INVALID_DAGS))
def test_invalid_dag_names_the_problem_and_registers_nothing(shared, tmp_path, kind):
    declaration, problem = INVALID_DAGS[kind]
    source = tmp_path / f"invalid_{kind}.py"
    functions = "".join(f"@cbctl.function\ndef {kind}_{x}(cb, v):\n    return v\n\n" for x in "abc")
    source.write_text(f"import cbctl\n\n{functions}cbctl.dag('good_{kind}', [{kind}_a, {kind}_b])\n{declaration}\n")
    result = shared.cli("deploy", str(source))
    assert result.returncode == 1, result.stdout
    assert problem in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    functions_now, dags_now = registered_names(shared)
    assert not {f"{kind}_a", f"{kind}_b", f"{kind}_c"} & functions_now
    assert not {f"good_{kind}", f"bad_{kind}"} & dags_now


def test_invalid_dag_from_python_raises_and_registers_nothing(shared):
    client = shared.client()
    cases = [
        (["increment", "nowhere"], None, "unregistered"),
        (["left", "right"], [("left", "right"), ("right", "left")], "cycle"),
        (["left", "right", "join"], [("left", "right"), ("left", "join")], "2 sinks"),
        (["left", "left"], None, "twice"),
        (["left", "right"], [("left", "echo")], "not among its functions"),
    ]
    for functions, edges, problem in cases:
        with pytest.raises(cbctl.InvalidDag, match=problem):
            client.register_dag("py_invalid", functions, edges)
    assert "py_invalid" not in {d["name"] for d in client.list()["dags"]}


# --- arguments -----------------------------------------------------------------------------------------------


def test_per_source_arguments_and_edge_order(shared):
    out = shared.cli("call", "two_sources", "--arg", "left=1", "--arg", 'right="x"', check=True).stdout
    assert json.loads(out) == [["left", 1], ["right", "x"]]
    # the sink receives its inputs in the order of its incoming edges
    swapped = shared.cli("call", "two_sources_swapped", "--arg", "left=1", "--arg", "right=2", check=True).stdout
    assert json.loads(swapped) == [["right", 2], ["left", 1]]
    # plain ARGS go to every source
    assert json.loads(shared.cli("call", "two_sources", "5", check=True).stdout) == [["left", 5], ["right", 5]]
    wrong = shared.cli("call", "two_sources", "--arg", "join=1", "--arg", "left=1")
    assert wrong.returncode == 1
    assert "'join', which is not a source of 'two_sources': its sources are left, right" in wrong.stderr

    client = shared.client()
    assert client.call("two_sources", left=[[1, 2]], right=3, timeout=10) == [["left", [1, 2]], ["right", 3]]
    with pytest.raises(cbctl.InvalidArgument, match="not a source"):
        client.call("two_sources", lefty=[1], timeout=10)


# --- the examples ------------------------------------------------------------------------------------------


def test_pipeline_and_diamond_examples(shared):
    assert shared.cli("call", "pipeline", "3", check=True).stdout.strip() == "16"
    assert shared.cli("call", "diamond", "5", check=True).stdout.strip() == "25"
    client = shared.client()
    assert [client.call("diamond", i, timeout=10) for i in range(10)] == [5 * i for i in range(10)]


def test_wordcount_example_keeps_state_in_the_store(shared):
    shared.cli("deploy", str(EXAMPLES / "wordcount.py"), check=True)
    first = json.loads(shared.cli("call", "wordcount", "the cat saw the dog", check=True).stdout)
    assert first == {"the": 2, "cat": 1, "saw": 1, "dog": 1}
    client = shared.client()
    assert client.call("wordcount", "The end.", timeout=10) == {"the": 3, "end": 1}
    assert shared.cli("get", "wordcount/the", check=True).stdout.strip() == "3"
    assert client.get("wordcount/dog") == 1


def test_messaging_example_sends_between_running_functions(shared):
    shared.cli("deploy", str(EXAMPLES / "messaging.py"), check=True)
    out = json.loads(shared.cli("call", "messaging", "hello", check=True).stdout)
    assert out["listener"] != out["talker"]
    assert out["heard"] == [out["talker"], "hello"]
    client = shared.client()
    for i in range(5):
        result = client.call("messaging", {"n": i}, timeout=15)
        assert result["heard"] == [result["talker"], {"n": i}] and result["listener"] != result["talker"]


# --- messages per call ---------------------------------------------------------------------------------------


def frame_counts(client: cbctl.Client) -> tuple[int, ...]:
    """(scheduler calls received, dag calls received, scheduler frames sent, executor frames sent, executor
    frames received, bytes of the calls received, scheduler bytes sent, executor bytes sent), from the
    scheduler's counters and the executors' latest statuses."""
    info = client.cluster_info()
    counters = info["counters"]
    executors = [status["metrics"] for status in info["executors"].values()]
    return (counters["calls"], counters["dag_calls"], counters["frames_sent"],
            sum(m["frames_sent"] for m in executors), sum(m["frames_received"] for m in executors),
            counters["call_request_bytes"], counters["bytes_sent"], sum(m["bytes_sent"] for m in executors))


def settled_counts(handle: RunningCluster, client: cbctl.Client) -> tuple[int, ...]:
    """Counts once every executor has reported after the last call: equal over more than a status interval."""
    last = frame_counts(client)
    last_change = time.monotonic()
    deadline = last_change + 15
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = frame_counts(client)
        if now != last:
            last, last_change = now, time.monotonic()
        elif time.monotonic() - last_change > 1.5:
            return now
    raise AssertionError("the frame counters did not settle within 15 s")


#: Bytes a sequential 2-function chain call costs on the wire, all frames together: 496 when this was written
#: (CallRequest 125, DagTrigger 309, of which the schedule, the two steps' addresses and versions and the edge,
#: about 190, and CallResult 61; the addresses are ipc paths of a fixed length), so a field added to every
#: trigger, or a schedule sent twice, fails here as a count.
CHAIN_BYTES_PER_CALL = 540


def test_messages_per_call(start_cluster):
    """A chain's calls, one at a time on an idle cluster, cost 3 frames each (client -> scheduler -> the
    executor of both steps -> client: the second step runs where the first made its input, no hop between
    them) and a bounded number of bytes; a single function's, 3 frames."""
    handle = start_cluster(executors=2)
    handle.cli("deploy", str(TOOLKIT), check=True)
    client = handle.client()
    assert client.call("where", 0, timeout=10) and client.call("whoami", timeout=10)  # code loaded everywhere
    calls = 100
    before = settled_counts(handle, client)
    placements = [client.call("where", i, timeout=10) for i in range(calls)]
    after = settled_counts(handle, client)
    single, dag, scheduler_sent, executor_sent, executor_received, request_bytes, scheduler_bytes, executor_bytes = (
        a - b for a, b in zip(after, before))
    hops = sum(1 for a, b in placements if a != b)  # where_a and where_b ran on different executors
    assert hops == 0, f"{hops} of {calls} calls ran their two steps on two idle executors"
    assert (single, dag) == (0, calls)  # client -> scheduler: one CallRequest per call
    assert scheduler_sent == calls  # scheduler -> the source's executor
    assert executor_sent == executor_received == calls  # the sink -> client
    assert dag + scheduler_sent + executor_sent == 3 * calls
    per_call = (request_bytes + scheduler_bytes + executor_bytes) / calls
    assert per_call <= CHAIN_BYTES_PER_CALL, (request_bytes / calls, scheduler_bytes / calls, executor_bytes / calls)

    before = settled_counts(handle, client)
    for _ in range(calls):
        client.call("whoami", timeout=10)
    after = settled_counts(handle, client)
    single, dag, scheduler_sent, executor_sent, executor_received = (a - b for a, b in zip(after[:5], before[:5]))
    assert (single, dag, scheduler_sent, executor_sent, executor_received) == (calls, 0, calls, calls, calls)


# --- many calls in flight ------------------------------------------------------------------------------------


def test_thousand_calls_from_four_threads_sharing_one_client(shared):
    client = shared.client()
    results: dict[int, list[tuple[int, object]]] = {}
    errors: list[BaseException] = []

    def worker(thread: int) -> None:
        mine = results[thread] = []
        try:
            for i in range(250):
                x = thread * 1000 + i
                mine.append((x, client.call("pipeline", x, timeout=20)))
        except BaseException as exc:  # reported below, with the thread's progress
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a caller thread hung"
    assert not errors, errors
    assert sum(len(r) for r in results.values()) == 1000
    assert all(value == (x + 1) ** 2 for r in results.values() for x, value in r)


def test_sixty_four_in_flight_from_one_process(shared):
    client = shared.client()
    futures = [(i, "pipeline" if i % 2 else "diamond", client.call_async("pipeline" if i % 2 else "diamond", i))
               for i in range(64)]
    for i, name, future in futures:
        assert future.result(timeout=20) == ((i + 1) ** 2 if name == "pipeline" else 5 * i)


CLIENT_PROCESS = """
import json, sys
import cbctl
base = int(sys.argv[1])
with cbctl.connect() as client:
    futures = [(base + i, client.call_async("pipeline", base + i)) for i in range(64)]
    print(json.dumps([[x, f.result(timeout=30)] for x, f in futures]))
"""


def test_sixty_four_in_flight_from_each_of_three_processes(shared):
    env = {**os.environ, "CBCTL_HOME": str(shared.home)}
    procs = [subprocess.Popen([sys.executable, "-c", CLIENT_PROCESS, str(base)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for base in (0, 10_000, 20_000)]
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        answers = json.loads(out)
        assert len(answers) == 64 and all(value == (x + 1) ** 2 for x, value in answers)


# --- an executor killed during calls --------------------------------------------------------------------------


def executor_state(client: cbctl.Client, name: str) -> dict:
    return next(p for p in client.supervisor_status()["processes"] if p["name"] == name)


def test_kill_9_of_an_executor_during_a_stream_of_calls(start_cluster):
    handle = start_cluster(executors=2)
    handle.cli("deploy", str(EXAMPLES / "pipeline.py"), check=True)
    client = handle.client()
    # generous: a call the kill hit is answered within a second when re-dispatched, and never when it is not
    victim, call_timeout = "executor-0", 10.0
    old_pid = handle.pid_of(victim)
    right = wrong = 0
    failures: list[str] = []
    killed = False
    started = time.monotonic()
    x = 0
    while time.monotonic() - started < 5:
        window = []
        for _ in range(8):
            window.append((x, time.monotonic(), client.call_async("pipeline", x)))
            x += 1
        if not killed and time.monotonic() - started > 1:
            os.kill(old_pid, 9)  # while this window's calls are in flight
            killed = True
        for arg, sent, future in window:
            try:
                value = future.result(timeout=max(0.0, sent + call_timeout - time.monotonic()))
                right += value == (arg + 1) ** 2
                wrong += value != (arg + 1) ** 2
            except cbctl.CbctlError as exc:
                failures.append(type(exc).__name__)
            assert time.monotonic() - sent < call_timeout + 2, "a call outlived its timeout"
    assert killed
    # the README's promise: the killed executor's calls are dispatched again and every caller gets the right
    # answer (a timeout here is a call the kill lost)
    assert failures == [] and wrong == 0, (failures, wrong)
    assert right == x, f"{right} of {x} calls answered right"
    assert client.cluster_info()["counters"]["retried_calls"] >= 1, "the kill hit no call: the test proved nothing"

    restarted = handle.wait_for(lambda: (lambda p: p if p["pid"] != old_pid and p["state"] == "ready" else None)(
        executor_state(client, victim)), timeout=20, what=f"{victim} to be restarted")
    assert restarted["restarts"] >= 1
    answers = [client.call("pipeline", i, timeout=call_timeout) for i in range(200)]
    assert answers == [(i + 1) ** 2 for i in range(200)]
    handle.cli("deploy", str(TOOLKIT), check=True)
    ran_on = {client.call("whoami", timeout=call_timeout) for _ in range(30)}
    assert victim in ran_on, "the restarted executor is not being used"


def test_deployable_examples_say_how_to_deploy_and_call_them():
    for name in ("pipeline", "wordcount", "messaging", "model"):
        path = Path(EXAMPLES) / f"{name}.py"
        text = path.read_text()
        assert text.startswith('"""'), f"{path.name} has no module docstring"
        doc = text.split('"""')[1]
        assert "cbctl deploy" in doc and "cbctl call" in doc, f"{path.name} does not say how to deploy and call it"
