"""``CloudburstFuture``: the result of a call that was not answered directly, read from the store.

A future the compat client makes holds the cbctl call behind it (called with ``store_result``, so its result
is written to the store under the call id, which is the future's ``obj_id``, Cloudburst's response id), and
``get()`` reads it from there; with an ``output_key`` the result is read from that key once the call is done.
A future built by hand from an id (``CloudburstFuture(obj_id, conn.kvs_client, serializer)``) polls the store
for the key ``obj_id`` and for the stored result of call ``obj_id``, whichever appears.

``get()`` waits as long as it takes, as Cloudburst's does; ``get(timeout=S)`` gives up after S seconds with
``cbctl.CallTimeout``. A call whose function raised raises ``cbctl.FunctionError`` here (Cloudburst stored an
``('ERROR: ...', ...)`` tuple as the result instead).
"""

from __future__ import annotations

import time
from typing import Any

from cbctl import CallFuture, CallTimeout, Client, NoSuchKey

_PENDING = object()
#: Longest pause between two reads of a future built from an id, in seconds (the first pauses are shorter).
_POLL_MAX_S = 0.05


class CloudburstFuture:
    def __init__(self, obj_id: str, kvs_client: Client, serializer: Any = None, *, call: CallFuture | None = None,
                 output_key: str | None = None) -> None:
        self.obj_id = obj_id
        self.kvs_client = kvs_client
        self.serializer = serializer
        self._call = call
        self._output_key = output_key
        self._value: Any = _PENDING

    def get(self, timeout: float | None = None) -> Any:
        if self._value is _PENDING:
            self._value = self._read_call(timeout) if self._call is not None else self._poll(timeout)
        return self._value

    def _read_call(self, timeout: float | None) -> Any:
        assert self._call is not None
        value = self._call.result(timeout)
        if self._output_key:
            try:
                return self.kvs_client.get(self._output_key)  # what is there now, as Cloudburst's get reads it
            except NoSuchKey:
                pass  # deleted since: the call's own result is still the answer
        return value

    def _poll(self, timeout: float | None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        stored = CallFuture(self.kvs_client, self.obj_id, self.obj_id, stored=True)
        pause = 0.001
        while True:
            try:
                return self.kvs_client.get(self.obj_id)
            except NoSuchKey:
                pass
            try:
                return stored.result(0)
            except CallTimeout:
                pass
            if deadline is not None and time.monotonic() >= deadline:
                raise CallTimeout(f"no result under {self.obj_id!r} within {timeout:g} s: wait longer with "
                                  "get(timeout=S), or get() to wait until it is there")
            time.sleep(pause)
            pause = min(pause * 2, _POLL_MAX_S)

    def __repr__(self) -> str:
        return f"CloudburstFuture({self.obj_id!r})"
