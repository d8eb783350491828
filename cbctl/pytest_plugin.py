"""The pytest plugin shipped with cbctl (entry point ``pytest11``): real clusters for the tests of your
functions, started with ``cbctl.local()`` and always stopped.

- ``cbctl_client``: a ``Client`` connected to the cluster of this test, closed after it.
- ``cbctl_cluster``: that cluster (a ``cbctl.LocalCluster``: ``.home``, ``.client()``, ``.pids()``). Its
  home is in pytest's temporary directory (``tmp_path_factory``), so its logs are there after a failure,
  kept for as long as pytest keeps ``tmp_path``s.
- ``@pytest.mark.cbctl(scope="module", deploy=[...], **options)`` on a test, a class or a module
  (``pytestmark``): the tests under one scope node (default: the module) with the same options share one
  cluster, stopped when that node is torn down; ``deploy`` files (relative to the test file) are deployed
  once when it starts; every other keyword is a ``cbctl.local()`` option (default ``executors=2``).
  Markers nearer the test override keywords of those further out.

pytest loads this module in every session of an environment where cbctl is installed, so it imports
nothing of cbctl's until a test asks for a fixture.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from cbctl import Client, LocalCluster

MARKER = "cbctl"
SCOPES = ("function", "class", "module", "package", "session")
DEFAULT_SCOPE = "module"
#: Two executors, not one per CPU as ``cbctl up`` starts: a test suite starts many clusters, and two are
#: enough to see calls spread over executors.
DEFAULT_OPTIONS: dict[str, Any] = {"executors": 2}

_clusters_key = pytest.StashKey["_Clusters"]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(scope='{DEFAULT_SCOPE}', deploy=(), **options): the cluster the cbctl_cluster and cbctl_client "
        "fixtures give: shared by the tests of one scope node (function, class, module, package or session) "
        "with the same options; deploy files (relative to the test file) once at start; other keywords are "
        "cbctl.local()'s (executors, gpu_executors, schedulers, durability, policy, ...)")
    config.stash[_clusters_key] = _Clusters()


class _Clusters:
    """The clusters of this session: at most one per scope node at a time, each stopped by that node's
    teardown (or replaced when a test under the node asks for other options)."""

    def __init__(self) -> None:
        self.by_owner: dict[str, tuple[str, LocalCluster | None, str]] = {}  # node id -> (options, cluster, error)

    def for_test(self, request: pytest.FixtureRequest) -> LocalCluster:
        scope, deploy, options = _marker_options(request)
        owner = _scope_node(request, scope)
        key = repr((sorted(options.items()), deploy))
        found = self.by_owner.get(owner.nodeid)
        if found is not None and found[0] == key:
            if found[2]:  # it failed to start for an earlier test: the same error, at once
                pytest.fail(found[2], pytrace=False)
            assert found[1] is not None
            return found[1]
        if found is not None:
            self._stop(owner.nodeid)
        else:
            owner.addfinalizer(lambda: self._stop(owner.nodeid))
        from cbctl import CbctlError, local

        if "home" not in options:  # in pytest's temporary directory, as tmp_path: its logs outlive a failure
            options["home"] = _temporary_home(request)
        cluster = local(**options)
        error = ""
        try:
            cluster.start().close()  # start() hands out a client; tests take their own
            if deploy:
                with cluster.client() as client:
                    for path in deploy:
                        client.deploy_file(path)
        except CbctlError as exc:  # said in one line, as `cbctl up` would (anything else: its traceback)
            error = f"the cbctl cluster for {owner.nodeid or 'this session'} did not start: {exc}"
            user_traceback = getattr(exc, "user_traceback", "")  # a deploy file that failed: where it did
            if user_traceback:
                error = f"{user_traceback.rstrip()}\n{error}"
        except BaseException:
            cluster.close()
            raise
        if error:
            cluster.close()
            self.by_owner[owner.nodeid] = (key, None, error)
            pytest.fail(error, pytrace=False)
        self.by_owner[owner.nodeid] = (key, cluster, "")
        return cluster

    def _stop(self, owner_id: str) -> None:
        _, cluster, _ = self.by_owner.pop(owner_id, ("", None, None))
        if cluster is not None:
            cluster.close()


def _marker_options(request: pytest.FixtureRequest) -> tuple[str, tuple[str, ...], dict[str, Any]]:
    """(scope, deploy paths, cbctl.local() keywords) from the ``cbctl`` markers, nearest last so it wins."""
    merged: dict[str, Any] = {}
    for marker in reversed(list(request.node.iter_markers(MARKER))):
        if marker.args:
            pytest.fail(f"@pytest.mark.{MARKER}{marker.args!r}: pass keywords only, e.g. "
                        f"@pytest.mark.{MARKER}(executors=3, scope='function')", pytrace=False)
        merged.update(marker.kwargs)
    scope = merged.pop("scope", DEFAULT_SCOPE)
    if scope not in SCOPES:
        pytest.fail(f"@pytest.mark.{MARKER}(scope={scope!r}): use one of {', '.join(SCOPES)}", pytrace=False)
    deploy = merged.pop("deploy", ())
    if isinstance(deploy, (str, Path)):
        deploy = (deploy,)
    base = Path(request.node.path).parent
    paths = tuple(str(base / Path(p).expanduser()) for p in deploy)  # an absolute path stays as it is
    return scope, paths, {**DEFAULT_OPTIONS, **merged}


def _temporary_home(request: pytest.FixtureRequest) -> Path | None:
    try:
        factory = request.getfixturevalue("tmp_path_factory")
    except pytest.FixtureLookupError:  # pytest's tmpdir plugin is off: cbctl.local()'s own, removed afterwards
        return None
    return factory.mktemp("cbctl")


def _scope_node(request: pytest.FixtureRequest, scope: str) -> pytest.Item | pytest.Collector | pytest.Session:
    if scope == "function":
        return request.node
    if scope == "session":
        return request.session
    kinds = {"class": (pytest.Class, pytest.Module), "module": (pytest.Module,), "package": (pytest.Package,)}
    for kind in kinds[scope]:
        node = request.node.getparent(kind)
        if node is not None:
            return node
    return request.session  # a package scope outside any package: the whole run


@pytest.fixture
def cbctl_cluster(request: pytest.FixtureRequest) -> LocalCluster:
    """The running cluster of this test (see the ``cbctl`` marker for its scope and options)."""
    return request.config.stash[_clusters_key].for_test(request)


@pytest.fixture
def cbctl_client(cbctl_cluster: LocalCluster) -> Iterator[Client]:
    """A client connected to this test's cluster, closed after the test."""
    client = cbctl_cluster.client()
    try:
        yield client
    finally:
        client.close()


__all__ = ["cbctl_client", "cbctl_cluster"]
