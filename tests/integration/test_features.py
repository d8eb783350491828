"""Cloudburst's execution features on real clusters: batching, multi-exec, continuations, storage-triggered
calls and GPU executors (with the testing-only fake devices)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

import cbctl
from cbctl.runtime.supervisor.spec import count_gpus
from tests.conftest import EXAMPLES, run_cli

FEATURES = textwrap.dedent('''
    import os
    import time
    import uuid

    import cbctl


    @cbctl.function(batching=True)
    def scale(cb, xs, factors):
        cb.put(f"batches/{uuid.uuid4().hex}", len(xs))  # what the test reads the batch sizes from
        time.sleep(0.02)  # long enough for the other calls to queue behind this batch
        return [x * f for x, f in zip(xs, factors)]


    @cbctl.function(batching=True)
    def short_batch(cb, xs):
        time.sleep(0.02)
        return xs[:-1] if len(xs) > 1 else "not a list"


    @cbctl.function
    def split(cb, x):
        return x


    @cbctl.function
    def add_one(cb, x):
        return x + 1


    @cbctl.function
    def add_two(cb, x):
        return x + 2


    @cbctl.function
    def add_three(cb, x):
        if x == 10:
            time.sleep(0.3)  # the ordering check: this result arrives well after the other two
        return x + 3


    @cbctl.function
    def score(cb, x):
        cb.put(f"score-runs/{uuid.uuid4().hex}", x)
        return x * 10


    @cbctl.function
    def best(cb, scores):
        return {"scores": sorted(scores), "best": max(scores)}


    cbctl.dag("ensemble", [split, add_one, add_two, add_three, score, best],
              edges=[(split, add_one), (split, add_two), (split, add_three),
                     (add_one, score), (add_two, score), (add_three, score), (score, best)],
              multiexec=[score])
''')


def deploy_source(cluster, tmp_path: Path, source: str, name: str = "fn.py") -> None:
    path = tmp_path / name
    path.write_text(source)
    cluster.cli("deploy", str(path), check=True)


# --- batching -------------------------------------------------------------------------------------------


def test_batching_serves_concurrent_calls_in_batches_and_each_caller_gets_its_own_result(cluster, tmp_path):
    deploy_source(cluster, tmp_path, FEATURES)
    client = cluster.client()
    futures = [client.call_async("scale", i, 3) for i in range(50)]
    assert [f.result(timeout=30) for f in futures] == [3 * i for i in range(50)]
    sizes = [client.get(k) for k in client.list_keys("batches/")]
    assert sum(sizes) == 50, sizes  # every call was in exactly one batch
    assert max(sizes) > 1, f"no batch held more than one call: {sizes}"
    assert max(sizes) <= 10, f"a batch exceeded the default limit of 10: {sizes}"


def test_a_batching_function_returning_the_wrong_length_fails_every_call_of_its_batch(cluster, tmp_path):
    deploy_source(cluster, tmp_path, FEATURES)
    client = cluster.client()
    futures = [client.call_async("short_batch", i) for i in range(12)]
    for future in futures:
        with pytest.raises(cbctl.FunctionError) as caught:
            future.result(timeout=30)
        assert caught.value.remote_type == "BatchResultError"
        assert "batching function 'short_batch' returned" in str(caught.value)
        assert "one result per call" in str(caught.value) or "must return a list" in str(caught.value)
    result = cluster.cli("call", "short_batch", "1")
    assert result.returncode == 1
    assert "error: the function raised BatchResultError: batching function 'short_batch' returned str" in result.stderr


# --- multi-exec -----------------------------------------------------------------------------------------


def test_multiexec_function_runs_once_per_upstream_result_and_its_successor_gets_them_all(cluster, tmp_path):
    deploy_source(cluster, tmp_path, FEATURES)
    client = cluster.client()
    assert client.call("ensemble", 1, timeout=20) == {"scores": [20, 30, 40], "best": 40}
    assert sorted(client.get(k) for k in client.list_keys("score-runs/")) == [2, 3, 4]
    # a multi-exec sink: the caller receives the list of all its results, in completion order
    client.register_dag("ensemble_scores", ["split", "add_one", "add_two", "add_three", "score"],
                        edges=[("split", "add_one"), ("split", "add_two"), ("split", "add_three"),
                               ("add_one", "score"), ("add_two", "score"), ("add_three", "score")],
                        multiexec=["score"])
    scores = client.call("ensemble_scores", 10, timeout=20)
    assert sorted(scores) == [110, 120, 130]
    assert scores[-1] == 130, "add_three sleeps for 10, so its score must come last"
    futures = [client.call_async("ensemble_scores", i) for i in range(20)]
    assert [sorted(f.result(timeout=30)) for f in futures] == [[10 * (i + 1), 10 * (i + 2), 10 * (i + 3)]
                                                               for i in range(20)]
    assert len(client.list_keys("score-runs/")) == 3 + 3 + 3 * 20
    # a bad multiexec option is refused at registration
    with pytest.raises(cbctl.InvalidDag, match="multiexec names 'nope', which is not one of its functions"):
        client.register_dag("broken", ["split", "add_one"], multiexec=["nope"])
    with pytest.raises(cbctl.InvalidDag, match="multiexec must be a list"):
        client.register_dag("broken", ["split", "add_one"], multiexec="add_one")


# --- continuations --------------------------------------------------------------------------------------

CONTINUATIONS = textwrap.dedent('''
    import cbctl


    @cbctl.function
    def first(cb, x):
        return x + 1


    @cbctl.function
    def to_second(cb, x):
        return cbctl.Continue("chain2", x, 100)


    @cbctl.function
    def second(cb, x, y):
        return x + y


    @cbctl.function
    def to_third(cb, x):
        return cbctl.Continue("chain3", x)


    @cbctl.function
    def third(cb, x):
        return x * 2


    @cbctl.function
    def done(cb, x):
        return {"final": x}


    @cbctl.function
    def forever(cb, n):
        cb.put("forever-depth", n)
        return cbctl.Continue("forever", n + 1)


    @cbctl.function
    def to_nowhere(cb, x):
        return cbctl.Continue("no_such_dag", x)


    @cbctl.function
    def continue_early(cb, x):
        return cbctl.Continue("done", x)


    cbctl.dag("chain1", [first, to_second])
    cbctl.dag("chain2", [second, to_third])
    cbctl.dag("chain3", [third, done])
    cbctl.dag("early", [continue_early, done])
''')


def test_a_chain_of_three_dags_joined_by_continuations_returns_the_final_value(cluster, tmp_path):
    deploy_source(cluster, tmp_path, CONTINUATIONS)
    client = cluster.client()
    # chain1: 1 + 1 = 2 -> chain2: 2 + 100 = 102 -> chain3: 102 * 2 = 204
    assert client.call("chain1", 1, timeout=20) == {"final": 204}
    futures = [client.call_async("chain1", i) for i in range(30)]
    assert [f.result(timeout=30) for f in futures] == [{"final": (i + 101) * 2} for i in range(30)]
    assert cluster.cli("call", "chain1", "1", "--json", check=True).stdout.strip() == '{"final": 204}'


def test_a_runaway_continuation_loop_hits_the_depth_limit_and_only_a_sink_may_continue(cluster, tmp_path):
    deploy_source(cluster, tmp_path, CONTINUATIONS)
    client = cluster.client()
    with pytest.raises(cbctl.ContinuationDepthExceeded, match="handed on with cbctl.Continue 32 times"):
        client.call("forever", 0, timeout=20)
    assert client.get("forever-depth") == 32  # the first run plus 32 continuations: depths 0..32
    result = cluster.cli("call", "forever", "0")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "--max-continuations" in result.stderr
    with pytest.raises(cbctl.FunctionError, match="'continue_early' returned cbctl.Continue but is not the sink"):
        client.call("early", 1, timeout=20)
    with pytest.raises(cbctl.NoSuchFunction, match="'no_such_dag'"):
        client.call("to_nowhere", 1, timeout=20)


# --- storage-triggered calls ----------------------------------------------------------------------------

TRIGGERED = textwrap.dedent('''
    import uuid

    import cbctl


    @cbctl.function
    def on_put(cb, key, value):
        cb.put(f"seen/{key}/{uuid.uuid4().hex}", value)  # one key per invocation: duplicates would show


    @cbctl.function
    def explode(cb, key, value):
        raise RuntimeError(f"cannot handle {key}")
''')


def test_every_put_to_a_watched_prefix_calls_the_function_and_other_prefixes_do_not(cluster, tmp_path):
    deploy_source(cluster, tmp_path, TRIGGERED)
    client = cluster.client()
    added = client.add_trigger("watch", "watched/", "on_put")
    assert added["replaced"] is False and added["prefix"] == "watched/"
    client.put("other/x", 1)
    for i in range(100):
        client.put(f"watched/{i}", {"i": i})
    seen = cluster.wait_for(lambda: (lambda keys: keys if len(keys) >= 100 else None)(client.list_keys("seen/")),
                            timeout=30, what="100 triggered calls")
    assert len(seen) == 100  # at least once, and no retry was due yet: exactly once here
    assert sorted(k.split("/")[2] for k in seen) == sorted(str(i) for i in range(100))
    assert all(client.get(k) == {"i": int(k.split("/")[2])} for k in seen[:5])
    assert not any(k.startswith("seen/other/") for k in seen)
    stats = client.store_stats()
    assert stats["triggered_calls"] == 100 and stats["triggers"] == 1
    cluster.wait_for(lambda: client.store_stats()["trigger_pending"] == 0, timeout=10, what="results to return")
    listed = json.loads(cluster.cli("trigger", "ls", "--json", check=True).stdout)
    assert [(t["name"], t["prefix"], t["function"], t["fired"], t["errors"]) for t in listed] == [
        ("watch", "watched/", "on_put", 100, 0)]
    # removal: the store stops matching before the removal is acknowledged
    assert cluster.cli("trigger", "rm", "watch", check=True).returncode == 0
    client.put("watched/after", 1)
    assert client.store_stats()["triggered_calls"] == 100
    assert client.list_triggers() == []


def test_trigger_errors_are_clear_and_failed_calls_are_counted(cluster, tmp_path):
    source = TRIGGERED + textwrap.dedent('''
        @cbctl.function
        def describe(cb, key, value):
            return f"{key}={value}"


        @cbctl.function
        def record(cb, text):
            cb.put("described/" + text.split("=")[0], text)


        pipeline = cbctl.dag("describe_then_record", [describe, record])
        cbctl.trigger("via_dag", prefix="in/", function=pipeline)
    ''')
    path = tmp_path / "fn.py"
    path.write_text(source)
    out = cluster.cli("deploy", str(path), check=True).stdout
    assert "trigger  via_dag: puts under 'in/' call describe_then_record" in out  # declared in the file
    client = cluster.client()
    client.put("in/a", 7)  # a DAG as the target: every source receives (key, value)
    assert cluster.wait_for(lambda: client.list_keys("described/"), timeout=20, what="the DAG's write") == [
        "described/in/a"]
    assert client.get("described/in/a") == "in/a=7"
    client.remove_trigger("via_dag")
    with pytest.raises(cbctl.NoSuchFunction, match="'missing'"):
        client.add_trigger("t", "x/", "missing")
    with pytest.raises(cbctl.InvalidArgument, match="prefix '__cb/fn/' is invalid"):
        client.add_trigger("t", "__cb/fn/", "on_put")
    with pytest.raises(cbctl.InvalidArgument, match="prefix '' is invalid"):
        client.add_trigger("t", "", "on_put")
    bad = cluster.cli("trigger", "add", "bad name", "--prefix", "x/", "--function", "on_put")
    assert bad.returncode == 1 and bad.stderr.startswith("error: trigger name 'bad name' is invalid")
    missing = cluster.cli("trigger", "rm", "nope")
    assert missing.returncode == 1 and "no trigger is named 'nope'" in missing.stderr
    client.add_trigger("boom", "boom/", "explode")
    with pytest.raises(cbctl.InvalidArgument, match="called by trigger\\(s\\) boom"):
        client.delete("explode")
    client.put("boom/1", 1)
    client.put("boom/2", 2)
    cluster.wait_for(lambda: client.store_stats()["trigger_errors"] == 2, timeout=20, what="two failed calls")
    (listed,) = client.list_triggers()
    assert listed["errors"] == 2 and "RuntimeError: cannot handle boom/" in listed["last_error"]


# --- GPU executors --------------------------------------------------------------------------------------

GPU_FUNCTIONS = textwrap.dedent('''
    import os
    import time
    import uuid

    import cbctl


    @cbctl.function(gpu=True)
    def where_gpu(cb):
        return [cb.getid(), os.environ.get("CUDA_VISIBLE_DEVICES")]


    @cbctl.function
    def where_cpu(cb):
        return cb.getid()


    @cbctl.function(gpu=True, batching=True)
    def gpu_batch(cb, xs):
        cb.put(f"gpu-batches/{uuid.uuid4().hex}", len(xs))
        time.sleep(0.02)
        return [x + 1 for x in xs]
''')


def test_gpu_functions_run_only_on_the_fake_gpu_executor(start_cluster, tmp_path):
    cluster = start_cluster(executors=1, extra_args=("--gpu-executors", "1", "--fake-gpus", "1",
                                                     "--max-batch", "3"))
    gpu_ids = {f"executor-{p.index}" for p in cluster.cluster_file().processes if p.executor_type == "gpu"}
    cpu_ids = {f"executor-{p.index}" for p in cluster.cluster_file().processes if p.executor_type == "cpu"}
    assert len(gpu_ids) == 1 and len(cpu_ids) == 1
    deploy_source(cluster, tmp_path, GPU_FUNCTIONS)
    client = cluster.client()
    futures = [client.call_async("where_gpu") for _ in range(20)]
    assert {tuple(f.result(timeout=20)) for f in futures} == {(next(iter(gpu_ids)), "0")}
    assert {client.call("where_cpu", timeout=20) for _ in range(10)} == cpu_ids
    # batching on the GPU executor, bounded by --max-batch 3
    futures = [client.call_async("gpu_batch", i) for i in range(30)]
    assert [f.result(timeout=30) for f in futures] == [i + 1 for i in range(30)]
    sizes = [client.get(k) for k in client.list_keys("gpu-batches/")]
    assert sum(sizes) == 30 and max(sizes) == 3, sizes
    # the example: a batched matrix product (numpy when torch is absent, torch on CPU or CUDA when present)
    cluster.cli("deploy", str(EXAMPLES / "gpu_matmul.py"), check=True)
    out = cluster.cli("call", "matmul", "[[1, 2], [3, 4]]", "[[5, 6], [7, 8]]", "--json", check=True).stdout
    assert json.loads(out) == [[19.0, 22.0], [43.0, 50.0]]
    futures = [client.call_async("matmul", [[i, 0], [0, i]], [[1, 2, 3], [4, 5, 6]]) for i in range(16)]
    assert [f.result(timeout=30) for f in futures] == [[[i, 2 * i, 3 * i], [4 * i, 5 * i, 6 * i]] for i in range(16)]


def test_gpu_functions_are_refused_without_gpu_executors_and_up_refuses_missing_gpus(cluster, tmp_path):
    client = cluster.client()
    with pytest.raises(cbctl.NoExecutorAvailable, match="needs a GPU but this cluster has no GPU executor"):
        client.register(lambda cb: 1, name="needs_gpu", gpu=True)
    path = tmp_path / "gpu.py"
    path.write_text(GPU_FUNCTIONS)
    refused = cluster.cli("deploy", str(path))
    assert refused.returncode == 1 and "no GPU executor" in refused.stderr
    # asking for more GPU executors than there are devices fails before anything starts
    home = tmp_path / "gpu-home"
    result = run_cli(home, "up", "--executors", "1", "--gpu-executors", str(count_gpus() + 1))
    assert result.returncode == 1
    assert "asks for more GPUs than are visible" in result.stderr and "--fake-gpus" in result.stderr
    assert not (home / "cluster.json").exists()
