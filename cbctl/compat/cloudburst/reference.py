"""``CloudburstReference``: a store key passed as a call argument, resolved to its value before the function runs.

The compat client turns each one into a ``cbctl.Ref`` as the call is sent, so the executor resolves it as it
resolves any ``Ref`` (through its cache), and the scheduler prefers an executor that caches the key. The value
is always handed over deserialised: Anna's serialised form, which ``deserialize=False`` asked for in Cloudburst,
does not exist in cbctl.
"""

from __future__ import annotations

from typing import Any


class CloudburstReference:
    def __init__(self, key: str, deserialize: bool = True) -> None:
        self.key = key
        self.deserialize = deserialize

    def __repr__(self) -> str:
        return f"CloudburstReference({self.key!r}, {self.deserialize!r})"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, CloudburstReference) and (other.key, other.deserialize) == (self.key, self.deserialize)

    def __hash__(self) -> int:
        return hash((CloudburstReference, self.key, self.deserialize))
