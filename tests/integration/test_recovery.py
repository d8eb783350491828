"""Recovery on real clusters: what must still hold after a process is killed or stopped at an awkward time
(a store restart under executors' caches, `cbctl down` during a scale, a child that cannot start again)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import psutil

from cbctl.lifecycle import wait_gone
from cbctl.runtime.defaults import DEPARTURE_ACK_TIMEOUT_S, STATUS_INTERVAL_S
from tests.conftest import RunningCluster
from tests.integration.shared_cluster import DEPLOYABLES, TOOLKIT, cache_metrics

CONSISTENCY_FNS = DEPLOYABLES / "consistency_fns.py"


def process_entry(handle: RunningCluster, name: str) -> dict | None:
    result = handle.cli("status", "--json")
    if result.returncode != 0:
        return None  # the supervisor is busy; ask again
    entries = [p for p in json.loads(result.stdout)["processes"] if p["name"] == name]
    return entries[0] if entries else None


def restarted(handle: RunningCluster, name: str, old_pid: int) -> dict | None:
    entry = process_entry(handle, name)
    return entry if entry and entry["pid"] != old_pid and entry["state"] == "ready" else None


# --- the store restarts under executors' caches ----------------------------------------------------------------


def test_a_cache_follows_writes_made_after_a_store_restart(start_cluster):
    """The restarted store knows no subscriptions: an executor must notice the new store and stop serving its
    cached copies, within about a status interval, rather than serve the old value for ever."""
    handle = start_cluster(executors=1)
    handle.cli("deploy", str(CONSISTENCY_FNS), check=True)
    writer, reader = handle.client(), handle.client()  # the reader writes nothing: no session forces a refetch
    writer.put("restart-key", "before")
    for _ in range(3):  # the first read caches the key, the others are hits
        assert reader.call("read_key", "restart-key", timeout=10)[1] == "before"

    old_pid = handle.pid_of("store-0")
    os.kill(old_pid, signal.SIGKILL)
    handle.wait_for(lambda: restarted(handle, "store-0", old_pid), timeout=20, what="the store to restart")
    writer.put("restart-key", "after")
    handle.wait_for(lambda: reader.call("read_key", "restart-key", timeout=10)[1] == "after",
                    timeout=3 * STATUS_INTERVAL_S + 2, interval=0.1, what="the executor to read the new value")
    # and the cache is back in use: the key is subscribed again at the new store, so a later write is pushed
    # (the executor asks the store nothing for it), not refetched. The baseline is a status that counts the
    # refetch after the restart: one merely received after the read above may have been sent just before it
    # (the executor reports, then checks the store's epoch, in the same timer step).
    before = {}
    handle.wait_for(lambda: before.update(cache_metrics(reader, time.monotonic())) or all(
        m["store_restarts_seen"] >= 1 and m["misses"] >= 2 for m in before.values()),
        timeout=3 * STATUS_INTERVAL_S + 2, interval=0.1, what="a status that counts the refetch")
    writer.put("restart-key", "later")
    handle.wait_for(lambda: reader.call("read_key", "restart-key", timeout=10)[1] == "later", timeout=10,
                    interval=0.05, what="the push of a write made after the refetch")
    after = cache_metrics(reader, time.monotonic())
    for executor_id in after:
        assert after[executor_id]["store_requests"] == before[executor_id]["store_requests"], "refetched"
        assert after[executor_id]["pushes_applied"] > before[executor_id]["pushes_applied"], "not pushed"


# --- `cbctl down` with a dead store ------------------------------------------------------------------------------


def break_the_store(handle: RunningCluster) -> None:
    """Kill the store and make every restart of it fail (its data directory becomes a file), as a store that
    cannot come back would: the supervisor keeps trying, with backoff."""
    data = handle.home / "data"
    old_pid = handle.pid_of("store-0")
    os.kill(old_pid, signal.SIGKILL)
    shutil.rmtree(data)
    data.write_text("not a directory")
    handle.wait_for(lambda: (process_entry(handle, "store-0") or {}).get("restarts", 0) >= 1, timeout=10,
                    what="a failed restart of the store")


def test_down_with_a_dead_store_is_prompt_and_leaves_nothing(start_cluster):
    """Nothing on the way down needs the store: a scheduler must not sit in store retries (which also kept it
    from acknowledging the executors' departures) while the supervisor waits for it."""
    handle = start_cluster(executors=2)
    handle.cli("deploy", str(DEPLOYABLES.parent.parent.parent / "examples" / "pipeline.py"), check=True)
    client = handle.client()
    assert client.call("pipeline", 3, timeout=10) == 16
    break_the_store(handle)
    # pinned functions that touch no state still run: the scheduler keeps dispatching without the store
    started = time.monotonic()
    assert client.call("pipeline", 4, timeout=10) == 25
    assert time.monotonic() - started < 2.0
    pids = handle.pids()
    started = time.monotonic()
    result = handle.cli("down", timeout=60)
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    # the bad case waits out the executors' departure deadline for the stuck scheduler's answers
    assert took < DEPARTURE_ACK_TIMEOUT_S - 0.5, f"`cbctl down` took {took:.1f} s with the store dead"
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids)
    supervisor_log = (handle.home / "logs" / "supervisor-0.log").read_text()
    assert "cluster stopped" in supervisor_log, "the supervisor finished its own stop (it was not killed)"


