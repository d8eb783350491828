"""The shortest path through the product: up, deploy, call, down."""

from __future__ import annotations

import pytest

from tests.conftest import STORE_BACKENDS


@pytest.fixture(scope="module", params=STORE_BACKENDS)
def store_backend(request) -> str:
    """Every test here runs on the embedded store and on Redis."""
    return request.param


def test_pipeline_and_diamond_from_cli_and_python(deployed):
    assert deployed.cli("call", "pipeline", "3", check=True).stdout.strip() == "16"
    assert deployed.cli("call", "diamond", "5", check=True).stdout.strip() == "25"
    client = deployed.client()
    assert client.call("pipeline", 3, timeout=10) == 16
    futures = [client.call_async("pipeline", i) for i in range(64)]
    assert [f.result(timeout=20) for f in futures] == [(i + 1) ** 2 for i in range(64)]
