"""Which store client a process uses: ``connect_store`` picks it from the cluster's store address.

Runs in: every role and the client library (shared layer).
"""

from __future__ import annotations

from typing import Any

import zmq

from cbctl.runtime.redis_store.url import is_store_url
from cbctl.runtime.store_client import StoreAccess, StoreClient


def connect_store(context: zmq.Context, address: str, writer_id: str, **options: Any) -> StoreAccess:
    """The client for a cluster's store address: the embedded store node's zmq address, or a Redis URL
    (``cbctl up --store redis://...``; redis-py is imported only then)."""
    if is_store_url(address):
        from cbctl.runtime.redis_store.client import RedisStoreClient

        return RedisStoreClient(address, writer_id, **options)
    return StoreClient(context, address, writer_id, **options)
