"""Ephemeral values and bucket triggers on real clusters: reads from any executor (get and Ref) and from the
client, never in the log, the TTL, the death of the holder (the store) and of the writer, a restarted store
(durable keys back, ephemeral ones gone), and batch, window and join triggers over both kinds of put."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import cbctl
from cbctl.runtime.defaults import STORE_RETRY_BUDGET_S
from tests.conftest import EXAMPLES, REPO, RunningCluster
from tests.integration.shared_cluster import DEPLOYABLES, module_cluster
from tests.integration.test_recovery import restarted

FNS = DEPLOYABLES / "ephemeral_fns.py"


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    with module_cluster(tmp_path_factory.mktemp("cbhome"), executors=2, deploy=(FNS,)) as handle:
        yield handle


def firings(client: cbctl.Client, name: str) -> list[dict]:
    return [client.get(key) for key in client.list_keys(f"fired/{name}/")]


def read_from_another_executor(handle: RunningCluster, client: cbctl.Client, writer: str, name: str,
                               *args) -> list:
    """Call ``name`` until an executor other than ``writer`` answers (calls in flight together spread over
    both executors); returns that answer."""
    def attempt():
        answers = [f.result(timeout=10) for f in [client.call_async(name, *args) for _ in range(4)]]
        return next((a for a in answers if a[0] != writer), None)

    return handle.wait_for(attempt, timeout=20, what=f"{name} on an executor other than {writer}")


def test_an_ephemeral_value_is_read_everywhere_counted_and_never_logged(shared):
    client = shared.client()
    marker = "EPHEMERAL-" + "x" * 4000
    writer = client.call("put_temp", "eph/a", marker, timeout=10)
    assert client.get("eph/a") == marker
    assert read_from_another_executor(shared, client, writer, "read_where", "eph/a")[1] == marker
    assert read_from_another_executor(shared, client, writer, "ref_where", cbctl.Ref("eph/a"))[1] == marker
    assert "eph/a" in client.list_keys("eph/")

    stats = client.store_stats()
    assert stats["ephemeral_keys"] >= 1 and stats["ephemeral_bytes"] >= len(marker)
    store = json.loads(shared.cli("top", "--json", check=True).stdout)["store"]
    assert store["ephemeral_keys"] >= 1 and store["ephemeral_bytes"] >= len(marker)
    assert "ephemeral " in shared.cli("top", "--once", check=True).stdout

    # a durable put of a marker of the same shape reaches the files, so their not holding the first one means it
    client.put("dur/a", "DURABLE-" + "x" * 4000)
    data = shared.home / "data"
    on_disk = lambda: b"".join(p.read_bytes() for p in data.rglob("*") if p.is_file())  # noqa: E731
    shared.wait_for(lambda: b"DURABLE-xxxx" in on_disk(), timeout=10, what="the durable put in the log")
    assert b"EPHEMERAL-xxxx" not in on_disk()


def test_a_key_is_either_durable_or_ephemeral(shared):
    client = shared.client()
    client.put("mix/d", 1)
    with pytest.raises(cbctl.InvalidArgument, match="holds a durable value"):
        client.put("mix/d", 2, durable=False)
    client.put("mix/e", 1, durable=False)
    with pytest.raises(cbctl.InvalidArgument, match="holds an ephemeral value"):
        client.put("mix/e", 2)
    with pytest.raises(cbctl.InvalidArgument, match="ttl applies to ephemeral values only"):
        client.put("mix/x", 1, ttl=5)
    with pytest.raises(cbctl.InvalidArgument, match="ttl 0 is invalid"):
        client.put("mix/x", 1, durable=False, ttl=0)
    client.delete_key("mix/e")
    client.put("mix/e", 3)  # the key is free for a durable value once the ephemeral one is deleted
    assert client.get("mix/e") == 3


def test_an_ephemeral_value_is_gone_after_its_ttl_for_the_client_and_every_executor(shared):
    client = shared.client()
    writer = client.call("put_temp", "ttl/a", "short-lived", 1.0, timeout=10)
    client.put("ttl/b", "also short-lived", durable=False, ttl=1.0)
    put_at = time.monotonic()
    assert read_from_another_executor(shared, client, writer, "read_where", "ttl/a")[1] == "short-lived"
    assert client.call("read_or_error", "ttl/b", timeout=10) == ["ok", "also short-lived"]

    def gone() -> bool:
        try:
            client.get("ttl/a")
        except cbctl.NoSuchKey as exc:
            assert "ephemeral and gone" in str(exc)
            return True
        return False

    shared.wait_for(gone, timeout=5, what="the TTL to pass")
    assert time.monotonic() - put_at >= 0.9
    for _ in range(4):  # both executors: none serves it from a cache
        status, message = client.call("read_or_error", "ttl/b", timeout=10)
        assert status == "NoSuchKey" and "its ttl passed or the store restarted" in message
    assert "ttl/a" not in client.list_keys("ttl/")


def test_a_batch_trigger_fires_per_n_ephemeral_puts_with_the_keys(shared):
    client = shared.client()
    added = client.add_trigger("by3", "batch/", "record_firing", batch=3)
    assert added["kind"] == "batch" and added["batch"] == 3
    for i in range(7):
        client.put(f"batch/{i}", i, durable=False)
    got = shared.wait_for(lambda: (lambda f: f if len(f) >= 2 else None)(firings(client, "batch")), timeout=20,
                          what="two batches")
    assert sorted(tuple(f["keys"]) for f in got) == [("batch/0", "batch/1", "batch/2"),
                                                     ("batch/3", "batch/4", "batch/5")]
    assert all(f["values"] is None for f in got)
    listed = {t["name"]: t for t in client.list_triggers()}
    assert listed["by3"]["waiting"] == 1 and listed["by3"]["fired"] == 2  # batch/6 waits for two more
    client.remove_trigger("by3")


def test_a_window_trigger_fires_with_what_arrived_and_not_when_nothing_did(shared):
    client = shared.client()
    client.add_trigger("win", "win/", "record_firing", window=0.5)
    for i in range(3):
        client.put(f"win/{i}", i)  # durable puts
    got = shared.wait_for(lambda: firings(client, "win"), timeout=20, what="a window to fire")
    assert sorted(k for f in got for k in f["keys"]) == ["win/0", "win/1", "win/2"]
    time.sleep(1.5)  # three empty windows: an observation period, not a synchronisation
    assert len(firings(client, "win")) == len(got)
    assert {t["name"]: t for t in client.list_triggers()}["win"]["fired"] == len(got)
    client.remove_trigger("win")


def test_a_join_trigger_fires_once_every_named_key_is_in_with_values(shared):
    client = shared.client()
    keys = ["join/a", "join/b", "join/c"]
    client.add_trigger("j3", None, "record_firing", join=keys, values=True)
    client.put("join/a", "durable a")
    client.put("join/b", "ephemeral b", durable=False)
    client.put("join/x", "not named", durable=False)
    assert client.store_stats()["trigger_stats"]["j3"]["waiting"] == 2
    client.call("put_temp", "join/c", "ephemeral c from a function", timeout=10)
    (fired,) = shared.wait_for(lambda: firings(client, "join"), timeout=20, what="the join to fire")
    assert fired["keys"] == keys
    assert fired["values"] == ["durable a", "ephemeral b", "ephemeral c from a function"]
    client.remove_trigger("j3")


def test_bucket_triggers_from_the_cli_and_their_errors(shared):
    added = json.loads(shared.cli("trigger", "add", "cli-join", "--join", "cj/1", "--join", "cj/2", "--function",
                                  "record_firing", "--json", check=True).stdout)
    assert added["join"] == ["cj/1", "cj/2"] and added["kind"] == "join"
    out = shared.cli("trigger", "add", "cli-batch", "--prefix", "cb/", "--batch", "2", "--function",
                     "record_firing", check=True).stdout
    assert "added trigger cli-batch: every 2 keys put under 'cb/', call record_firing" in out
    shared.cli("put", "cj/1", "1", "--ephemeral", "--ttl", "30", check=True)
    shared.cli("put", "cj/2", "2", check=True)
    client = shared.client()
    assert shared.wait_for(lambda: firings(client, "cj"), timeout=20, what="the CLI's join")[0]["keys"] == [
        "cj/1", "cj/2"]
    both = shared.cli("trigger", "add", "bad", "--prefix", "b/", "--batch", "2", "--window", "1", "--function",
                      "record_firing")
    assert both.returncode == 1 and both.stderr.startswith("error: a trigger fires on a batch, a window or a join")
    short = shared.cli("trigger", "add", "bad", "--prefix", "b/", "--window", "0.01", "--function", "record_firing")
    assert short.returncode == 1 and "window 0.01 is invalid" in short.stderr
    no_prefix = shared.cli("trigger", "add", "bad", "--batch", "2", "--function", "record_firing")
    assert no_prefix.returncode == 1 and "trigger prefix '' is invalid" in no_prefix.stderr
    for name in ("cli-join", "cli-batch"):
        shared.cli("trigger", "rm", name, check=True)


def test_the_mapreduce_example_reduces_ephemeral_parts_with_a_join_trigger(shared):
    env = {**os.environ, "CBCTL_HOME": str(shared.home)}
    result = subprocess.run([sys.executable, str(EXAMPLES / "mapreduce.py")], capture_output=True, text=True,
                            env=env, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "words in 8 parts" in result.stdout and " the\n" in result.stdout
    client = shared.client()
    assert all(k in client.list_keys("wc/") for k in ("wc/part-0", "wc/part-7"))
    (total_key,) = client.list_keys("wc/total/")
    assert client.get(total_key)["store"] == 7
    stats = client.store_stats()
    assert stats["trigger_stats"]["wc_reduce"]["fired"] == 1 and stats["trigger_stats"]["wc_reduce"]["errors"] == 0


# --- the holder's death: a restarted store, and a dead writer ----------------------------------------------


def test_a_restarted_store_has_its_durable_keys_back_and_its_ephemeral_ones_gone(start_cluster):
    handle = start_cluster(executors=1)
    handle.cli("deploy", str(FNS), check=True)
    client = handle.client()
    client.put("keep", "durable")
    writer = client.call("put_temp", "lose", "ephemeral", timeout=10)
    for _ in range(3):  # read on the executor: were it cached there, a stale copy could outlive the store
        assert client.call("read_or_error", "lose", timeout=10) == ["ok", "ephemeral"]

    # the writer's death loses nothing: the store holds the value, not the executor that put it
    executor_pid = handle.pid_of(writer)
    os.kill(executor_pid, signal.SIGKILL)
    handle.wait_for(lambda: restarted(handle, writer, executor_pid), timeout=30, what="the executor to restart")
    assert client.get("lose") == "ephemeral"

    store_pid = handle.pid_of("store-0")
    os.kill(store_pid, signal.SIGKILL)
    asked = time.monotonic()
    with pytest.raises(cbctl.NoSuchKey, match="ephemeral and gone"):  # waits for the new store, then answers
        client.get("lose")
    assert time.monotonic() - asked < STORE_RETRY_BUDGET_S
    status, message = client.call("read_or_error", "lose", timeout=30)  # at once: no executor serves a copy
    assert status == "NoSuchKey" and "store restarted" in message
    assert client.get("keep") == "durable"
    stats = client.store_stats()
    assert stats["ephemeral_keys"] == 0 and stats["keys"] >= 1
