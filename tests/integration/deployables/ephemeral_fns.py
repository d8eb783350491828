"""Functions for test_ephemeral.py: ephemeral and durable puts, reads by key and by Ref, and a trigger target
that records what fired it."""

import uuid

import cbctl


@cbctl.function
def put_temp(cb, key, value, ttl=None):
    cb.put(key, value, durable=False, ttl=ttl)
    return cb.getid()


@cbctl.function
def read_where(cb, key):
    return [cb.getid(), cb.get(key)]


@cbctl.function
def ref_where(cb, value):
    return [cb.getid(), value]


@cbctl.function
def read_or_error(cb, key):
    try:
        return ["ok", cb.get(key)]
    except cbctl.NoSuchKey as exc:
        return ["NoSuchKey", str(exc)]


@cbctl.function
def record_firing(cb, keys, values=None):
    # one key per invocation, under the first key's top-level name: duplicates would show
    cb.put(f"fired/{keys[0].split('/')[0]}/{uuid.uuid4().hex}", {"keys": keys, "values": values})