# --- `cbctl down` while a scale is under way ---------------------------------------------------------------------


def test_down_during_a_scale_down_lets_the_departing_executor_finish_its_calls(start_cluster):
    """The executor a scale-down is departing already had its SIGTERM; `down` must not send a second one, which
    is the immediate, cold stop (the calls it was finishing would be lost)."""
    handle = start_cluster(executors=2)
    handle.cli("deploy", str(TOOLKIT), check=True)
    client = handle.client()
    # calls that run until the test writes the gate: executor-1 stays departing for as long as the test needs
    futures = [client.call_async("hold", "hold-gate", f"hold-marker-{i}", i) for i in range(4)]
    holding = lambda: {client.get(k) for k in client.list_keys("hold-marker-")}  # noqa: E731
    handle.wait_for(lambda: holding() == {"executor-0", "executor-1"}, timeout=10, what="both executors holding")

    env = {**os.environ, "CBCTL_HOME": str(handle.home)}
    scale = subprocess.Popen([sys.executable, "-m", "cbctl.cli", "scale", "--executors", "1"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    down = None
    try:
        handle.wait_for(lambda: (process_entry(handle, "executor-1") or {}).get("state") == "stopping", timeout=20,
                        what="executor-1 departing")
        down = subprocess.Popen([sys.executable, "-m", "cbctl.cli", "down"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        supervisor_log = handle.home / "logs" / "supervisor-0.log"  # busy stopping, it answers no status
        handle.wait_for(lambda: "stopping the cluster" in supervisor_log.read_text(), timeout=20,
                        what="`cbctl down` stopping the cluster")
        client.put("hold-gate", "go")  # now the held calls end, during the down
        _, err = down.communicate(timeout=60)
        assert down.returncode == 0, err
    finally:
        for proc in (scale, down):
            if proc is not None and proc.poll() is None:
                proc.kill()
            if proc is not None:
                proc.communicate()
    assert [f.result(timeout=10) for f in futures] == [0, 1, 2, 3]
    assert "second signal" not in (handle.home / "logs" / "executor-1.log").read_text()


def test_stopping_right_after_a_scheduler_died_does_not_wait_for_its_answer(start_cluster):
    """Departing executors wait for every scheduler's acknowledgement; one that died cannot send it, and must
    be let go as soon as its process is gone, not at the departure deadline (10 s)."""
    handle = start_cluster(executors=2)
    found = handle.cluster_file()
    processes = [psutil.Process(pid) for pid in [found.supervisor_pid, *found.pids()]]
    os.kill(handle.pid_of("scheduler-0"), signal.SIGKILL)
    os.kill(found.supervisor_pid, signal.SIGTERM)  # what `cbctl down` does, before the restart (0.2 s) is due
    started = time.monotonic()
    left = wait_gone(processes, 20)
    took = time.monotonic() - started
    assert not left, f"still running: {[p.pid for p in left]}"
    assert took < DEPARTURE_ACK_TIMEOUT_S - 0.5, f"the cluster took {took:.1f} s to stop: the departure deadline"
    for name in ("executor-0", "executor-1"):
        assert "left without an answer" not in (handle.home / "logs" / f"{name}.log").read_text()
