"""The cluster's size limits (pure): how large one value may be, and the zmq backstop above it.

A *value* is what a caller or a function hands cbctl to carry: a call's arguments, a result, a ``put``. Each is
checked where it is encoded, on the side that made it, so the one who can fix it gets ``MessageTooLarge`` naming
the size, the limit and the option that raises it. Servers also set zmq's ``MAXMSGSIZE`` on the sockets anyone
can reach (``backstop_bytes``), a little above the limit, so a hostile or broken peer sending a huge frame loses
its connection instead of costing a server its memory; an honest peer's frames stay under it, because every
value in them was checked against the limit and the rest of a frame is bounded by ``FRAME_HEADROOM_BYTES``.
zmq applies ``MAXMSGSIZE`` to each frame; a multi-frame message (large values as frames of their own) is bounded
by it as a whole by ``process.receive_rest``, which keeps an ``Oversized`` instead of the message's frames.
"""

from __future__ import annotations

from typing import Any

import msgpack

from cbctl.errors import InvalidArgument, MessageTooLarge
from cbctl.runtime.defaults import (
    EPHEMERAL_MAX_TTL_S,
    EPHEMERAL_TTL_S,
    FRAME_HEADROOM_BYTES,
    MAX_KEY_BYTES,
    MAX_MESSAGE_BYTES,
)

#: Keys under this prefix are cbctl's own (the registry, stored results, triggers): users may not name them.
RESERVED_PREFIX = "__cb/"

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


class Oversized:
    """What a receiver has of a multi-frame message whose frames together pass its socket's ``MAXMSGSIZE`` (zmq
    bounds each frame, not their sum): the header frame only, the rest was received and dropped as it came, so
    such a message costs a server at most the bound in memory. ``frames.unpack`` refuses it with ``text``; a
    server that can tell the sender (the store: the header holds the request id) answers ``MessageTooLarge``."""

    __slots__ = ("header", "nbytes", "limit")

    def __init__(self, header: bytes, nbytes: int, limit: int) -> None:
        self.header = header
        self.nbytes = nbytes  # bytes received before the bound was passed (at least limit + 1)
        self.limit = limit

    def __len__(self) -> int:
        return len(self.header)  # what the receiver holds of it (servers count parsed sizes with len)

    def header_data(self) -> list[Any] | None:
        """The header as decoded: ``[version, kind, *fields]``, each value that travelled out of band None (its
        frames are gone); None when the header is not that. What a server reads to tell the sender why."""
        try:
            data = msgpack.unpackb(memoryview(self.header)[1:], ext_hook=lambda _code, _data: None, raw=False,
                                   strict_map_key=False)
        except Exception:  # msgpack raises several unrelated types for bad input
            return None
        return data if type(data) is list and len(data) >= 2 else None

    @property
    def text(self) -> str:
        return (f"a multi-frame message of more than {mib(self.limit)} ({self.nbytes}+ bytes in all its frames) "
                f"was refused: its frames together are over this cluster's limit per message; store the value "
                "in smaller pieces, or start the cluster with a larger `cbctl up --max-message-mb N`")


def check_ttl(ttl_s: float | None, default_as: float = EPHEMERAL_TTL_S) -> float:
    """An ephemeral put's lifetime in seconds, checked where the put is made: None means the default
    (``default_as``: the callers send 0.0, which the store reads as its default)."""
    if ttl_s is None:
        return default_as
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)) or not 0 < ttl_s <= EPHEMERAL_MAX_TTL_S:
        raise InvalidArgument(f"ttl {ttl_s!r} is invalid: give seconds, more than 0 and at most "
                              f"{EPHEMERAL_MAX_TTL_S:.0f} (a day)")
    return float(ttl_s)
def check_key(key: Any) -> None:
    """Raise ``InvalidArgument`` unless ``key`` is one a user may read or write: a non-empty string, UTF-8
    encodable (no lone surrogates), at most ``MAX_KEY_BYTES`` long, not one of cbctl's own ``__cb/`` keys.
    Where keys come from users: the client, ``cb.get``/``cb.put`` and ``Ref``."""
    if type(key) is not str or not key or key.startswith(RESERVED_PREFIX):
        if isinstance(key, str) and key.startswith(RESERVED_PREFIX):
            raise InvalidArgument(f"key {key[:60]!r} is invalid: it is one of cbctl's own ({RESERVED_PREFIX}...), "
                                  "which user code may not read or write; use another key")
        raise InvalidArgument(f"key {key!r:.60} is invalid: use a non-empty string not starting with "
                              f"{RESERVED_PREFIX!r} (cbctl's own keys)")
    try:
        size = len(key.encode())
    except UnicodeEncodeError as exc:
        raise InvalidArgument(f"key {key[:60]!r} is invalid: it holds a character UTF-8 cannot carry "
                              f"({exc.reason} at position {exc.start}): keys are text; decode bytes with "
                              "errors='replace', or use another key") from None
    if size > MAX_KEY_BYTES:
        raise InvalidArgument(f"key {key[:40]!r}... is invalid: {size} bytes long, over the limit of "
                              f"{MAX_KEY_BYTES}: use a shorter key (a hash of the long name, say) and store the "
                              "name in the value")
