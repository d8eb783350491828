"""Fixtures for tests across hosts: a ``Lab`` of network and pid namespaces (see ``netns.py``), always closed.

These tests need root. CI runs as root, so there (``CI=true``) a machine that cannot build a lab fails the
tests instead of skipping them: a skip would hide that they never ran."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cbctl.runtime.cluster import remove_socket_dir
from tests.hosts.netns import Lab, missing_requirement


def require_lab() -> None:
    reason = missing_requirement()
    if not reason:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"tests across hosts cannot run: {reason}; under CI=true they must (run CI as root)")
    pytest.skip(f"tests across hosts skipped: {reason} (run as root to include them)")


@pytest.fixture
def lab3(tmp_path: Path) -> Iterator[Lab]:
    """Three hosts, ``head``, ``node`` and ``client``, on one private subnet. Closing the lab kills each host's
    processes outright (its pid namespace's init), so no supervisor removes the socket directory a long home
    puts under the temp directory: the fixture removes those of every home under the test's directory."""
    require_lab()
    try:
        with Lab(["head", "node", "client"]) as lab:
            yield lab
    finally:
        for home in [tmp_path, *(p for p in tmp_path.rglob("*") if p.is_dir() and p.name != "sock")]:
            remove_socket_dir(home)
