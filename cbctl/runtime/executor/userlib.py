"""The user library: the ``cb`` object every function receives as its first argument.

It is the function's window on the cluster: the store (``get``/``put``), its own identity (``getid``),
and direct messages to other running functions (``send``/``recv``). It belongs to one executor and is
used only from that executor's one thread of user code.
"""

from __future__ import annotations

import numbers
import time
from typing import Any

from cbctl.errors import InvalidArgument, NoSuchKey
from cbctl.runtime.executor.host import UserHost

_MISSING = object()


class UserLibrary:
    def __init__(self, executor: UserHost) -> None:
        self._executor = executor

    def get(self, key: str, default: Any = _MISSING) -> Any:
        """The value under ``key``; ``default`` if given and the key holds none, else ``NoSuchKey``.

        Served from this executor's cache when it holds the key. Under the call's consistency mode: with
        ``repeatable_read``, the version the call's first reader saw; with ``causal``, the *list* of the key's
        concurrent values (usually one; put a resolved value to merge them)."""
        if not isinstance(key, str) or not key:
            raise InvalidArgument(f"key {key!r} is invalid: cb.get takes a non-empty string")
        try:
            return self._executor.read_key(key)
        except NoSuchKey:
            if default is _MISSING:
                raise
            return default

    def put(self, key: str, value: Any) -> bool:
        """Write ``value`` under ``key``; durable in the store when this returns. Last-writer-wins, except in a
        ``causal`` call, where it replaces the versions this call read of the key and is kept alongside
        concurrent ones. ``MessageTooLarge`` if the value is over the cluster's limit (``--max-message-mb``).
        Returns whether the value is now the key's (False: a concurrent write stamped later won)."""
        if not isinstance(key, str) or not key or key.startswith("__cb/"):
            raise InvalidArgument(f"key {key!r} is invalid: use a non-empty string not starting with '__cb/'")
        return self._executor.write_key(key, value)

    def getid(self) -> str:
        """This executor's id (as ``cbctl status`` and ``cbctl top`` show it)."""
        return self._executor.executor_id

    def send(self, executor_id: str, message: Any) -> None:
        """Send ``message`` to whatever function runs on ``executor_id``; it reads it with ``recv``
        (``MessageTooLarge`` if it is over the cluster's limit on one value)."""
        if not isinstance(executor_id, str):
            raise InvalidArgument(f"executor id {executor_id!r} is not a string: pass an id as cb.getid() returns it")
        self._executor.send_direct(executor_id, message)

    def recv(self, timeout: float | None = None) -> list[tuple[str, Any]]:
        """Messages sent to this executor as ``(sender_executor_id, message)`` pairs, oldest first.

        Returns at once with what has arrived; with ``timeout`` (seconds), waits up to that long for at
        least one message, returning an empty list if none came."""
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, numbers.Real)
                                    or not timeout >= 0):
            raise InvalidArgument(f"timeout={timeout!r} is invalid: cb.recv takes seconds >= 0, or None to return at "
                                  "once")
        deadline = None if timeout is None else time.monotonic() + timeout
        return self._executor.receive_direct(deadline)
