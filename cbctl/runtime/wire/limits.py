"""The cluster's size limits (pure): how large one value may be, and the zmq backstop above it.

A *value* is what a caller or a function hands cbctl to carry: a call's arguments, a result, a ``put``. Each is
checked where it is encoded, on the side that made it, so the one who can fix it gets ``MessageTooLarge`` naming
the size, the limit and the option that raises it. Servers also set zmq's ``MAXMSGSIZE`` on the sockets anyone
can reach (``backstop_bytes``), a little above the limit, so a hostile or broken peer sending a huge frame loses
its connection instead of costing a server its memory; an honest peer's frames stay under it, because every
value in them was checked against the limit and the rest of a frame is bounded by ``FRAME_HEADROOM_BYTES``.
"""

from __future__ import annotations

from cbctl.errors import MessageTooLarge
from cbctl.runtime.defaults import FRAME_HEADROOM_BYTES, MAX_MESSAGE_BYTES

#: The ``options`` key under which servers get the limit from the supervisor (``ProcessConfig.options``).
OPTION = "max_message_bytes"

_MIB = 1 << 20


def mib(size: int) -> str:
    """A byte count as MiB for messages: '1.5 MiB', '64 MiB'."""
    return f"{size / _MIB:.1f}".removesuffix(".0") + " MiB"


def check_size(size: int, limit: int, what: str) -> None:
    """Raise ``MessageTooLarge`` when ``size`` bytes of ``what`` (e.g. "the value for key 'k'") exceed ``limit``."""
    if size > limit:
        raise too_large(size, limit, what)


def too_large(size: int, limit: int, what: str) -> MessageTooLarge:
    return MessageTooLarge(
        f"{what}: {mib(size)} ({size} bytes) serialised, over this cluster's limit of {mib(limit)} per value: "
        "store it in smaller pieces, or start the cluster with a larger `cbctl up --max-message-mb N`")


def backstop_bytes(limit: int = MAX_MESSAGE_BYTES) -> int:
    """zmq ``MAXMSGSIZE`` for server sockets: the value limit plus room for the rest of an honest frame."""
    return limit + FRAME_HEADROOM_BYTES
