"""A steady load for the fault tests: client threads, each with its own client, putting a key and calling
``fault_chain`` (which writes a key of its own) in a loop, and keeping the record every assertion reads."""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cbctl
from cbctl.errors import CbctlError
from tests.conftest import RunningCluster

FAULT_FNS = Path(__file__).resolve().parent / "fault_fns.py"
#: Every call's timeout in seconds; a call must end (answer or CbctlError) within it, plus this slack for the
#: thread to be scheduled on a busy 2-core machine.
CALL_TIMEOUT_S = 10.0
END_SLACK_S = 1.0
#: The cluster must serve a new call within this many seconds of a kill (the issue's bar).
RECOVERY_S = 5.0


def expected(x: int) -> int:
    return 2 * x + 1


#: What each DAG of fault_fns.py answers for x.
EXPECTED = {"fault_chain": expected, "fault_fan": lambda x: 5 * x}


@dataclass
class Record:
    acked_puts: dict[str, int] = field(default_factory=dict)  # client puts that returned
    call_writes: dict[str, int] = field(default_factory=dict)  # keys written by calls that returned
    answers: int = 0
    errors: list[str] = field(default_factory=list)  # CbctlErrors: allowed, and counted
    failures: list[str] = field(default_factory=list)  # wrong answers, other exceptions, late ends: never
    slowest_s: float = 0.0


class SteadyLoad:
    def __init__(self, handle: RunningCluster, threads: int = 4, dag: str = "fault_chain") -> None:
        self.handle = handle
        self.dag, self.expected = dag, EXPECTED[dag]
        self.clients = [handle.client() for _ in range(threads)]
        self.record = Record()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)]

    def __enter__(self) -> SteadyLoad:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.stop()
        else:  # stop without asserting: a hung-thread assertion here would replace the test's own failure
            self.stopping.set()
            for thread in self.threads:
                thread.join(CALL_TIMEOUT_S + 20)

    def stop(self) -> Record:
        self.stopping.set()
        for thread in self.threads:
            # a call ends within its timeout, a put within the store client's retry budget (15 s)
            thread.join(CALL_TIMEOUT_S + 20)
        assert not any(t.is_alive() for t in self.threads), "a load thread hung"
        return self.record

    def calls_done(self) -> int:
        with self.lock:
            return self.record.answers + len(self.record.errors)

    def _run(self, n: int) -> None:
        client = self.clients[n]
        i = 0
        while not self.stopping.is_set():
            i += 1
            tag, x = f"{n}-{i}", n * 1_000_000 + i
            try:
                client.put(f"fault-client/{tag}", x)
                with self.lock:
                    self.record.acked_puts[f"fault-client/{tag}"] = x
            except CbctlError as exc:
                with self.lock:
                    self.record.errors.append(f"put {tag}: {type(exc).__name__}: {exc}")
            started = time.monotonic()
            try:
                answer = client.call(self.dag, tag, x, timeout=CALL_TIMEOUT_S)
                outcome = None if answer == self.expected(x) else f"call {tag}: wrong answer {answer!r}"
            except CbctlError as exc:
                answer, outcome = None, f"error: call {tag}: {type(exc).__name__}: {exc}"
            except Exception as exc:  # noqa: BLE001 - the very thing this test must catch
                answer, outcome = None, f"call {tag}: not a CbctlError: {type(exc).__name__}: {exc}"
            took = time.monotonic() - started
            with self.lock:
                self.record.slowest_s = max(self.record.slowest_s, took)
                if took > CALL_TIMEOUT_S + END_SLACK_S:
                    self.record.failures.append(f"call {tag} ended after {took:.1f} s")
                if outcome is None:
                    self.record.answers += 1
                    self.record.call_writes[f"fault-fn/{tag}"] = self.expected(x)
                elif outcome.startswith("error: "):
                    self.record.errors.append(outcome[len("error: "):])
                else:
                    self.record.failures.append(outcome)


def kill(handle: RunningCluster, name: str) -> tuple[int, float]:
    """kill -9 the process ``name`` (e.g. ``executor-0``); returns its pid and when."""
    pid = handle.pid_of(name)
    os.kill(pid, signal.SIGKILL)
    return pid, time.monotonic()


def seconds_until_served(client: cbctl.Client, since: float, x: int = 7) -> float:
    """Seconds from ``since`` until a call made after it returns its right answer (asserted under RECOVERY_S).
    ``client`` is connected before the kill: connecting finds a dead supervisor and stops the whole cluster."""
    deadline = since + RECOVERY_S
    last = ""
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            if client.call("fault_chain", f"probe-{since}", x, timeout=max(remaining, 0.05)) == expected(x):
                return time.monotonic() - since
        except CbctlError as exc:
            last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.05)
    raise AssertionError(f"the cluster did not serve a call within {RECOVERY_S} s of the kill (last: {last})")


def wait_for_calls(load: SteadyLoad, count: int, timeout: float = 30.0) -> None:
    load.handle.wait_for(lambda: load.calls_done() >= count, timeout=timeout, what=f"{count} calls of the load")


def check_every_write_readable(reader: cbctl.Client, record: Record) -> None:
    writes = {**record.acked_puts, **record.call_writes}
    wrong = {k: v for k, v in writes.items() if reader.get(k) != v}
    assert not wrong, f"{len(wrong)} of {len(writes)} acknowledged writes lost or wrong, e.g. {list(wrong)[:5]}"


def check_calls(record: Record) -> None:
    assert not record.failures, f"{len(record.failures)} calls hung or answered wrongly: {record.failures[:5]}"
    assert record.answers > 0
