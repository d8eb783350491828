"""What a cluster is asked to be: ``ClusterSpec``, built by ``cbctl up`` and ``cbctl.local()`` (which import
this module, so it stays free of zmq and the message catalogue) and read by the supervisor."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any

from cbctl.runtime.defaults import (
    DEPARTURE_TIMEOUT_S,
    MAX_BATCH,
    MAX_CONTINUATIONS,
    MAX_MESSAGE_BYTES,
    MAX_TRIGGER_DEPTH,
)


@dataclass
class ClusterSpec:
    """What ``cbctl up`` asked for."""

    executors: int
    gpu_executors: int = 0
    schedulers: int = 1
    listen: str = ""  # "tcp://HOST", or "" for ipc sockets in the home
    scheduler_port: int = 0  # the first scheduler's port on HOST (0: random, like every other process's)
    curve: bool = False  # TCP sockets authenticate with the keys in HOME/keys (see auth.py)
    durability: str = "batch"
    departure_timeout_s: float = DEPARTURE_TIMEOUT_S  # `cbctl scale` down: a departing executor's time to finish
    salvage: bool = False  # the store keeps the intact records of a damaged log or snapshot (`cbctl up --salvage`)
    fake_gpus: int = 0
    cache_mb: int = 64
    max_batch: int = MAX_BATCH
    max_continuations: int = MAX_CONTINUATIONS
    max_trigger_depth: int = MAX_TRIGGER_DEPTH
    executor_memory_mb: int = 0  # recycle an executor whose memory is over this after a call (0: never)
    policy: dict[str, Any] = field(default_factory=dict)  # placement policy settings (`cbctl up --policy`)
    max_message_bytes: int = MAX_MESSAGE_BYTES  # largest serialised value (`cbctl up --max-message-mb`)
    # the process that started this supervisor and owns the cluster (`cbctl.local()`): when it is gone, even
    # killed without a chance to clean up, the cluster stops; 0 (`cbctl up`): the cluster outlives the command
    owner_pid: int = 0


def count_gpus() -> int:
    """GPUs visible through nvidia-smi (0 when there is no driver or no tool)."""
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return 0
    try:
        out = subprocess.run([tool, "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))
