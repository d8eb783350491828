"""Store URLs (cbctl/runtime/redis_store/url.py) and where keys live in Redis: pure, no server."""

from __future__ import annotations

import pytest

from cbctl.errors import InvalidArgument
from cbctl.runtime.redis_store.client import RedisStoreClient
from cbctl.runtime.redis_store.url import is_store_url, parse_store_url


@pytest.mark.parametrize("text, hosts, user, password, db, cluster, tls", [
    ("redis://127.0.0.1:6379", (("127.0.0.1", 6379),), None, None, 0, False, False),
    ("redis://u:p%40ss@h:1/3", (("h", 1),), "u", "p@ss", 3, False, False),
    ("rediss://:secret@h:2", (("h", 2),), None, "secret", 0, False, True),
    ("redis+cluster://a:1,b:2,[::1]:3", (("a", 1), ("b", 2), ("::1", 3)), None, None, 0, True, False),
])
def test_urls_parse(text, hosts, user, password, db, cluster, tls):
    url = parse_store_url(text)
    assert (url.hosts, url.username, url.password, url.db, url.cluster, url.tls) == (
        hosts, user, password, db, cluster, tls)
    assert is_store_url(text)
    assert "secret" not in url.redacted() and "p@ss" not in url.redacted()


def test_redacted_keeps_everything_but_the_password():
    assert parse_store_url("redis://u:pw@h:1/2").redacted() == "redis://u:***@h:1/2"
    assert parse_store_url("redis+cluster://a:1,b:2").redacted() == "redis+cluster://a:1,b:2"


@pytest.mark.parametrize("text, message", [
    ("tcp://127.0.0.1:1", "not a Redis URL"),
    ("redis://h", "is not HOST:PORT"),
    ("redis://h:0", "is not HOST:PORT"),
    ("redis://:pw@h", "redis://:***@h"),  # a bad URL's error never shows the password
    ("redis+cluster://h:1/1", "database 0 only"),
    ("redis://h:1/db", "not a number"),
])
def test_bad_urls_are_refused(text, message):
    with pytest.raises(InvalidArgument, match=message.replace("*", r"\*")) as info:
        parse_store_url(text)
    assert "pw" not in str(info.value).replace("pass", "")


def test_embedded_addresses_are_not_store_urls():
    assert not is_store_url("ipc:///tmp/x/sock/store-0")
    assert not is_store_url("tcp://127.0.0.1:5555")


@pytest.mark.parametrize("key", ["a", "__cb/fn/x", "__cb/trigger/t", "{__cb}/fn/x", "cbr:{cb}/x", "__cb/"])
def test_key_names_round_trip_and_reserved_keys_share_a_slot_tag(key):
    name = RedisStoreClient.redis_key(key)
    assert RedisStoreClient.key_of(name) == key
    assert name.startswith("cbr:{cb}/") == key.startswith("__cb/")
