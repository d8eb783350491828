"""The merge script (``merge.lua``) and how it is called: EVALSHA, loaded again on NOSCRIPT (redis-py's
``Script`` does that, on every master of a cluster)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

MERGE_LUA = (Path(__file__).with_name("merge.lua")).read_text()

#: Prefix of the errors the script raises for a bad or mismatched lattice (``ResponseError`` text).
SCRIPT_ERROR_PREFIX = "cbctl: "

#: Publish modes the script takes as ARGV[2].
NO_PUSH, PUBLISH, SPUBLISH = "", "publish", "spublish"


class Merger:
    """Calls the merge script on ``client`` (a ``redis.Redis``, ``RedisCluster`` or a pipeline of either)."""

    def __init__(self, client: Any, push: str = NO_PUSH) -> None:
        self.script = client.register_script(MERGE_LUA)
        self.push = push

    def __call__(self, redis_key: str, packed: bytes, channel: str | None = None, index: str | None = None,
                 client: Any = None) -> int:
        """Merge ``packed`` (msgpack of ``Lattice.to_wire()``) into ``redis_key``, publishing the result on
        ``channel`` (default: the key's name) if this merger pushes, and adding the key to the SET ``index`` if
        given (same cluster slot); 1 if the value changed."""
        keys = [redis_key] if index is None else [redis_key, index]
        return self.script(keys=keys, args=[packed, self.push, channel or redis_key], client=client)
