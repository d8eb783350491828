"""What every server process shares: its start-up configuration, logging to its own file, signal
handling that only sets a flag, the ready report to the supervisor, and a bounded cache of outgoing
PUSH sockets to peers.
"""

from __future__ import annotations

import collections
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import zmq

from cbctl.runtime import cluster
from cbctl.runtime.defaults import (
    MAX_PEER_SOCKETS,
    RECONNECT_FIRST_MS,
    RECONNECT_MAX_MS,
    REJECTED_FRAME_LOG_PER_S,
    SOCKET_HWM,
)
from cbctl.runtime.wire import auth, shared
from cbctl.runtime.wire.frames import MULTIPART_MARK
from cbctl.runtime.wire.limits import Oversized
from cbctl.runtime.wire.messages import ProcessReady

log = logging.getLogger(__name__)


@dataclass
class ProcessConfig:
    """Everything a child needs to start; built by the supervisor, passed through multiprocessing."""

    home: str
    role: str
    index: int
    supervisor_address: str
    store_address: str = ""
    scheduler_addresses: list[str] = field(default_factory=list)
    listen: str = ""  # "" for ipc in the home, else "tcp://HOST" to bind on random ports of HOST
    curve: bool = False  # TCP sockets authenticate with the cluster's keys (see auth.py)
    bind_address: str = ""  # set on restarts so a restarted process keeps its address
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.role}-{self.index}"

    def bind(self, sock: zmq.Socket, name: str | None = None) -> str:
        """Bind ``sock`` on this process's address (ipc in the home by default) and return it."""
        if self.bind_address and name is None:
            auth.bind(sock, self.bind_address)
            return self.bind_address
        if self.listen:
            return auth.bind_to_random_port(sock, self.listen)
        address = cluster.ipc_address(Path(self.home), name or self.name)
        sock.bind(address)
        return address


class ShutdownFlag:
    """SIGTERM/SIGINT set ``requested`` (warm stop: finish in-flight work); a second one exits at once."""

    def __init__(self) -> None:
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.requested:
            log.warning("second signal %d: exiting immediately", signum)
            os._exit(1)
        log.info("signal %d: stopping", signum)
        self.requested = True


class RejectedFrameLog:
    """Warnings about rejected frames, at most ``per_second`` lines a second: a peer flooding a socket with
    garbage must not flood the log (and the disk) as well. The first line of each second after a quiet one
    says how many went unlogged; the counters (protocol_errors) count every frame."""

    def __init__(self, logger: logging.Logger, per_second: int = REJECTED_FRAME_LOG_PER_S,
                 clock: Callable[[], float] = time.monotonic, what: str = "rejected frames") -> None:
        self._log = logger
        self._what = what
        self._clock = clock
        self._per_second = per_second
        self._second = 0
        self._logged = 0
        self._unlogged = 0

    def warning(self, message: str, *args: Any) -> None:
        second = int(self._clock())
        if second != self._second:
            self._second, self._logged = second, 0
        if self._logged >= self._per_second:
            self._unlogged += 1
            return
        self._logged += 1
        if self._unlogged:
            message += " (%d more %s were not logged)"
            args = (*args, self._unlogged, self._what)
            self._unlogged = 0
        self._log.warning(message, *args)


#: Warnings about messages PeerSockets dropped, rate-limited too: reply addresses come from frames (a hostile
#: or broken peer can name any), and a peer that stopped reading would otherwise cost a log line per message.
_dropped_sends = RejectedFrameLog(log, what="dropped messages")


class TimerWork:
    """A server loop's timer steps and per-entry work, each run so that one that raises is logged (rate-limited,
    one line: the loop may meet the same bad entry every second) and skipped, and the loop goes on. A value that
    came from a frame and slipped past ``unpack``'s checks then costs one step, never the process."""

    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self._failures = RejectedFrameLog(logger, what="timer failures")

    def run(self, step: Callable[..., Any], *args: Any) -> None:
        try:
            step(*args)
        except Exception as exc:
            self.failed(getattr(step, "__qualname__", repr(step)), exc)

    def failed(self, what: str, exc: Exception) -> None:
        self._failures.warning("%s failed, skipped: %s: %s", what, type(exc).__name__, exc)
        self._log.debug("%s failed", what, exc_info=exc)


