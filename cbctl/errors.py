"""The one exception hierarchy of cbctl.

Every error a user can see is a ``CbctlError``; the subclass says how to recover:
start a cluster, fix the call, fix the function, or wait longer.
"""

from __future__ import annotations


class CbctlError(Exception):
    """Base of every error cbctl raises on purpose."""


class ClusterNotRunning(CbctlError):
    """No cluster answers in the given home: start one with ``cbctl up``."""


class ClusterAlreadyRunning(CbctlError):
    """``cbctl up`` found a live cluster in the same home."""


class AuthenticationError(CbctlError):
    """The cluster listens on TCP with CURVE authentication and this party cannot read its keys
    (``HOME/keys/``): run as the user who started it, or copy its keys directory."""


class ProtocolError(CbctlError):
    """A frame did not unpack into a known message of this protocol version."""


class NoSuchFunction(CbctlError):
    """The named function or DAG is not registered."""


class InvalidDag(CbctlError):
    """A DAG failed validation (unknown function, cycle, wrong number of sinks, ...)."""


class InvalidArgument(CbctlError):
    """A request named something impossible (bad option value, bad key, ...)."""


class NoSuchKey(CbctlError):
    """The store holds no value for the key (never written, or deleted; an ephemeral value also after its TTL
    passed or the store restarted)."""


class StoreFull(CbctlError):
    """An ephemeral put would take the store's ephemeral memory past its bound (``EPHEMERAL_MAX_BYTES``):
    wait for earlier values to expire, give them shorter TTLs, or put this one durably."""


class NoExecutorAvailable(CbctlError):
    """No executor of the needed type can take the function (e.g. ``gpu=True`` with no GPU executor)."""


class CallTimeout(CbctlError):
    """The call did not return before its timeout; the function may still be running."""


class MessageTooLarge(CbctlError):
    """A value (call arguments, a result, a put) is larger serialised than the cluster's limit; the message names
    both sizes. Store it in pieces, or raise the limit with ``cbctl up --max-message-mb N``."""


class ContinuationDepthExceeded(CbctlError):
    """A call handed itself on with ``cbctl.Continue`` more times than the cluster allows (a runaway cycle of
    continuations); raise the limit with ``cbctl up --max-continuations N`` if the chain is meant to be long."""


class DecodeError(CbctlError):
    """A value (a stored value, a call's result or argument, a message) could not be turned back into a Python
    object where it was read: its bytes are damaged, or it holds an object pickled by reference to a module that
    cannot be imported there, or unpickling it raised. The message names which and what to do."""


class InboxFull(CbctlError):
    """A direct message (``cb.send``) was refused: the receiving function has not read the messages it already
    has, and its inbox holds ``INBOX_MAX_MESSAGES`` or ``INBOX_MAX_BYTES``. Raised in the sender, by its next
    ``cb.send`` or ``cb.recv`` (the refusal comes back asynchronously)."""


class ConsistencyError(CbctlError):
    """A call's consistency mode could not keep its promise (the version a ``repeatable_read`` call first read
    is no longer held anywhere, say), so the call failed instead of reading what the mode rules out: call again."""


class CallLost(CbctlError):
    """A call's executor died and the call could not be run to the end elsewhere: it was dispatched
    ``CALL_MAX_ATTEMPTS`` times (the function may crash its executor), or no executor came back in time.
    The function may have run (partly): call again if it is safe to."""


class FunctionError(CbctlError):
    """The user's function raised; carries the remote exception type and traceback text."""

    def __init__(self, message: str, remote_type: str = "", remote_traceback: str = "") -> None:
        super().__init__(message)
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        return f"{self.remote_type}: {self.args[0]}" if self.remote_type else str(self.args[0])


# Errors that cross the wire travel by class name; this maps them back on the client side.
ERRORS_BY_NAME: dict[str, type[CbctlError]] = {
    cls.__name__: cls
    for cls in (
        CbctlError,
        ClusterNotRunning,
        ClusterAlreadyRunning,
        AuthenticationError,
        ProtocolError,
        NoSuchFunction,
        InvalidDag,
        InvalidArgument,
        NoSuchKey,
        NoExecutorAvailable,
        CallTimeout,
        MessageTooLarge,
        StoreFull,
        ContinuationDepthExceeded,
        ConsistencyError,
        DecodeError,
        InboxFull,
        CallLost,
        FunctionError,
    )
}


def error_from_wire(error_type: str, message: str) -> CbctlError:
    """Rebuild a typed error sent by a server (unknown names fall back to ``CbctlError``)."""
    return ERRORS_BY_NAME.get(error_type, CbctlError)(message)
