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
from cbctl.runtime.wire import limits

_MISSING = object()


class UserLibrary:
    def __init__(self, executor: UserHost) -> None:
        self._executor = executor

    def get(self, key: str, default: Any = _MISSING) -> Any:
        """The value under ``key``; ``default`` if given and the key holds none, else ``NoSuchKey``.

        Served from this executor's cache when it holds the key. Under the call's consistency mode: with
        ``repeatable_read``, the version the call's first reader saw; with ``causal``, the *list* of the key's
        concurrent values (usually one; put a resolved value to merge them)."""
        limits.check_key(key)
        try:
            return self._executor.read_key(key)
        except NoSuchKey:
            if default is _MISSING:
                raise
            return default

    def put(self, key: str, value: Any, durable: bool = True, ttl: float | None = None) -> bool:
        """Write ``value`` under ``key``; durable in the store when this returns. Last-writer-wins, except in a
        ``causal`` call, where it replaces the versions this call read of the key and is kept alongside
        concurrent ones. ``MessageTooLarge`` if the value is over the cluster's limit (``--max-message-mb``).

        ``durable=False``: an ephemeral value, for intermediate results. It lives in the store's memory only
        (never logged, never in a snapshot), for ``ttl`` seconds (default 300) from this put, and is lost if the
        store restarts; any executor or client reads it with ``get`` or a ``Ref`` until then, and ``NoSuchKey``
        after. Always last-writer-wins. A key is durable or ephemeral, not both (``InvalidArgument``).

        Returns whether the value is now the key's (False: a concurrent write stamped later won; an ephemeral
        put always says True)."""
        limits.check_key(key)
        if durable:
            if ttl is not None:
                raise InvalidArgument("ttl applies to ephemeral values only: pass durable=False with it")
            return self._executor.write_key(key, value)
        self._executor.write_ephemeral(key, value, limits.check_ttl(ttl, default_as=0.0))
        return True

    def getid(self) -> str:
        """This executor's id (as ``cbctl status`` and ``cbctl top`` show it)."""
        return self._executor.executor_id

    def send(self, executor_id: str, message: Any) -> None:
        """Send ``message`` to the function running on ``executor_id`` now; it reads it with ``recv``.

        A message reaches only the function running there when it was sent: one sent where nothing runs, or not
        read before that function returns, is dropped (never handed to a later call). ``MessageTooLarge`` if it is
        over the cluster's limit on one value; ``InboxFull`` (here, or from the next ``send``/``recv``) if the
        receiver's unread messages are at their bound (``INBOX_MAX_MESSAGES`` / ``INBOX_MAX_BYTES``)."""
        if not isinstance(executor_id, str):
            raise InvalidArgument(f"executor id {executor_id!r} is not a string: pass an id as cb.getid() returns it")
        self._executor.send_direct(executor_id, message)

    def recv(self, timeout: float | None = None) -> list[tuple[str, Any]]:
        """Messages sent to this function as ``(sender_executor_id, message)`` pairs, oldest first.

        Returns at once with what has arrived; with ``timeout`` (seconds), waits up to that long for at
        least one message, returning an empty list if none came. ``InboxFull`` if a message this function sent
        was refused."""
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, numbers.Real)
                                    or not timeout >= 0):
            raise InvalidArgument(f"timeout={timeout!r} is invalid: cb.recv takes seconds >= 0, or None to return at "
                                  "once")
        deadline = None if timeout is None else time.monotonic() + timeout
        return self._executor.receive_direct(deadline)
