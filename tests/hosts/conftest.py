"""Fixtures for tests across hosts: a ``Lab`` of network and pid namespaces (see ``netns.py``), always closed.

These tests need root. CI runs as root, so there (``CI=true``) a machine that cannot build a lab fails the
tests instead of skipping them: a skip would hide that they never ran."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.hosts.netns import Lab, missing_requirement


def require_lab() -> None:
    reason = missing_requirement()
    if not reason:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"tests across hosts cannot run: {reason}; under CI=true they must (run CI as root)")
    pytest.skip(f"tests across hosts skipped: {reason} (run as root to include them)")


@pytest.fixture
def lab3() -> Iterator[Lab]:
    """Three hosts, ``head``, ``node`` and ``client``, on one private subnet."""
    require_lab()
    with Lab(["head", "node", "client"]) as lab:
        yield lab
