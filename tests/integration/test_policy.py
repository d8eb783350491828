"""The placement policy and executor lifecycle on real clusters: scale-out under saturating load and scale-in
after it, `cbctl scale` under steady load losing no call, locality for referenced keys, GPU pinning."""

from __future__ import annotations

import collections
import json
import threading
from collections.abc import Callable

import pytest

import cbctl
from tests.conftest import STORE_BACKENDS, RunningCluster
from tests.integration.shared_cluster import DEPLOYABLES

POLICY_FNS = DEPLOYABLES / "policy_fns.py"
NAP_FNS = DEPLOYABLES / "nap_fns.py"


def pinned(handle: RunningCluster) -> dict[str, list[str]]:
    """Function -> executors it is pinned on, as `cbctl ls --json` shows it."""
    listed = json.loads(handle.cli("ls", "--json", check=True).stdout)
    return {f["name"]: f["pinned"] for f in listed["functions"]}


class Load:
    """Calls from a background thread, ``in_flight`` at a time, until stopped; keeps every outcome."""

    def __init__(self, client: cbctl.Client, calls: list[tuple[str, Callable[[int], object]]],
                 in_flight: int) -> None:
        self.client, self.calls, self.in_flight = client, calls, in_flight
        self.stop = threading.Event()
        self.results: list[tuple[str, int, object]] = []
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        pending: collections.deque = collections.deque()
        i = 0
        while not self.stop.is_set() or pending:
            while not self.stop.is_set() and len(pending) < self.in_flight:
                name, _ = self.calls[i % len(self.calls)]
                pending.append((name, i, self.client.call_async(name, i)))
                i += 1
            name, arg, future = pending.popleft()
            try:
                self.results.append((name, arg, future.result(timeout=30)))
            except Exception as exc:  # noqa: BLE001 - every lost or failed call is what the test looks for
                self.errors.append(f"{name}({arg}): {type(exc).__name__}: {exc}")

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "the load thread did not finish"

    def check(self) -> None:
        """Every call came back, with the right value."""
        assert self.errors == [], self.errors[:5]
        expected = dict(self.calls)
        wrong = [(n, a, r) for n, a, r in self.results if r != expected[n](a)]
        assert wrong == [], wrong[:5]


def test_saturating_load_pins_onto_more_executors_and_they_are_unpinned_after(start_cluster):
    handle = start_cluster(executors=4, extra_args=(
        "--policy", "backoff_window_s=2", "--policy", "scale_in_calm_s=1", "--policy", "update_interval_s=0.5"))
    handle.cli("deploy", str(POLICY_FNS), check=True)
    chain = ("slow_step", "slow_tail")
    at_rest = handle.wait_for(lambda: (p := pinned(handle)) and all(len(p[f]) == 1 for f in chain) and p,
                              timeout=10, what="one pin per function of slow_chain")
    assert at_rest["slow_step"] != at_rest["slow_tail"]  # spread over unpinned executors: 2 of 4 used
    assert {e for pins in at_rest.values() for e in pins} == {"executor-0", "executor-1"}
    client = handle.client()
    with Load(client, [("slow_chain", lambda i: (i + 1) * 2)], in_flight=48) as load:
        scaled = handle.wait_for(lambda: (p := pinned(handle)) and sum(len(p[f]) for f in chain) >= 3 and p,
                                 timeout=20, interval=0.3, what="the policy to pin slow_chain on more executors")
        # placement by outstanding work pins an idle executor at once: keep the load on until it was substantial
        handle.wait_for(lambda: len(load.results) > 100, timeout=20, interval=0.3, what="over 100 calls served")
    load.check()
    assert len(load.results) > 100
    assert len({e for f in chain for e in scaled[f]}) >= 3, scaled
    # load stopped: the extra pins go within a bounded time, and each function keeps one
    handle.wait_for(lambda: all(len(pinned(handle)[f]) == 1 for f in chain), timeout=20, interval=0.3,
                    what="the extra pins to be dropped after the load stopped")
    assert client.call("slow_chain", 1, timeout=10) == 4


