"""The shape check of a trigger's extras, done where a trigger arrives at the executor."""

from __future__ import annotations

from typing import Any

from cbctl.errors import ProtocolError
from cbctl.runtime import consistency, multiexec
from cbctl.runtime.continuation import DEPTH_KEY
from cbctl.runtime.wire.messages import TRIGGER_DEPTH_EXTRA

# The type of each entry a trigger's extras may carry (consistency.py, multiexec.py, continuation.py). Checked
# where a trigger arrives, so one of another shape, which no cbctl process sends, is dropped as malformed rather
# than failing its step after the user's function ran. Entries not listed here are ignored by every reader.
_EXTRAS_TYPES: dict[str, type] = {
    consistency.SESSION: dict, consistency.WRITES: dict, consistency.VERSIONS: dict, consistency.HOLDERS: list,
    consistency.CAUSAL_FLOOR: dict, multiexec.EXTRAS_KEY: dict, DEPTH_KEY: int, TRIGGER_DEPTH_EXTRA: int,
}


def check_trigger_extras(extras: dict[str, Any]) -> None:
    """Raise ``ProtocolError`` if an entry of a trigger's extras has the wrong type (see ``_EXTRAS_TYPES``)."""
    for key, value in extras.items():
        expected = _EXTRAS_TYPES.get(key)
        if expected is not None and type(value) is not expected:
            raise ProtocolError(f"DagTrigger.extras[{key!r}] is a {type(value).__name__}, not {expected.__name__}")
    holders = extras.get(consistency.HOLDERS)
    if holders and not all(type(h) is str for h in holders):
        raise ProtocolError("DagTrigger.extras holds a snapshot holder address that is not a string")
