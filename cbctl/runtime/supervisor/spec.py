"""What a cluster is asked to be: ``ClusterSpec``, built by ``cbctl up`` and ``cbctl.local()`` (which import
this module, so it stays free of zmq and the message catalogue) and read by the supervisor."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any

from cbctl.runtime.defaults import (
    AUTOSCALE_EXECUTOR_BUDGET_BYTES,
    DEPARTURE_TIMEOUT_S,
    MAX_BATCH,
    MAX_CONTINUATIONS,
    MAX_EXECUTORS,
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
    store: str = ""  # "" for the embedded store; else the Redis URL, redacted (the full one is in HOME/store-url)
    # the process that started this supervisor and owns the cluster (`cbctl.local()`): when it is gone, even
    # killed without a chance to clean up, the cluster stops; 0 (`cbctl up`): the cluster outlives the command
    owner_pid: int = 0
    autoscale: list[int] = field(default_factory=list)  # [MIN, MAX] (`cbctl up --autoscale`), [] for a fixed size
    autoscale_policy: dict[str, float] = field(default_factory=dict)  # `--policy autoscale_NAME=VALUE`


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


def default_max_executors(cache_mb: int = 64) -> int:
    """The MAX of ``--autoscale MIN:`` on this machine: one CPU executor per core (what `cbctl up` runs without
    ``--executors``: an executor runs one call at a time on up to one core, so for CPU-bound functions more only
    time-share the cores, adding latency and memory but no throughput), and no more than half the available
    memory allows at ``AUTOSCALE_EXECUTOR_BUDGET_BYTES`` (plus the cache) each. At least 1."""
    import os

    import psutil  # here: `cbctl up` without --autoscale does not pay for the import

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    budget = AUTOSCALE_EXECUTOR_BUDGET_BYTES + (cache_mb << 20)
    by_memory = psutil.virtual_memory().available // 2 // budget
    return max(1, min(cores, by_memory, MAX_EXECUTORS))
