"""Writes stamped far in the future (a machine whose clock ran ahead, or an injected frame) must not swallow the
puts that come after them, and a put that truly loses says so instead of "stored"."""

from __future__ import annotations

import zmq

from cbctl.runtime.wire import serialization
from cbctl.runtime.wire.messages import Ack, PutRequest, unpack
from cbctl.runtime.writer_clock import MAX_TIMESTAMP
from tests.integration.test_lifecycle import assert_one_line_error


def inject(address: str, key: str, value: object, timestamp: int, writer: str) -> None:
    """A put as another machine's writer would send it, with its own (skewed) clock."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(address)
        lattice = ["lww", timestamp, writer, serialization.encode(value), False]
        sock.send(PutRequest(1, key, lattice).pack())
        assert sock.poll(10_000), "the store did not answer"
        assert isinstance(unpack(sock.recv()), Ack)
    finally:
        sock.close()


def test_a_write_from_the_future_does_not_swallow_later_puts(start_cluster):
    handle = start_cluster(executors=1)
    store = handle.cluster_file().store_address
    handle.cli("put", "keep", '"old"', check=True)
    inject(store, "keep", "from the future", 2**63 - 1, "skewed-host")
    assert handle.cli("get", "keep", check=True).stdout.strip() == "from the future"

    # the CLI's put wins: the store's answer names the later version, and the write is stamped after it
    assert handle.cli("put", "keep", '"new value"', check=True).stdout.strip() == "stored keep"
    assert handle.cli("get", "keep", check=True).stdout.strip() == "new value"
    assert handle.cli("put", "keep", '"newer"', check=True).stdout.strip() == "stored keep"
    assert handle.cli("get", "keep", check=True).stdout.strip() == "newer"

    # so does a function's cb.put, and the Python client's
    client = handle.client()
    inject(store, "fn-key", "from the future", 2**63 - 1, "skewed-host")
    client.register(lambda cb, key, value: cb.put(key, value), name="writer")
    assert client.call("writer", "fn-key", "from a function", timeout=30) is True
    assert client.get("fn-key") == "from a function"
    inject(store, "py-key", "from the future", 2**63 - 1, "skewed-host")
    assert client.put("py-key", "from the client") is True
    assert client.get("py-key") == "from the client"

    # a version at the very top of the wire's range cannot be outstamped: the put says it was not stored
    inject(store, "keep", "unbeatable", MAX_TIMESTAMP, "~~~~")
    assert_one_line_error(handle.cli("put", "keep", '"lost"'), "'keep' was not stored", "won")
    assert handle.cli("get", "keep", check=True).stdout.strip() == "unbeatable"
    assert client.put("keep", "lost too") is False
    assert client.call("writer", "keep", "lost in a function", timeout=30) is False
