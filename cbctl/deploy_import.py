"""Importing a deploy file in a process of its own, for ``cbctl deploy`` and ``Client.deploy_file``.

A deploy file is the user's code run at import: it may call ``os._exit``, kill its interpreter, hang, or leave
threads behind. Run in the caller's process, an ``os._exit(0)`` ended ``cbctl deploy`` with exit 0 and nothing
said. So a child interpreter imports it (``declare.load_file``), checks and serialises what it declares
(``declare.prepare``) and sends that back on a pipe; the caller registers it. A child that ends without an
answer is a failed deploy naming how it ended, and one that outlives ``import_timeout`` is killed.

Protocol on the pipe (child to caller): one byte ``S`` once the child has started (interpreter start-up is not
counted in ``import_timeout``), then one pickled dict, ``{"prepared": PreparedDeploy}`` or ``{"error": text,
"traceback": text}``, then end of file. Pickle is safe here: the child is our own process, and the pipe is
private to the two of them.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from cbctl.declare import DeployFileError, PreparedDeploy, load_file, prepare
from cbctl.errors import CbctlError

#: Seconds the child interpreter may take to start and import cbctl before it begins the user's import (a
#: loaded machine takes a few; the user's own import time is ``import_timeout``, on top).
CHILD_START_TIMEOUT_S = 60.0
_STARTED = b"S"
#: not ``-m cbctl.deploy_import``: ``import cbctl`` imports this module too, and runpy warns about that
_CHILD_MAIN = "import sys; from cbctl.deploy_import import _child; _child(sys.argv[1], int(sys.argv[2]))"


def import_deploy_file(path: str | os.PathLike[str], import_timeout: float | None) -> PreparedDeploy:
    """What ``path`` declares, imported, checked and serialised in a child interpreter; ``DeployFileError``
    if it does not import, declares something wrong, ends its interpreter, or runs past ``import_timeout``."""
    path = Path(path)
    if not path.is_file():
        raise DeployFileError(f"{path} is not a file: pass the path of a Python file that declares functions")
    package_root = str(Path(__file__).resolve().parent.parent)  # this cbctl, wherever it is imported from
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH"))
                                                       if p)}
    read_end, write_end = os.pipe()
    try:
        child = subprocess.Popen([sys.executable, "-c", _CHILD_MAIN, str(path), str(write_end)],
                                 pass_fds=(write_end,), env=env, stdin=subprocess.DEVNULL)
    finally:
        os.close(write_end)
    try:
        data = _read_answer(read_end, child, path, import_timeout)
    except BaseException:
        child.kill()
        child.wait()
        raise
    finally:
        os.close(read_end)
    child.wait()
    answer = pickle.loads(data)
    if "error" in answer:
        raise DeployFileError(answer["error"], answer.get("traceback", ""))
    return answer["prepared"]


def _read_answer(fd: int, child: subprocess.Popen, path: Path, import_timeout: float | None) -> bytes:
    chunks: list[bytes] = []
    started = False
    deadline = time.monotonic() + CHILD_START_TIMEOUT_S
    while True:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            if not started:
                raise DeployFileError(f"the import of {path} did not start within {CHILD_START_TIMEOUT_S:.0f} s "
                                      "(is the machine overloaded?): try again")
            raise DeployFileError(
                f"{path} did not finish importing within {import_timeout:g} s (does it block at module level?): "
                "move slow work into the functions, or allow more time with `cbctl deploy --import-timeout S`")
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            break
        if not started:
            started = True
            chunk = chunk[len(_STARTED):]
            deadline = None if import_timeout is None else time.monotonic() + import_timeout
        chunks.append(chunk)
    data = b"".join(chunks)
    if data:
        return data
    code = child.wait()
    if code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"exited (code {code})"
    raise DeployFileError(f"{path} {how} while importing, before declaring its functions: a deploy file must "
                          "not end its interpreter at module level (os._exit, os.kill, a crash); move that code "
                          "into a function or under `if __name__ == \"__main__\":`")


def _child(path: str, fd: int) -> None:
    out = os.fdopen(fd, "wb")
    out.write(_STARTED)
    out.flush()
    try:
        answer: dict = {"prepared": prepare(load_file(path, import_timeout=None), path)}
    except DeployFileError as exc:
        answer = {"error": str(exc), "traceback": exc.user_traceback}
    except CbctlError as exc:  # a declaration refused as it was made (cbctl.dag with a non-function, say)
        answer = {"error": f"{path}: {exc}", "traceback": ""}
    out.write(pickle.dumps(answer))
    out.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # threads the file started must not keep this process, or the deploy, waiting
