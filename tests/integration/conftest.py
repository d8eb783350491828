"""Integration fixtures of modules whose tests run on both store backends: mark the module
``pytest.mark.both_stores`` (next to its ``cbctl`` marker) and take ``shared``, its cluster on the embedded store
(the plugin's ``cbctl_cluster``) and on Redis (one started with the same executors and deploy files)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cbctl.pytest_plugin import _marker_options
from tests.conftest import STORE_BACKENDS, RunningCluster
from tests.integration import shared_cluster

BOTH_STORES = "both_stores"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{BOTH_STORES}: run the module's tests on the embedded store and on Redis")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker(BOTH_STORES) and "store_backend" in metafunc.fixturenames:
        metafunc.parametrize("store_backend", STORE_BACKENDS, indirect=True, scope="module")


@pytest.fixture(scope="module")
def on_redis(request: Any, tmp_path_factory: Any, store_backend: str) -> Iterator[RunningCluster | None]:
    """The module's cluster on Redis, with the executors and deploy files of its ``cbctl`` marker, or None on
    the embedded store (where the plugin's cluster serves)."""
    _, deploy, options = _marker_options(request)
    yield from shared_cluster.redis_module_cluster(tmp_path_factory, store_backend, options["executors"],
                                                   tuple(Path(path) for path in deploy))


@pytest.fixture
def shared(request: Any, on_redis: RunningCluster | None) -> Iterator[RunningCluster]:
    """The module's shared cluster for this test, on the module's store backend."""
    with shared_cluster.shared_on(request, on_redis) as handle:
        yield handle
