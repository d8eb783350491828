"""cbctl: stateful functions as a service, in the line of Cloudburst.

The public API: ``connect`` to a cluster, declare functions and DAGs with ``function`` and ``dag``,
reference store keys with ``Ref``, and the ``CbctlError`` family of exceptions.
"""

from cbctl.client import CallFuture, Client, connect
from cbctl.declare import dag, function
from cbctl.errors import (
    CallTimeout,
    CbctlError,
    ClusterAlreadyRunning,
    ClusterNotRunning,
    FunctionError,
    InvalidArgument,
    InvalidDag,
    NoExecutorAvailable,
    NoSuchFunction,
    NoSuchKey,
    ProtocolError,
)
from cbctl.runtime.serialization import Ref

__version__ = "0.1.0"

__all__ = [
    "CallFuture",
    "CallTimeout",
    "CbctlError",
    "Client",
    "ClusterAlreadyRunning",
    "ClusterNotRunning",
    "FunctionError",
    "InvalidArgument",
    "InvalidDag",
    "NoExecutorAvailable",
    "NoSuchFunction",
    "NoSuchKey",
    "ProtocolError",
    "Ref",
    "connect",
    "dag",
    "function",
    "__version__",
]
