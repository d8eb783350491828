"""Large store values in parts (store/node.py, store/embedded.py, store/wal.py, lattices.py): a put's value arrives
as frames of its own and the store keeps, logs and answers with those same objects, never joined or parsed; a
restart gets the value back in parts; and a multi-frame message over a socket's bound is refused, not held."""

from __future__ import annotations

import numpy as np
import pytest
import zmq

from cbctl.errors import ProtocolError
from cbctl.runtime.defaults import OUT_OF_BAND_BYTES
from cbctl.runtime.lattices import LWWLattice, lattice_from_wire
from cbctl.runtime.process import Receiver, receive_message, send_message
from cbctl.runtime.store.embedded import EmbeddedBackend
from cbctl.runtime.store.node import StoreNode
from cbctl.runtime.store.wal import WriteAheadLog
from cbctl.runtime.wire import serialization
from cbctl.runtime.wire.frames import Frames
from cbctl.runtime.wire.limits import Oversized
from cbctl.runtime.wire.messages import GetRequest, GetResponse, PutRequest, SubscribeRequest, unpack


def big_value(seed: int = 1) -> tuple[np.ndarray, Frames]:
    array = np.random.default_rng(seed).integers(0, 255, OUT_OF_BAND_BYTES * 8, dtype=np.uint8).reshape(64, -1)
    encoded = serialization.encode({"array": array, "tag": seed})
    assert type(encoded) is Frames
    return array, encoded


def received(message: bytes | list) -> object:
    """``message`` as a peer receives it: through a real PUSH/PULL pair, its value frames in zmq's memory."""
    context = zmq.Context.instance()
    pull, push = context.socket(zmq.PULL), context.socket(zmq.PUSH)
    try:
        port = pull.bind_to_random_port("tcp://127.0.0.1")
        push.connect(f"tcp://127.0.0.1:{port}")
        send_message(push, message)
        assert pull.poll(5000)
        return unpack(receive_message(pull))
    finally:
        push.close(linger=0)
        pull.close(linger=0)


def test_the_store_keeps_logs_and_answers_with_the_frames_it_received(tmp_path) -> None:
    array, encoded = big_value()
    put = received(PutRequest(1, "k", LWWLattice(5, "w", encoded).to_wire()).pack())
    frames = put.lattice[3].parts
    assert all(type(part) is zmq.Frame for part in frames[1:])
    node = StoreNode(EmbeddedBackend(tmp_path))
    try:
        node.handle_batch([put])
        stored = node.backend.get("k")
        assert stored.value.parts[1] is frames[1]  # kept as received: not joined, not copied
        (reply,), _ = node.handle_batch([GetRequest(2, ["k"])])
        packed = reply.pack()
        assert type(packed) is list and len(packed[0]) < 200  # the answer's header holds no value bytes
        assert any(part is frames[1] for part in packed)  # sent from the same frame
        answer = received(packed)
        assert type(answer) is GetResponse
        back = serialization.decode(lattice_from_wire(answer.lattices[0]).value)
        assert back["tag"] == 1 and np.array_equal(back["array"], array) and back["array"].flags.writeable
    finally:
        node.close()
    again = EmbeddedBackend(tmp_path)  # replayed from the log: in parts again, views of the record
    try:
        value = again.get("k").value
        assert type(value) is Frames and all(type(part) is memoryview for part in value.parts)
        assert np.array_equal(serialization.decode(value)["array"], array)
        again.maintain()  # nothing to compact yet; compaction is exercised below
    finally:
        again.close()


def test_a_value_in_parts_survives_compaction_beside_inline_values(tmp_path) -> None:
    array, encoded = big_value(2)
    backend = EmbeddedBackend(tmp_path, compact_bytes=1)
    try:
        backend.merge("big", LWWLattice(1, "w", encoded))
        backend.merge("small", LWWLattice(1, "w", serialization.encode([1, 2])))
        backend.commit()
        backend.maintain()  # over the threshold: the snapshot is written from the parts
        assert backend.wal.snapshot_bytes > array.nbytes
    finally:
        backend.close()
    again = EmbeddedBackend(tmp_path)
    try:
        assert np.array_equal(serialization.decode(again.get("big").value)["array"], array)
        assert serialization.decode(again.get("small").value) == [1, 2]
        assert again.stats()["bytes"] == len(encoded) + len(serialization.encode([1, 2]))
    finally:
        again.close()


