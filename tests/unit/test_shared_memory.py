"""Values lent through shared memory (wire/shared.py), in this process and over real zmq sockets: a lending maps
back exactly; a segment is reused only once its receiver let go of it; ``TAKE`` names go when taken, ``KEEP``
names when released; a handle is told from a value's bytes, counts as its value against a size bound, and never
makes a receiver open or unlink anything but a cbctl lending name; ``sweep`` removes what dead processes left;
and with no usable ``/dev/shm`` values go as zmq frames."""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Iterator

import msgpack
import numpy as np
import pytest
import zmq

from cbctl.errors import DecodeError
from cbctl.runtime.process import receive_message, send_message
from cbctl.runtime.wire import serialization, shared
from cbctl.runtime.wire.frames import Frames
from cbctl.runtime.wire.limits import Oversized
from cbctl.runtime.wire.messages import CallResult, unpack

MB = 1 << 20


@pytest.fixture(autouse=True)
def fresh_pool() -> Iterator[None]:
    """Each test starts with an empty pool of this process's, lending on, and leaves nothing in /dev/shm."""
    shared.close_pool()
    shared.set_enabled(True)
    yield
    gc.collect()  # mappings from the test, so their locks go
    shared.close_pool()
    shared.set_enabled(None)
    for name in shared.mine():
        os.unlink(os.path.join(shared.DIRECTORY, name))


def lend(data: bytes | np.ndarray, flags: int = shared.TAKE) -> shared.Handle:
    handle = shared.lend(memoryview(data), flags)
    assert handle is not None, "no segment could be made in /dev/shm"
    return shared.Handle(handle)


def test_a_lent_value_maps_back_exactly_and_its_take_name_goes_when_taken() -> None:
    data = np.random.default_rng(1).integers(0, 255, 3 * MB, dtype=np.uint8)
    handle = lend(data)
    assert handle.size == data.nbytes and not handle.keep
    assert os.path.exists(os.path.join(shared.DIRECTORY, handle.name))
    mapped = shared.attach(handle)
    assert type(mapped) is not shared.Gone
    assert np.array_equal(np.frombuffer(mapped, dtype=np.uint8), data)
    assert not os.path.exists(os.path.join(shared.DIRECTORY, handle.name))  # taken: the receiver unlinked it
    assert [n for n in shared.mine() if not n.endswith("-s")] == []  # only the pooled segment is left


def test_a_segment_is_reused_once_its_receiver_lets_go_and_not_before() -> None:
    first = shared.attach(lend(b"a" * MB))
    made = shared.stats["segments_made"]
    second = shared.attach(lend(b"b" * MB))  # the first is still mapped: a new segment
    assert shared.stats["segments_made"] == made + 1
    assert bytes(first[:1]) == b"a" and bytes(second[:1]) == b"b"  # the first was not overwritten
    del first, second
    gc.collect()
    third = shared.attach(lend(b"c" * MB))  # both were let go: one of them is reused
    assert shared.stats["segments_made"] == made + 1
    assert bytes(third[:2]) == b"cc"


def test_a_segment_with_a_name_not_yet_taken_is_not_reused() -> None:
    handle = lend(b"x" * MB)
    made = shared.stats["segments_made"]
    lend(b"y" * MB)  # the first lending is in flight (nobody mapped it yet): it must not be overwritten
    assert shared.stats["segments_made"] == made + 1
    assert bytes(shared.attach(handle)[:1]) == b"x"


