"""cbctl: stateful functions as a service, in the line of Cloudburst.

The public API: start a cluster for the life of a ``with`` block with ``local``, ``connect`` to a running one,
declare functions, DAGs and storage triggers with ``function``, ``dag`` and ``trigger``, reference store keys
with ``Ref``, hand a call on with ``Continue``, and the ``CbctlError`` family of exceptions.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cbctl.errors import (
    AuthenticationError,
    CallLost,
    CallTimeout,
    CbctlError,
    ClusterAlreadyRunning,
    ClusterNotRunning,
    ConsistencyError,
    ContinuationDepthExceeded,
    DecodeError,
    FunctionError,
    InboxFull,
    InvalidArgument,
    InvalidDag,
    MessageTooLarge,
    NoExecutorAvailable,
    NoSuchFunction,
    NoSuchKey,
    ProtocolError,
    StoreFull,
)

# The rest is imported on first use (PEP 562): the supervisor, the processes it starts and the command line
# import modules under ``cbctl``, which runs this file, and none of them needs the client's imports (zmq,
# cloudpickle, the message catalogue) to start; a cluster starts that much sooner.
_LAZY = {
    "CallFuture": "cbctl.client",
    "Client": "cbctl.client",
    "connect": "cbctl.client",
    "dag": "cbctl.declare",
    "function": "cbctl.declare",
    "trigger": "cbctl.declare",
    "LocalCluster": "cbctl.local_cluster",
    "local": "cbctl.local_cluster",
    "Continue": "cbctl.runtime.continuation",
    "Ref": "cbctl.runtime.wire.serialization",
}

if TYPE_CHECKING:
    from cbctl.client import CallFuture, Client, connect
    from cbctl.declare import dag, function, trigger
    from cbctl.local_cluster import LocalCluster, local
    from cbctl.runtime.continuation import Continue
    from cbctl.runtime.wire.serialization import Ref


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cbctl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next use is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "CallFuture",
    "CallLost",
    "CallTimeout",
    "CbctlError",
    "Client",
    "ClusterAlreadyRunning",
    "ClusterNotRunning",
    "ConsistencyError",
    "Continue",
    "ContinuationDepthExceeded",
    "DecodeError",
    "FunctionError",
    "InboxFull",
    "InvalidArgument",
    "InvalidDag",
    "LocalCluster",
    "MessageTooLarge",
    "NoExecutorAvailable",
    "NoSuchFunction",
    "NoSuchKey",
    "ProtocolError",
    "Ref",
    "StoreFull",
    "connect",
    "dag",
    "function",
    "local",
    "trigger",
    "__version__",
]