def test_lww_merge_of_values_in_parts_orders_and_compares_by_content() -> None:
    _, encoded = big_value(3)
    twin = Frames([bytes(part) for part in encoded.parts])  # the same bytes, other objects
    a, b = LWWLattice(7, "w", encoded), LWWLattice(7, "w", twin)
    assert a == b and hash(a) == hash(b)  # a write delivered twice is one write (the store's superseded check)
    assert a.merge(b) == b.merge(a)
    later = LWWLattice(8, "w", serialization.encode(1))
    assert a.merge(later) is later and later.merge(a) is later
    other = Frames([encoded.parts[0], b"\xff" * len(encoded.parts[1])])
    assert a.merge(LWWLattice(7, "w", other)).value is other  # a tie on all else: the larger bytes win, everywhere
    assert LWWLattice(7, "w", other).merge(a).value is other


def test_decoding_a_held_value_copies_and_an_owned_one_does_not() -> None:
    array, encoded = big_value(4)
    message = received(PutRequest(1, "k", LWWLattice(5, "w", encoded).to_wire()).pack())
    value = message.lattice[3]
    shared = serialization.decode(value, owned=False)["array"]
    shared[0, 0] ^= 0xFF  # a cache's frames must not change under the function that read them
    assert np.array_equal(serialization.decode(value, owned=False)["array"], array)
    mine = serialization.decode(value)["array"]
    assert not mine.flags.owndata  # over the received frame itself
    assert np.array_equal(mine, array)


@pytest.mark.parametrize("bound_mb, parts_mb, refused", [(4, [1, 1, 1], False), (4, [2, 2, 2], True)])
def test_a_multi_frame_message_is_bounded_in_total_by_maxmsgsize(bound_mb, parts_mb, refused) -> None:
    context = zmq.Context.instance()
    pull, push = context.socket(zmq.PULL), context.socket(zmq.PUSH)
    try:
        pull.setsockopt(zmq.MAXMSGSIZE, bound_mb << 20)  # each frame is under it: zmq alone lets all of them in
        port = pull.bind_to_random_port("tcp://127.0.0.1")
        push.connect(f"tcp://127.0.0.1:{port}")
        value = Frames([b"\xc0", *(b"\x01" * (mb << 20) for mb in parts_mb)])
        send_message(push, PutRequest(1, "k", LWWLattice(5, "w", value).to_wire()).pack())
        send_message(push, GetRequest(2, ["after"]).pack())  # the next message is read whole, as ever
        receiver = Receiver(pull)
        messages: list = []
        while len(messages) < 2:
            got = receiver.receive(5000)
            assert got, "a message did not arrive"
            messages += got
        first, after = messages
        assert unpack(after) == GetRequest(2, ["after"])
        if not refused:
            assert type(first) is list and len(first) == 2 + len(parts_mb)
            return
        assert type(first) is Oversized and first.nbytes > bound_mb << 20
        with pytest.raises(ProtocolError, match=r"more than 4 MiB .* was refused.*--max-message-mb"):
            unpack(first)
    finally:
        push.close(linger=0)
        pull.close(linger=0)