def setup_logging(config: ProcessConfig) -> None:
    """Send this process's logs, and anything user code prints, to its own file in the home."""
    path = cluster.log_path(Path(config.home), config.role, config.index)
    path.parent.mkdir(parents=True, exist_ok=True)
    stream = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    os.dup2(stream.fileno(), 1)
    os.dup2(stream.fileno(), 2)
    sys.stdout = sys.stderr = stream
    level = os.environ.get("CBCTL_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        stream=stream, level=level, force=True,
        format=f"%(asctime)s {config.name} %(levelname)s %(name)s: %(message)s",
    )


def new_context(config: ProcessConfig) -> zmq.Context:
    """The process's zmq context, carrying the cluster's keys when its TCP sockets authenticate."""
    return auth.new_context(auth.load_keys(Path(config.home)) if config.curve else None)


def report_ready(context: zmq.Context, config: ProcessConfig, address: str, error: str = "") -> None:
    sock = context.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 2000)
    sock.connect(config.supervisor_address)
    sock.send(ProcessReady(config.role, config.index, os.getpid(), address, error).pack())
    sock.close()


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (an exited one not yet reaped, a zombie, does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, ValueError, OverflowError):  # psutil raises ValueError, not psutil.Error, for pid <= 0
        return False


#: pyzmq's compiled send: its Python ``Socket.send`` only adds routing ids and groups, which no cbctl socket uses,
#: and costs about 0.2 us per message on every hop.
_send_frame = zmq.backend.Socket.send


def send_message(sock: zmq.Socket, packed: bytes | list[Any], flags: int = 0) -> zmq.MessageTracker | None:
    """Send what ``Message.pack`` made: one frame, or the frames of a multi-frame message, each from its own
    memory (``copy=False``); for one sent from this process's arrays, the tracker that says when zmq is done
    reading them."""
    if type(packed) is bytes:
        _send_frame(sock, packed, flags)
        return None
    track = _tracked(packed)
    tracker = sock.send_multipart(packed, flags, copy=False, track=track)
    return tracker if track else None


def _tracked(frames: list[Any]) -> bool:
    """Whether to track a multi-frame message's sending: when it is sent from memory of this process that code
    could still change (a ``memoryview`` of an array); received frames forwarded as they are cannot be tracked
    (zmq refuses) and need not be: nobody changes them."""
    return any(type(f) is memoryview for f in frames) and not any(type(f) is zmq.Frame for f in frames)


def receive_rest(sock: zmq.Socket, header: bytes) -> list[Any] | Oversized:
    """The frames of a multi-frame message whose ``header`` was just received: the values' frames are received
    into zmq's memory (``copy=False``), not copied into ``bytes``. On a socket with a ``MAXMSGSIZE`` (servers':
    ``limits.backstop_bytes``), that bound is the whole message's too: past it, the rest of the message is
    received and dropped frame by frame, and an ``Oversized`` stands for it (zmq checks each frame alone)."""
    frames: list[Any] = [header]
    bound = sock.getsockopt(zmq.MAXMSGSIZE)
    total = len(header)
    while sock.getsockopt(zmq.RCVMORE):
        frame = sock.recv(copy=False)
        size = len(frame)
        if size <= shared.HANDLE_MAX_BYTES:  # a value's bytes are never this small: a handle, or a value's body
            handle = shared.as_handle(frame)
            if handle is not None:  # it stands for its value, which the bound is about
                frame, size = handle, handle.size
        if bound < 0:
            frames.append(frame)
            continue
        total += size
        if total <= bound:
            frames.append(frame)
            continue
        _release_taken([*frames, frame])  # over the bound: let go of what came, and of each frame still to come
        frames.clear()
        while sock.getsockopt(zmq.RCVMORE):
            frame = sock.recv(copy=False)
            handle = shared.as_handle(frame)
            total += len(frame) if handle is None else handle.size
            _release_taken([handle])
        return Oversized(header, total, bound)
    return frames


def _release_taken(frames: list[Any]) -> None:
    """Unlink the ``TAKE`` segments of a message that is dropped unread: this receiver was to unlink them."""
    shared.release([f.name for f in frames if type(f) is shared.Handle and not f.keep])


def receive_message(sock: zmq.Socket, flags: int = 0) -> bytes | list[Any]:
    """One message from a socket whose messages have no envelope (PULL, DEALER): a frame, or a list."""
    first = sock.recv(flags)
    return receive_rest(sock, first) if first[:1] == MULTIPART_MARK else first