def test_scale_down_during_steady_load_loses_no_call_and_scale_up_adds_fresh_executors(start_cluster):
    handle = start_cluster(executors=4)
    handle.cli("deploy", str(NAP_FNS), check=True)
    handle.cli("deploy", str(POLICY_FNS), check=True)
    expected = {"nap_first": ["executor-0"], "nap_then": ["executor-1"], "slow_step": ["executor-2"],
                "slow_tail": ["executor-3"]}
    handle.wait_for(lambda: {f: p for f, p in pinned(handle).items() if p} == expected, timeout=10,
                    what=f"the DAG functions pinned as {expected}")
    # nap_chain's calls queue on executor-0 (which stays) with their second step on executor-1 (which
    # leaves); slow_chain runs entirely on executors that leave
    naps = Load(handle.client(), [("nap_chain", lambda i: ["?", i])], in_flight=3)
    busy = Load(handle.client(), [("slow_chain", lambda i: (i + 1) * 2)], in_flight=16)
    with naps, busy:
        handle.wait_for(lambda: len(naps.results) >= 2 and len(busy.results) >= 50, timeout=20,
                        what="the load to get going")
        result = json.loads(handle.cli("scale", "--executors", "1", "--json", check=True, timeout=90).stdout)
        served = len(naps.results), len(busy.results)
        handle.wait_for(lambda: len(naps.results) >= served[0] + 3 and len(busy.results) >= served[1] + 50,
                        timeout=20, what="calls after the scale-down")
    for load in (naps, busy):
        assert load.errors == [], load.errors[:5]
    assert [r for _, i, r in naps.results if r[1] != i] == []
    assert {r[0] for _, _, r in naps.results} >= {"executor-1", "executor-0"}  # ran before and after it left
    busy.check()
    assert result == {"executors": 1, "started": [], "stopped": ["executor-1", "executor-2", "executor-3"],
                      "cut_short": []}
    live = [f"{p.role}-{p.index}" for p in handle.cluster_file().processes if p.role == "executor"]
    assert live == ["executor-0"]
    # the departed executors' functions are pinned again on the one that stays
    handle.wait_for(lambda: all(pinned(handle)[f] == ["executor-0"] for f in expected), timeout=10,
                    what="functions re-pinned on executor-0")
    # scaling up starts executors under fresh ids: a late message for a departed one never reaches a newcomer
    grown = json.loads(handle.cli("scale", "--executors", "2", "--json", check=True, timeout=90).stdout)
    assert grown == {"executors": 2, "started": ["executor-4"], "stopped": [], "cut_short": []}
    assert handle.cli("call", "slow_chain", "3", check=True).stdout.strip() == "8"
    bad = handle.cli("scale", "--executors", "-1")
    assert (bad.returncode, bad.stderr.strip()) == (1, "error: --executors must be a whole number >= 0, not -1")
    bad = handle.cli("scale", "--executors", "0")
    assert (bad.returncode, bad.stderr.strip()) == (
        1, "error: a cluster needs at least one executor: pass --executors N with N >= 1")


@pytest.mark.parametrize("store_backend", STORE_BACKENDS, indirect=True)
def test_a_call_referencing_a_cached_key_runs_on_the_executor_caching_it(start_cluster):
    handle = start_cluster(executors=4)
    handle.cli("deploy", str(POLICY_FNS), check=True)
    client = handle.client()
    client.put("blob", b"x" * 200_000)
    first, size = client.call("blob_size", cbctl.Ref("blob"), timeout=10)
    assert size == 200_000

    def policy() -> dict:
        return client.cluster_info()["policy"]

    # the executor publishes its cached keys in its next status; the policy reads them at its next update
    handle.wait_for(lambda: "blob" in client.cluster_info()["executors"][first]["cached_keys"], timeout=10,
                    what=f"{first} to report the cached key")
    seen = policy()["updates"]
    handle.wait_for(lambda: policy()["updates"] > seen, timeout=10, what="a policy update")
    ran_on = {client.call("blob_size", cbctl.Ref("blob"), timeout=10)[0] for _ in range(20)}
    assert ran_on == {first}
    # the same function without a reference spreads over the executors: locality is what kept it there
    client.put("small", b"y")
    assert len({client.call("blob_size", b"z", timeout=10)[0] for _ in range(20)}) > 1


def test_gpu_functions_are_pinned_and_run_only_on_gpu_executors(start_cluster):
    handle = start_cluster(executors=2, extra_args=("--gpu-executors", "1", "--fake-gpus", "1"))
    client = handle.client()

    def on_device(cb, x):
        return [cb.getid(), x]

    def prepare(cb, x):
        return x + 1

    client.register(on_device, gpu=True)
    client.register(prepare)
    client.register_dag("gpu_chain", ["prepare", "on_device"])
    gpu_executor = [f"{p.role}-{p.index}" for p in handle.cluster_file().processes if p.executor_type == "gpu"]
    assert gpu_executor == ["executor-2"]
    handle.wait_for(lambda: pinned(handle)["on_device"] == gpu_executor, timeout=10,
                    what="on_device pinned on the GPU executor")
    assert "executor-2" not in pinned(handle)["prepare"]
    assert {tuple(client.call("gpu_chain", i, timeout=10)) for i in range(10)} == {
        ("executor-2", i + 1) for i in range(10)}
