"""Large values as frames of their own (wire/frames.py, wire/serialization.py): what travels out of band, that a
forwarded value is never copied or parsed, and that a malformed multi-frame message is refused."""

from __future__ import annotations

import numpy as np
import pytest
import zmq

from cbctl.errors import ProtocolError
from cbctl.runtime.defaults import OUT_OF_BAND_BYTES
from cbctl.runtime.process import Receiver, drain, send_message
from cbctl.runtime.wire import serialization
from cbctl.runtime.wire.frames import MULTIPART_MARK, Frames
from cbctl.runtime.wire.messages import CallRequest, CallResult, DagTrigger, unpack

BIG = OUT_OF_BAND_BYTES


def test_small_values_stay_one_inline_bytes() -> None:
    assert type(serialization.encode([1, "x", np.arange(10), b"y" * 100])) is bytes
    assert type(CallResult("c-1", True, serialization.encode(7)).pack()) is bytes


def test_a_large_array_travels_as_its_own_buffer_and_comes_back_equal() -> None:
    array = np.arange(BIG, dtype=np.float64).reshape(-1, 4)
    encoded = serialization.encode([array, "tag"])
    assert type(encoded) is Frames
    assert len(encoded.parts) == 2 and len(encoded.parts[0]) < 200  # the body holds a reference, not the bytes
    assert len(encoded) == array.nbytes + len(encoded.parts[0])  # len() is the size, as for bytes
    back, tag = serialization.decode(encoded)
    assert tag == "tag" and back.dtype == array.dtype and (back == array).all()
    back[0, 0] = -1.0  # decoded over this process's own memory: a copy, not the caller's array
    assert array[0, 0] == 0.0


def test_large_bytes_and_tuples_and_masked_arrays_travel_out_of_band() -> None:
    blob = bytes(range(256)) * (BIG // 256 + 1)
    value = (blob, np.ma.MaskedArray(np.ones(BIG), mask=np.zeros(BIG, dtype=bool)), np.float32(3.5))
    encoded = serialization.encode(value)
    assert type(encoded) is Frames and len(encoded.parts) == 4  # the bytes, the data and the mask
    back = serialization.decode(encoded)
    assert type(back) is tuple and back[0] == blob and (back[1] == value[1]).all() and back[2] == np.float32(3.5)
    assert type(serialization.decode(serialization.encode(blob))) is bytes


def test_a_message_with_a_large_value_is_several_frames_and_forwarding_it_copies_nothing() -> None:
    payload = serialization.encode([np.ones(BIG * 4, dtype=np.uint8)])
    request = CallRequest("c-1", "f", payload, {}, "", False, "lww", [])
    frames = request.pack()
    assert type(frames) is list and frames[0][:1] == MULTIPART_MARK
    assert frames[1:] == payload.parts[:1] + payload.parts[1:] and frames[2] is payload.parts[1]
    received = unpack(frames)
    assert type(received.args) is Frames and received.args.parts[1] is frames[2]  # the same object: no copy
    trigger = DagTrigger("c-1", "", "f", {}, {}, [], "", received.args, "", False, "lww", {})
    forwarded = trigger.pack()
    assert forwarded[2] is frames[2] and len(forwarded[0]) < 300  # the scheduler re-sends the buffer untouched


@pytest.mark.parametrize("frames", [
    [MULTIPART_MARK + b"\x93\x01"],  # cut short
    [b"\x93\x01\x28\xa1x"],  # no mark
])
def test_malformed_multi_frame_messages_are_refused(frames: list[bytes]) -> None:
    with pytest.raises(ProtocolError):
        unpack(frames)


def test_a_reference_past_the_last_frame_is_refused() -> None:
    frames = CallResult("c-1", True, serialization.encode(np.ones(BIG))).pack()
    with pytest.raises(ProtocolError, match="refers to frames"):
        unpack(frames[:2])  # the buffer's frame is missing


def test_frames_travel_over_zmq_uncopied_and_arrays_over_them_are_writable() -> None:
    context = zmq.Context()
    try:
        pull, push = context.socket(zmq.PULL), context.socket(zmq.PUSH)
        pull.bind("inproc://oob")
        push.connect("inproc://oob")
        array = np.arange(BIG, dtype=np.int64)
        send_message(push, CallResult("c-1", True, b"\x07").pack())
        send_message(push, CallResult("c-2", True, serialization.encode(array)).pack())
        receiver = Receiver(pull)
        messages: list = []
        while len(messages) < 2:
            messages += receiver.receive(1000)
        small, large = (unpack(m) for m in messages)
        assert type(messages[0]) is bytes and small.value == b"\x07"
        assert type(large.value) is Frames and isinstance(large.value.parts[1], zmq.Frame)
        back = serialization.decode(large.value)
        assert (back == array).all() and back.flags.writeable
        back[0] = 99  # the receiver owns the frame's memory: no copy was made, none is needed
        send_message(push, CallResult("c-3", True, serialization.encode(array)).pack())
        assert pull.poll(1000)
        ((message,),) = drain(pull)
        assert type(message) is list and (serialization.decode(unpack(message).value) == array).all()
    finally:
        context.destroy(linger=0)


def test_gathering_encoded_values_keeps_each_value() -> None:
    values = [serialization.encode(1), serialization.encode(np.ones(BIG)), serialization.encode("x")]
    gathered = serialization.decode(serialization.encode_list(values))
    assert gathered[0] == 1 and (gathered[1] == 1).all() and gathered[2] == "x"
    assert serialization.decode(serialization.encode_list([serialization.encode(i) for i in range(3)])) == [0, 1, 2]


def test_a_router_receiver_keeps_each_peers_messages_whole_and_apart() -> None:
    """The scheduler's receive (``receive_from_router``): [identity, message] for a one-frame message, the
    frames of a multi-frame one together, and a peer's message of extra frames whole, never read into the next."""
    context = zmq.Context()
    try:
        router, dealer = context.socket(zmq.ROUTER), context.socket(zmq.DEALER)
        router.bind("inproc://routed")
        dealer.connect("inproc://routed")
        dealer.send(b"\x93\x01\x28\xa1x")
        dealer.send_multipart([b"", b"extra", b"parts"])  # a REQ-style envelope: still one message
        send_message(dealer, CallResult("c-2", True, serialization.encode(np.ones(BIG))).pack())
        dealer.send(b"last")
        receiver = Receiver(router, multipart=True, drain=False)
        messages: list = []
        for _ in range(20):
            messages += receiver.receive(1000)
            if len(messages) == 4:
                break
        identity = messages[0][0]
        assert messages[0] == [identity, b"\x93\x01\x28\xa1x"]
        assert messages[1] == [identity, b"", b"extra", b"parts"]
        assert len(messages[2]) == 2 and type(messages[2][1]) is list and unpack(messages[2][1]).call_id == "c-2"
        assert messages[3] == [identity, b"last"]
        with pytest.raises(ValueError, match="ROUTER"):
            Receiver(dealer, multipart=True)
    finally:
        context.destroy(linger=0)