def receive_routed(sock: zmq.Socket, flags: int = 0) -> list[Any]:
    """One message from a ROUTER: ``[*envelope, message]``, the message a frame or a list (as ``recv_multipart``
    gives, but with a large value's frames left in zmq's memory)."""
    first = sock.recv(flags)
    if first[:1] == MULTIPART_MARK:  # no envelope (a PULL socket): the message comes first
        return [receive_rest(sock, first)]
    return _receive_after(sock, [first])


def _receive_after(sock: zmq.Socket, parts: list[Any]) -> list[Any]:
    """``parts`` (the envelope so far) and the rest of the message: envelope frames, then the message, a frame or
    the frames of a multi-frame message together."""
    while sock.getsockopt(zmq.RCVMORE):
        frame = sock.recv()
        if frame[:1] == MULTIPART_MARK:
            parts.append(receive_rest(sock, frame))
            break
        parts.append(frame)
    return parts


def receive_from_router(sock: zmq.Socket, flags: int = 0) -> list[Any]:
    """``receive_routed`` for a ROUTER socket, with one ``RCVMORE`` question fewer (about 0.8 us each, on every
    call the scheduler receives): a ROUTER delivers a peer's identity and then at least one frame, so the frame
    after the identity is received without asking. Anything else is as ``receive_routed``."""
    identity = sock.recv(flags)
    frame = sock.recv()
    if frame[:1] == MULTIPART_MARK:
        return [identity, receive_rest(sock, frame)]
    return _receive_after(sock, [identity, frame])  # the hot path: [identity, message], one RCVMORE question


def new_socket(context: zmq.Context, kind: int) -> zmq.Socket:
    sock = context.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_FIRST_MS)  # peers start together: see the constant's comment
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_MAX_MS)
    sock.setsockopt(zmq.SNDHWM, SOCKET_HWM)
    sock.setsockopt(zmq.RCVHWM, SOCKET_HWM)
    return sock


class PeerSockets:
    """Outgoing PUSH sockets by address, opened on first use; the least recently used is closed past
    a bound so a long-lived executor does not collect sockets to every client that ever called it.
    Sends never block: a peer that is gone or not draining costs a counted drop, not a stuck loop."""

    def __init__(self, context: zmq.Context, limit: int = MAX_PEER_SOCKETS, shares: bool = True) -> None:
        self._context = context
        self._limit = limit
        self._sockets: collections.OrderedDict[str, zmq.Socket] = collections.OrderedDict()
        # large values go to peers of this host through shared memory (wire/shared.py); a forwarder (the
        # scheduler, shares=False) sends on the handles it received, and the values behind them to other hosts
        self._shares = shares
        self.dropped = 0
        self.sent = 0  # messages handed to zmq: tests count messages per call with it
        self.sent_bytes = 0  # of one-frame messages (and headers: not the values sent out of band), as well
        self.sent_out_of_band = 0  # bytes of values sent as frames of their own (see wire/frames.py)
        # multi-frame messages zmq may still be reading from their senders' memory
        self.unsent: list[zmq.MessageTracker] = []

    def send(self, address: str, frame: bytes | list[Any]) -> bool:
        """Send ``frame`` (what ``Message.pack`` made) to ``address``; False if it was dropped."""
        sock = self._sockets.get(address)
        if sock is None:
            sock = new_socket(self._context, zmq.PUSH)
            try:
                auth.connect(sock, address)
            except (zmq.ZMQError, TypeError) as exc:  # a reply address from a frame: it may be anything
                sock.close()
                self.dropped += 1
                _dropped_sends.warning("dropped a message to %r: not an address zmq can connect to (%s)",
                                       address, exc)
                return False
            self._sockets[address] = sock
            if len(self._sockets) > self._limit:
                _, oldest = self._sockets.popitem(last=False)
                oldest.close()
        elif len(self._sockets) > 1:
            self._sockets.move_to_end(address)
        try:
            if type(frame) is bytes:
                _send_frame(sock, frame, zmq.NOBLOCK)
                self.sent_bytes += len(frame)
            else:
                frame = shared.outgoing(frame, shared.is_local_address(address), self._shares)
                track = _tracked(frame)
                tracker = sock.send_multipart(frame, zmq.NOBLOCK, copy=False, track=track)
                self.sent_out_of_band += sum(shared.part_nbytes(f) for f in frame[1:])
                self.sent_bytes += len(frame[0])
                if track:
                    if self.unsent:
                        self.unsent = [t for t in self.unsent if not t.done]
                    self.unsent.append(tracker)
            self.sent += 1
            return True
        except zmq.Again:
            self.dropped += 1
            _dropped_sends.warning("dropped a message to %s: peer not reading", address)
            return False

    def wait_sent(self, timeout_s: float) -> bool:
        """Wait until zmq has sent every multi-frame message from its sender's memory (at most ``timeout_s``):
        an executor does so before running user code that could change an array it returned and is still being
        sent. False if some are still being sent."""
        deadline = time.monotonic() + timeout_s
        for tracker in self.unsent:
            if tracker.done:
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                tracker.wait(remaining)
            except zmq.NotDone:
                return False
        self.unsent.clear()
        return True

    def close(self, linger_s: float = 0.0) -> None:
        """Close every socket; with ``linger_s``, frames still queued get that long to leave (a stopping
        executor's last results), instead of being dropped."""
        for sock in self._sockets.values():
            if linger_s:
                sock.setsockopt(zmq.LINGER, int(linger_s * 1000))
            sock.close()
        self._sockets.clear()


