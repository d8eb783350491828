"""``CloudburstFunction``: a registered function as a callable handle; calling it returns a ``CloudburstFuture``."""

from __future__ import annotations

from typing import Any

from cbctl import Client
from cbctl.compat.cloudburst.future import CloudburstFuture


class CloudburstFunction:
    def __init__(self, name: str, conn: Any, kvs_client: Client) -> None:
        """``conn`` is the ``CloudburstConnection`` that calls go through."""
        self.name = name
        self._conn = conn
        self._kvs_client = kvs_client

    def get_name(self) -> str:
        return self.name

    def __call__(self, *args: Any) -> CloudburstFuture:
        call = self._conn._start_call(self.name, list(args))
        return CloudburstFuture(call.call_id, self._kvs_client, call=call)

    def __repr__(self) -> str:
        return f"CloudburstFunction({self.name!r})"
