"""One child process as the supervisor tracks it (its config, process handle, state and restart backoff);
shared by the supervisor's loop and ``scaling``, which both start and stop children.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

from cbctl.runtime.defaults import RESTART_BACKOFF_FIRST_S
from cbctl.runtime.process import ProcessConfig


@dataclass
class Child:
    config: ProcessConfig
    process: Any = None
    pid: int = 0
    address: str = ""
    started_at: float = 0.0
    state: str = "starting"  # starting, ready, restarting, stopping, failed, stopped
    restarts: int = 0
    recycles: int = 0  # restarts of an executor that left over --executor-memory-mb (counted in restarts too)
    crash_times: collections.deque = field(default_factory=lambda: collections.deque(maxlen=64))
    restart_at: float = 0.0
    backoff: float = RESTART_BACKOFF_FIRST_S
    error: str = ""
