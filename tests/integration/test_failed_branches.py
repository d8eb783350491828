"""A DAG call whose branch fails answers the caller once and leaves no partial join behind on any executor."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import cbctl
from cbctl.runtime.defaults import STATUS_INTERVAL_S

DEPLOYABLES = Path(__file__).resolve().parent / "deployables"


def pending_joins(client: cbctl.Client) -> dict[str, int]:
    executors = client.cluster_info()["executors"]
    return {executor_id: status["metrics"]["pending_joins"] for executor_id, status in executors.items()}


def test_a_failed_branch_drops_the_other_branchs_waiting_result(cluster):
    cluster.cli("deploy", str(DEPLOYABLES / "failing_branch_fns.py"), check=True)
    client = cluster.client()
    for i in range(5):
        with pytest.raises(cbctl.FunctionError, match=f"branch failed on {i}"):
            client.call("half_broken", i, timeout=10)
    # every surviving branch finished (and sent its result on to the join) after its call had failed
    cluster.wait_for(lambda: all(_written(client, f"failing_branch/survived/{i}") for i in range(5)), timeout=10,
                     what="the surviving branches to finish")
    first_report = time.monotonic()  # the next status of every executor covers their results' arrival
    cluster.wait_for(lambda: time.monotonic() - first_report > STATUS_INTERVAL_S and not any(
        pending_joins(client).values()), timeout=3 * STATUS_INTERVAL_S + 5, what="every executor to hold no join")
    assert set(pending_joins(client).values()) == {0}


def _written(client: cbctl.Client, key: str) -> bool:
    try:
        client.get(key)
    except cbctl.NoSuchKey:
        return False
    return True
