"""A client inherited across os.fork() raises a clear error in the child at once (no spinning past its
timeout), names the fix, and the fix works; the parent's client is unaffected."""

from __future__ import annotations

import json
import os
import select
import time

import cbctl


def run_in_child(body) -> dict:
    """Fork; ``body()`` runs in the child and returns a JSON-able outcome, read back through a pipe. The child
    always exits (os._exit), and the parent waits for it with a deadline."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read_end)
        try:
            outcome = body()
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, whatever it is
            outcome = {"unexpected": f"{type(exc).__name__}: {exc}"}
        os.write(write_end, json.dumps(outcome).encode())
        os._exit(0)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], 30)
        assert ready, "the child neither answered nor exited within 30 s"
        data = b""
        while chunk := os.read(read_end, 65536):
            data += chunk
        return json.loads(data)
    finally:
        os.close(read_end)
        deadline = time.monotonic() + 10
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                break
            time.sleep(0.02)


def test_a_client_used_in_a_forked_child_raises_at_once_and_a_new_one_works(deployed):
    client = deployed.client()
    assert client.call("increment", 1, timeout=10) == 2
    pending = client.call_async("increment", 5)

    def child() -> dict:
        outcome = {}
        for what, use in (("call", lambda: client.call("increment", 1, timeout=5)),
                          ("get", lambda: client.get("k")),
                          ("future", lambda: pending.result(timeout=5))):
            started = time.monotonic()
            try:
                use()
                outcome[what] = "no error"
            except cbctl.CbctlError as exc:
                outcome[what] = {"error": str(exc), "took": time.monotonic() - started}
        client.close()  # harmless in the child: the parent's sockets are left alone
        with cbctl.connect(deployed.home) as fresh:
            outcome["fresh"] = fresh.call("increment", 41, timeout=10)
        return outcome

    outcome = run_in_child(child)
    for what in ("call", "get", "future"):
        assert isinstance(outcome[what], dict), outcome
        assert "os.fork()" in outcome[what]["error"] and "cbctl.connect() in the child" in outcome[what]["error"]
        assert outcome[what]["took"] < 1, outcome
    assert outcome["fresh"] == 42
    assert pending.result(timeout=10) == 6, "the parent's client is unaffected"
    assert client.call("increment", 2, timeout=10) == 3