def freeze_startup_heap() -> None:
    """Put everything allocated during start-up out of the garbage collector's reach (``gc.freeze``), so a
    full collection scans only what the loop allocated since rather than every module, class and function
    (about 8 ms for a server's ~20k start-up objects: a latency spike for whichever call it lands on)."""
    gc.collect()
    gc.freeze()


class Receiver:
    """A loop's receive step: every frame ready on ``sock``, waiting up to a timeout for the first.

    The wait is a blocking receive bounded by ``RCVTIMEO``, not a zmq poll: waking from a poll and then
    receiving measured about 20 us more per hop than waking inside the receive on a loaded 2-core machine
    (three such wake-ups per call; ``benchmarks/latency.py``). After the first frame, a zero-timeout poll
    (cheaper than the ``Again`` exception a non-blocking receive raises when empty) says whether more wait;
    with ``drain=False`` there is no such poll (a system call, about 1.3 us, that finds nothing in a sequential
    call's every hop): a loop that handles messages one by one anyway (the scheduler) gets one per call, and
    the next is in its next call, which returns at once when one waits. An executor drains: its ready queue
    must hold what waits (batches, stealing). Only the loop's own thread may use it, and nothing else may do
    blocking receives on the socket."""

    def __init__(self, sock: zmq.Socket, multipart: bool = False, drain: bool = True) -> None:
        self.sock = sock
        if multipart and sock.socket_type != zmq.ROUTER:
            raise ValueError("a multipart Receiver reads a ROUTER socket")
        self._recv = (lambda flags=0: receive_from_router(sock, flags)) if multipart else sock.recv
        self._multipart = multipart
        self._drain = drain
        self._poller = zmq.Poller()
        self._poller.register(sock, zmq.POLLIN)
        self._timeout_ms: int | None = None

    def receive(self, timeout_ms: int) -> list[Any]:
        """Messages in arrival order, each a frame (``bytes``) or a multi-frame message (a list, see
        ``wire/frames.py``); for ``multipart`` (a ROUTER), ``[identity, *envelope, message]`` lists; [] when none
        came."""
        poll = self._poller.poll
        if timeout_ms <= 0:
            if not poll(0):
                return []
            first = self._recv(zmq.NOBLOCK)
            if not self._multipart and first[:1] == MULTIPART_MARK:
                first = receive_rest(self.sock, first)
        else:
            if timeout_ms != self._timeout_ms:
                self.sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
                self._timeout_ms = timeout_ms
            try:
                first = self._recv()
            except zmq.Again:
                return []
            if not self._multipart and first[:1] == MULTIPART_MARK:
                first = receive_rest(self.sock, first)
        frames = [first]
        if not self._drain:
            return frames
        while poll(0):
            frame = self._recv(zmq.NOBLOCK)
            if not self._multipart and frame[:1] == MULTIPART_MARK:
                frame = receive_rest(self.sock, frame)
            frames.append(frame)
        return frames


def drain(sock: zmq.Socket) -> list[list[Any]]:
    """Every message ready on ``sock`` now, without blocking (loops wake once per batch, not per message), each
    as ``[*envelope, message]`` (``[message]`` on sockets without envelopes), the message a frame or the list of
    a multi-frame message's frames."""
    ready = []
    while True:
        try:
            ready.append(receive_routed(sock, zmq.NOBLOCK))
        except zmq.Again:
            return ready
