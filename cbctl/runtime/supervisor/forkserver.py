"""The forkserver every child of the supervisor forks from, and the children's entry point.

The forkserver is a fresh interpreter that imports every role's module once (its preload: the longest
import of a cluster's start), so each child, and each restart, is a fork in milliseconds. The supervisor's
entry point (``__main__``) starts it before importing anything of its own, so the two interpreters import
side by side; this module imports only the standard library for that reason.
"""

from __future__ import annotations

import importlib
import multiprocessing
import multiprocessing.forkserver
import os
from multiprocessing.context import BaseContext
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cbctl.runtime.process import ProcessConfig

#: The module whose ``main(config)`` each role's process runs.
ROLE_MODULES = {"store": "cbctl.runtime.store.node", "scheduler": "cbctl.runtime.scheduler.scheduler",
                "executor": "cbctl.runtime.executor.executor"}


def start_forkserver() -> BaseContext:
    """The forkserver context, its server started (once per process: later calls return at once). Safe to
    call only while this process has no threads or zmq context: the server is forked off it."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(sorted(set(ROLE_MODULES.values())))
    multiprocessing.forkserver.ensure_running()
    return context


def run_role(config: ProcessConfig) -> None:
    """Child entry point: apply the child's environment (a GPU executor's device) before any user code. It
    lives here, not with the supervisor, so a child unpickling it imports nothing of the supervisor's."""
    for name, value in config.options.get("env", {}).items():
        os.environ[name] = value
    importlib.import_module(ROLE_MODULES[config.role]).main(config)
