"""The kernel locks behind "one cluster per home": held across processes, named in refusals, gone with their
holder however it exits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cbctl.runtime import home_lock

HOLD = ("import sys, time; from pathlib import Path; from cbctl.runtime import home_lock; "
        "home_lock.acquire(Path(sys.argv[1])); print('held', flush=True); time.sleep(60)")


def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path: Path) -> None:
    path = tmp_path / "supervisor.lock"
    assert home_lock.holder(path) is None
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert home_lock.holder(path) == holder.pid
        with pytest.raises(home_lock.LockHeld) as refused:
            home_lock.acquire(path)
        assert refused.value.pid == holder.pid
        os.kill(holder.pid, signal.SIGKILL)  # however the holder ends, the kernel drops its lock
        holder.wait(10)
        assert home_lock.holder(path) is None
        fd = home_lock.acquire(path)
        assert home_lock.holder(path) == os.getpid()  # flock: even a probe from the holding process sees it
        home_lock.release(fd)
    finally:
        holder.kill()
        holder.wait(10)


def test_the_lock_passes_to_a_child_with_its_descriptor(tmp_path: Path) -> None:
    path = tmp_path / "supervisor.lock"
    fd = home_lock.acquire(path)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], pass_fds=(fd,))
    try:
        home_lock.write_pid(fd, child.pid)
        home_lock.release(fd)  # the child's copy holds it on, as a supervisor holds what `cbctl up` took
        probe = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from cbctl.runtime "
                                "import home_lock; print(home_lock.holder(Path(sys.argv[1])))", str(path)],
                               capture_output=True, text=True, timeout=30)
        assert probe.stdout.strip() == str(child.pid)
    finally:
        child.kill()
        child.wait(10)
    assert home_lock.holder(path) is None
