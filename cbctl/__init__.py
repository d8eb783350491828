"""cbctl: stateful functions as a service, in the line of Cloudburst.

The public API: ``connect`` to a cluster, declare functions, DAGs and storage triggers with ``function``,
``dag`` and ``trigger``, reference store keys with ``Ref``, hand a call on with ``Continue``, and the
``CbctlError`` family of exceptions.
"""

from cbctl.client import CallFuture, Client, connect
from cbctl.declare import dag, function, trigger
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
from cbctl.runtime.continuation import Continue
from cbctl.runtime.wire.serialization import Ref

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
    "trigger",
    "__version__",
]