def test_threads_lending_at_once_never_share_a_segment() -> None:
    handles: dict[int, list[shared.Handle]] = {}

    def lend_many(seed: int) -> None:
        handles[seed] = [lend(bytes([seed]) * MB) for _ in range(6)]

    threads = [threading.Thread(target=lend_many, args=(seed,)) for seed in range(1, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(handles) == [1, 2, 3, 4]
    for seed, lent in handles.items():
        for handle in lent:  # every lending still holds what its thread put in
            assert bytes(shared.attach(handle)) == bytes([seed]) * MB


def test_a_forked_child_never_touches_its_parents_pool() -> None:
    shared.attach(lend(b"p" * MB))
    gc.collect()
    parents = shared.mine()
    pid = os.fork()
    if pid == 0:  # the child: lends with a pool and names of its own, then lets its pool go
        code = 0
        try:
            if shared._pool or shared.mine():
                code = 3
            shared.attach(lend(b"c" * MB))
            shared.close_pool()
        except BaseException:
            code = 4
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert shared.mine() == parents  # the parent's segment is still there, and still its own to reuse
    made = shared.stats["segments_made"]
    shared.attach(lend(b"q" * MB))
    assert shared.stats["segments_made"] == made


def test_keep_names_stay_until_released_and_a_released_one_is_gone_with_a_clear_reason() -> None:
    handle = lend(b"k" * MB, shared.KEEP)
    assert handle.keep
    once = shared.attach(handle)
    again = shared.attach(handle)  # a call dispatched a second time takes the same argument again
    assert bytes(once[:1]) == bytes(again[:1]) == b"k"
    once[0] = ord("z")  # a receiver's changes to a KEEP value stay its own: the next taker sees the original
    assert bytes(shared.attach(handle)[:1]) == b"k"
    shared.release([handle.name])
    gone = shared.attach(handle)
    assert type(gone) is shared.Gone and "is gone" in gone.reason and "CBCTL_SHARED_MEMORY=0" in gone.reason


def test_a_holder_lends_what_it_holds_without_a_copy_and_its_readers_writes_stay_theirs(monkeypatch) -> None:
    monkeypatch.setattr(shared, "hold_on_attach", True)  # as the store does
    held = shared.attach(lend(b"v" * MB))
    held_names = [n for n in shared.mine() if n.endswith("-h")]
    assert len(held_names) == 1  # the segment stays reachable under the holder's name
    lent = shared.stats["bytes_lent"]
    made = shared.stats["segments_made"]
    out = shared.export([b"header", held])
    handle = shared.Handle(out[1])
    assert handle.private and shared.stats["segments_made"] == made  # a new name for the same segment: no copy
    assert shared.stats["bytes_lent"] == lent + MB
    monkeypatch.setattr(shared, "hold_on_attach", False)  # now as a reader
    reader = shared.attach(handle)
    reader[0] = ord("w")  # copy-on-write: the holder's value is unchanged
    assert bytes(held[:1]) == b"v" and bytes(reader[:1]) == b"w"
    del held, reader
    gc.collect()
    assert [n for n in shared.mine() if n.endswith("-h")] == []  # let go: the holder's name goes with it
    shared.attach(lend(b"x" * MB))  # and the lender reuses the segment
    assert shared.stats["segments_made"] == made


def test_past_its_bound_of_locked_mappings_a_receiver_copies_the_value_out(monkeypatch) -> None:
    monkeypatch.setattr(shared, "_bound", shared._locked + 1)  # room for one more locked mapping
    kept = shared.attach(lend(b"1" * MB))
    made, copied = shared.stats["segments_made"], shared.stats["copied_out"]
    copy = shared.attach(lend(b"2" * MB))
    assert shared.stats["copied_out"] == copied + 1
    assert bytes(copy[:1]) == b"2" and len(copy) == MB
    copy[0] = ord("3")  # the copy is the receiver's own memory
    shared.attach(lend(b"4" * MB))  # the copied one's segment was let go at once: it is reused
    assert shared.stats["segments_made"] == made + 1
    del kept


def test_trim_lets_go_of_segments_unlent_for_a_while_unless_mapped() -> None:
    mapped = shared.attach(lend(b"m" * MB))
    shared.attach(lend(b"f" * (2 * MB)))  # a second segment (the first is mapped), taken and let go at once
    gc.collect()
    assert len(shared._pool) == 2
    shared.trim(time.monotonic() + 1)
    assert len(shared._pool) == 2  # lent a moment ago: kept for reuse
    shared.trim(time.monotonic() + shared.POOL_IDLE_S + 1)
    assert [s.capacity for s in shared._pool] == [MB]  # the free one went; the mapped one stays
    assert bytes(mapped[:1]) == b"m"


def test_a_handle_is_told_from_a_values_bytes() -> None:
    handle = lend(b"h" * MB)
    assert shared.as_handle(bytes(handle)) == handle
    assert shared.as_handle(msgpack.packb([1, "body"])) is None  # a value's small msgpack body
    assert shared.as_handle(b"\xc1" + b"x" * 30) is None  # a multi-frame header's mark alone is not a handle
    assert shared.as_handle(b"z" * (shared.HANDLE_MAX_BYTES + 1)) is None
    assert len(handle) < serialization.OUT_OF_BAND_BYTES  # a value's buffer frame is never this small


@pytest.mark.parametrize("name", ["../../etc/passwd", "cbctl-1-00000000-1-s", "x" * 30])
def test_a_handle_naming_anything_but_a_lending_name_opens_and_unlinks_nothing(tmp_path, name: str) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    forged = shared.Handle(shared.MAGIC + shared._HANDLE.pack(shared.TAKE, 7) + name.encode())
    gone = shared.attach(forged)
    assert type(gone) is shared.Gone and "not a cbctl lending name" in gone.reason
    shared.release([str(victim), name])
    assert victim.read_bytes() == b"keep me"


def test_a_value_over_shared_memory_decodes_over_the_mapping_and_a_gone_one_raises_decode_error() -> None:
    array = np.arange(MB, dtype=np.float64)
    encoded = serialization.encode([array])
    assert type(encoded) is Frames
    parts = [encoded.parts[0], shared.attach(lend(encoded.parts[1]))]
    (back,) = serialization.decode(Frames(parts))
    assert np.array_equal(back, array) and back.flags.writeable
    back[0] = -1  # over the receiver's own mapping: no copy was made
    assert np.frombuffer(parts[1], dtype=np.float64)[0] == -1
    gone = [encoded.parts[0], shared.Gone("the segment is gone (test)", array.nbytes)]
    with pytest.raises(DecodeError, match="the segment is gone"):
        serialization.decode(Frames(gone))


@pytest.fixture
def pair() -> Iterator[tuple[zmq.Socket, zmq.Socket]]:
    context = zmq.Context()
    sender, receiver = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    receiver.setsockopt(zmq.RCVTIMEO, 5000)
    receiver.bind("inproc://shared-memory-test")
    sender.connect("inproc://shared-memory-test")
    yield sender, receiver
    sender.close(0)
    receiver.close(0)
    context.term()


def test_a_message_whose_value_is_lent_arrives_whole_and_unpacks_over_the_mapping(pair) -> None:
    sender, receiver = pair
    array = np.random.default_rng(2).standard_normal(MB)
    frames = CallResult("c-1", True, serialization.encode(array)).pack()
    assert type(frames) is list
    lent = shared.export(frames)
    assert sum(len(f) for f in lent) < 1000  # only handles travel: the value stays in shared memory
    send_message(sender, lent)
    message = unpack(receive_message(receiver))
    assert np.array_equal(serialization.decode(message.value), array)


def test_a_handle_counts_as_its_value_against_a_receivers_size_bound(pair) -> None:
    sender, receiver = pair
    receiver.setsockopt(zmq.MAXMSGSIZE, 2 * MB)
    frames = CallResult("c-1", True, serialization.encode(np.zeros(4 * MB, dtype=np.uint8))).pack()
    lent = shared.export(frames)
    send_message(sender, lent)
    received = receive_message(receiver)
    assert type(received) is Oversized and received.nbytes > 4 * MB
    taken = shared.Handle(lent[-1])
    assert not os.path.exists(os.path.join(shared.DIRECTORY, taken.name))  # dropped unread: its name is gone too


def test_a_handle_goes_to_a_peer_on_another_host_as_its_value() -> None:
    data = np.random.default_rng(3).integers(0, 255, 2 * MB, dtype=np.uint8)
    handle = lend(data)
    frames = shared.materialize([b"header", b"body", handle])
    assert frames[:2] == [b"header", b"body"]
    assert np.array_equal(np.frombuffer(frames[2], dtype=np.uint8), data)  # the bytes themselves, not the handle
    assert not os.path.exists(os.path.join(shared.DIRECTORY, handle.name))  # a TAKE lending: taken
    untouched = [b"header", b"x" * 10]
    assert shared.materialize(untouched) is untouched


def test_buffers_below_the_threshold_and_without_dev_shm_go_as_frames(monkeypatch) -> None:
    small = [b"header", b"body", b"s" * (shared.SHARED_MIN_BYTES - 1)]
    assert shared.export(small) is small
    monkeypatch.setattr(shared, "DIRECTORY", "/nonexistent-for-cbctl-test")
    big = [b"header", b"body", b"b" * shared.SHARED_MIN_BYTES]
    fallbacks = shared.stats["fallbacks"]
    assert shared.export(big) is big
    assert shared.stats["fallbacks"] == fallbacks + 1


def test_sweep_removes_what_dead_processes_lent_and_orphaned_take_names_only() -> None:
    dead = lend(b"d" * MB)
    live = lend(b"l" * MB, shared.KEEP)
    now = time.time()
    mine = os.getpid()

    def alive(pid: int) -> bool:
        return pid != mine  # this process plays the dead lender

    assert shared.sweep(alive, now=now) == 0  # within the grace: a receiver may still take them
    removed = shared.sweep(alive, now=now + shared.DEAD_CREATOR_GRACE_S + 1)
    assert removed >= 3  # both names and the pooled segments
    assert shared.attach(dead).__class__ is shared.Gone and shared.attach(live).__class__ is shared.Gone
    shared.close_pool()
    orphan = lend(b"o" * MB)
    keep = lend(b"k" * MB, shared.KEEP)
    shared.sweep(lambda pid: True, now=time.time() + shared.ORPHAN_AGE_S + 1)
    assert type(shared.attach(orphan)) is shared.Gone  # a TAKE name nobody took for that long
    assert type(shared.attach(keep)) is not shared.Gone  # a live lender's KEEP name is its to release


def test_is_local_address() -> None:
    assert shared.is_local_address("ipc:///tmp/x")
    assert shared.is_local_address("tcp://127.0.0.1:5555") and shared.is_local_address("tcp://localhost:1")
    assert shared.is_local_address("tcp://[::1]:80")
    assert not shared.is_local_address("tcp://10.0.0.2:5555") and not shared.is_local_address("tcp://host:1")
