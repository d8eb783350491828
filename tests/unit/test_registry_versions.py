"""Which kept copies of replaced function versions are pruned (cbctl/runtime/registry.py)."""

from __future__ import annotations

from cbctl.runtime import registry


class DictStore:
    """The three store calls prune_versions makes, over a dict."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = set(keys)

    def list_keys(self, prefix: str = "") -> list[str]:
        return sorted(k for k in self.keys if k.startswith(prefix))

    def delete(self, key: str) -> None:
        self.keys.discard(key)


def test_a_version_replaced_longer_ago_than_the_keep_time_is_pruned_and_the_latest_never():
    s = 10**9
    store = DictStore([registry.version_key("f", v) for v in (100 * s, 200 * s, 990 * s)]
                      + [registry.version_key("f/x", 1), registry.version_key("g", 5)])
    # 100 was replaced at 200 (800 s ago): pruned; 200 was replaced at 990 (10 s ago): kept; 990 is current
    assert registry.prune_versions(store, ["f"], now_ns=1000 * s, keep_ns=600 * s) == 1
    assert store.list_keys(registry.VERSION_PREFIX + "f/") == [registry.version_key("f", v) for v in (200 * s, 990 * s)
                                                              ] + [registry.version_key("f/x", 1)]
    assert registry.prune_versions(store, ["g"], now_ns=1000 * s, keep_ns=0, remove_all=True) == 1
    assert registry.version_key("f/x", 1) in store.keys  # a name with a slash is its own function
