"""Locality across hosts: a call with a ``cbctl.Ref`` goes to the executor whose cache holds the key, whichever
host it is on (the policy keys caches by ``(host, executor_id)``)."""

from __future__ import annotations

from pathlib import Path

from tests.hosts.cluster import TwoHosts, python
from tests.hosts.netns import Lab

SCRIPT = """
import json, time, cbctl
with cbctl.connect() as c:
    c.register(lambda cb, blob: cb.getid(), name="reader")
    # the first read of each key caches it where the call ran (idle executors tie: a random one); keys until the
    # caches of both hosts hold some, six at least, at most 40 (all on one host 40 times: about 1 in 10**7)
    first = {}
    while len(first) < 40 and (len(first) < 6 or len({who.partition("/")[1] for who in first.values()}) < 2):
        key = f"blob-{len(first)}"
        c.put(key, b"x" * 200_000)
        first[key] = c.call("reader", cbctl.Ref(key), timeout=20)
    deadline = time.monotonic() + 15  # every executor reports its cached keys about once a second
    while c.cluster_info()["policy"]["cached_keys"] < len(first) and time.monotonic() < deadline:
        time.sleep(0.1)
    again = {key: [c.call("reader", cbctl.Ref(key), timeout=20) for _ in range(5)] for key in first}
    print(json.dumps({"first": first, "again": again}))
"""


def test_a_call_goes_to_the_cache_that_holds_its_key_on_any_host(lab3: Lab, tmp_path: Path) -> None:
    hosts = TwoHosts(lab3, tmp_path)
    hosts.up(head_executors=1)
    hosts.join(executors=2)
    out = python(hosts.head, hosts.head_home, SCRIPT)
    first, again = out["first"], out["again"]
    assert any(who.startswith(f"{hosts.node.address}/") for who in first.values()), first
    assert any(who == "executor-0" for who in first.values()), first
    hits = sum(who == first[key] for key, runs in again.items() for who in runs)
    assert hits >= 0.9 * sum(len(runs) for runs in again.values()), (first, again)