def test_a_large_value_drops_the_caches_copies_instead_of_being_pushed_to_them(tmp_path) -> None:
    _, encoded = big_value(5)
    node = StoreNode(EmbeddedBackend(tmp_path))
    try:
        node.handle_batch([SubscribeRequest(1, "e", "ipc://exec-0", ["k", "s"]),
                           SubscribeRequest(2, "e", "ipc://exec-1", ["k"])])
        _, pushes = node.handle_batch([PutRequest(3, "k", LWWLattice(5, "w", encoded).to_wire()),
                                       PutRequest(4, "s", LWWLattice(5, "w", serialization.encode(1)).to_wire())])
        assert sorted((address, type(push).__name__) for address, push in pushes) == [
            ("ipc://exec-0", "KeyDropped"), ("ipc://exec-0", "KeyUpdate"), ("ipc://exec-1", "KeyDropped")]
        assert "k" not in node.subscribers and node.subscriptions == 1  # the small key's stays
        assert node.stats()["large_values_dropped_from_caches"] == 2
        _, pushes = node.handle_batch([PutRequest(5, "k", LWWLattice(6, "w", encoded).to_wire())])
        assert pushes == []  # nobody holds it until a reader fetches (and subscribes) again
    finally:
        node.close()


def test_compaction_waits_for_the_log_to_outgrow_the_snapshot(tmp_path) -> None:
    wal = WriteAheadLog(tmp_path, compact_threshold_bytes=1000)
    list(wal.replay())
    try:
        wal.append(b"x" * 5000)
        assert wal.needs_compaction()
        wal.compact([b"x" * 5000])  # a snapshot of 5000 bytes of state
        wal.append(b"y" * 2000)  # past the threshold, not past the snapshot: rewriting all of it would not pay
        assert not wal.needs_compaction()
        wal.append(b"y" * 3100)
        assert wal.needs_compaction()
    finally:
        wal.close()


def test_batch_fsync_on_its_own_thread_syncs_and_a_failure_stops_the_next_check(tmp_path, monkeypatch) -> None:
    import time

    from cbctl.runtime.store import wal as wal_module

    now = [0.0]
    log = WriteAheadLog(tmp_path, durability="batch", batch_interval_s=0.05, clock=lambda: now[0],
                        background_sync=True)
    list(log.replay())
    try:
        log.append(b"x" * 1000)
        now[0] += 1.0
        assert log.sync_if_due()  # started, not waited for: the store's loop goes on serving
        deadline = time.monotonic() + 10
        while log.syncs < 1:
            assert time.monotonic() < deadline, "the background fsync never ran"
            time.sleep(0.01)

        def broken(_fd: int) -> None:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(wal_module, "_datasync", broken)
        log.append(b"y")
        now[0] += 1.0
        assert log.sync_if_due()
        deadline = time.monotonic() + 10
        while log._sync_error is None:
            assert time.monotonic() < deadline, "the failed fsync was not recorded"
            time.sleep(0.01)
        with pytest.raises(OSError, match="Input/output error"):
            log.sync_if_due()  # the store's maintain() raises it: a log that cannot sync must stop the store
    finally:
        monkeypatch.undo()
        log.close()
    again = WriteAheadLog(tmp_path)
    try:
        assert list(again.replay()) == [b"x" * 1000, b"y"]
    finally:
        again.close()


def test_the_cache_holds_views_so_readers_get_copies_and_an_unheld_value_is_the_readers_own() -> None:
    from cbctl.runtime.executor.cache import ExecutorCache

    array, encoded = big_value(6)
    put = received(PutRequest(1, "k", LWWLattice(5, "w", encoded).to_wire()).pack())
    lattice = lattice_from_wire(put.lattice)
    cache = ExecutorCache(capacity_bytes=4 * array.nbytes)
    assert cache.insert("k", lattice) == []
    kept = cache.get("k").lattice
    assert kept == lattice and all(type(part) is memoryview for part in kept.value.parts[1:])
    read = serialization.decode(kept.value)["array"]  # owned=True, as an LWW read decodes
    read[:] = 0
    assert np.array_equal(serialization.decode(kept.value)["array"], array)  # the cache's copy is unchanged
    small = ExecutorCache(capacity_bytes=1000)
    assert small.insert("k", lattice) == ["k"]  # too large to hold: its reader takes the frames, uncopied
    assert not serialization.decode(lattice.value)["array"].flags.owndata
