"""Every message that crosses a process boundary, one small typed class per kind: the protocol's catalogue.

How a message is packed, unpacked and checked is ``frames.py`` (its names are importable from here too). User
values inside messages are already encoded (see ``serialization``): ``EncodedValue`` fields hold bytes, or for a
large value ``Frames`` that travel as frames of their own (see ``frames.py``); unpacking never runs user code.
A field's annotation is its check at unpack: a type, or a checked value (``Pid``, ``Address``, ...).
Each section below holds a range of kinds, so a reader sees that no number is used twice.
"""

from __future__ import annotations

from dataclasses import field
from typing import Annotated, Any

# The machinery's names stay importable from here (noqa: F401), as before frames.py was split off.
from cbctl.runtime.wire.frames import (
    EXECUTOR_ID,  # noqa: F401
    MAX_ADDRESS_CHARS,  # noqa: F401
    MAX_COUNT,
    MAX_PID,  # noqa: F401
    VERSION_REFUSAL_KIND,  # noqa: F401
    Address,
    AddressOrNone,
    Count,
    EncodedValue,
    ExecutorId,
    ExecutorIdOrNone,
    ExecutorType,
    Frames,  # noqa: F401
    HostName,
    Message,
    Pid,
    Role,
    Utilization,
    Valid,
    Version,
    all_kinds,  # noqa: F401
    is_address,  # noqa: F401
    is_executor_id,  # noqa: F401
    message,
    unpack,  # noqa: F401
    version_refusal,  # noqa: F401
)

#: A count, or -1 for "no count: keep what you have" (``NodeAck.executors``).
CountOrKeep = Annotated[int, Valid(lambda v: -1 <= v <= MAX_COUNT, "a count (0 to 2**31-1) or -1")]

#: The entry of a ``DagTrigger``'s (and a store-made ``CallRequest``'s) extras that says which call of a chain of
#: storage-triggered calls this is (see store/triggers.py): the executor passes it to the store with its puts.
TRIGGER_DEPTH_EXTRA = "trigger_depth"


@message(10)
class GetRequest(Message):
    """Read several keys at once; the reply carries one lattice (wire form) or None per key."""

    req_id: int
    keys: list[str]


@message(11)
class GetResponse(Message):
    """``ephemeral``: the positions in ``lattices`` of ephemeral values, which executor caches do not hold."""

    req_id: int
    lattices: list[Any]
    ephemeral: list[int] = field(default_factory=list)


@message(12)
class PutRequest(Message):
    """Merge ``lattice`` (wire form) into ``key``; acknowledged once it is in the write-ahead log."""

    req_id: int
    key: str
    lattice: list[Any]
    #: the storage-triggered call this put is made by is call ``trigger_depth`` of its chain (0: not triggered)
    trigger_depth: Count = 0


@message(13)
class DeleteRequest(Message):
    """Write a tombstone for ``key`` that wins or loses by last-writer-wins order."""

    req_id: int
    key: str
    timestamp: int
    writer: str


@message(14)
class ListKeysRequest(Message):
    req_id: int
    prefix: str


@message(15)
class ListKeysResponse(Message):
    req_id: int
    keys: list[str]


@message(16)
class Ack(Message):
    """A write (put, delete, subscribe) is durable per the store's policy and applied. ``superseded_by``: for a
    last-writer-wins write that did not win the merge, the timestamp of the version that did (0: it won)."""

    req_id: int
    superseded_by: int = 0


@message(17)
class ErrorResponse(Message):
    """A request failed; ``error_type`` names a ``CbctlError`` subclass."""

    req_id: int
    error_type: str
    message: str


@message(18)
class StoreStatsRequest(Message):
    req_id: int


@message(19)
class StoreStatsResponse(Message):
    req_id: int
    stats: dict[str, Any]


@message(20)
class SubscribeRequest(Message):
    """An executor cache holds ``keys`` and wants every merge of them pushed to ``address``."""

    req_id: int
    subscriber: str
    address: Address
    keys: list[str]
    unsubscribe: bool = False


@message(21)
class KeyUpdate(Message):
    """Pushed by the store to subscribers: the merged lattice of a key after a write."""

    key: str
    lattice: list[Any]


@message(22)
class StoreEpoch(Message):
    """Sent to an executor by its own Redis pub/sub reader (redis_store/pushes.py) when pushes may have been
    missed (the connection dropped): a new ``epoch`` makes the executor drop its cache, as a restarted embedded
    store's new epoch does."""

    epoch: str


@message(28)
class EphemeralPut(Message):
    """Merge ``lattice`` (an LWW value, wire form) into ``key``'s ephemeral value, in the store's memory only
    (never logged); it lives ``ttl_s`` seconds from this put (see ``store/ephemeral.py``)."""

    req_id: int
    key: str
    lattice: list[Any]
    ttl_s: float
    trigger_depth: Count = 0  # as PutRequest's


@message(29)
class KeyDropped(Message):
    """Pushed by the store to the subscribers of ``key`` when it becomes ephemeral, or takes a large value (one
    in frames of its own, which is not pushed to every cache): drop the cached copy (and the subscription, which
    the store has removed); the next read asks the store."""

    key: str


# --- control: clients and the supervisor talking to a scheduler --------------------------------------


@message(30)
class RegisterFunction(Message):
    """``code`` is the cloudpickled function or class; ``options``: gpu, batching, is_class, init_args."""

    req_id: int
    name: str
    code: bytes
    options: dict[str, Any]


@message(31)
class RegisterDag(Message):
    req_id: int
    name: str
    functions: list[str]
    edges: list[list[str]]
    options: dict[str, Any] = field(default_factory=dict)


@message(36)
class Deploy(Message):
    """A deploy file's functions and DAGs, registered as one step: no call placed meanwhile sees some of them new
    and others old. ``functions``: ``[name, code, options]`` each (as ``RegisterFunction``); ``dags``: ``[name,
    functions, edges, options]`` each (as ``RegisterDag``)."""

    req_id: int
    functions: list[list[Any]]
    dags: list[list[Any]]


@message(32)
class ListRequest(Message):
    req_id: int


@message(33)
class RemoveRequest(Message):
    req_id: int
    name: str


@message(34)
class ClusterInfoRequest(Message):
    """Ask a scheduler for what it knows: executors, statuses, policy state, metrics."""

    req_id: int


@message(35)
class ControlResponse(Message):
    """Reply to any control request: ``payload`` on success, else ``error_type`` and ``message``."""

    req_id: int
    ok: bool
    payload: Any = None
    error_type: str = ""
    message: str = ""


# --- calls: the hot path ------------------------------------------------------------------------------


@message(40)
class CallRequest(Message):
    """Client -> scheduler: call a function or a DAG.

    ``args`` is the encoded positional argument list given to every source; ``source_args`` overrides
    it per source function. ``refs`` lists store keys referenced by ``Ref`` arguments (for locality).
    """

    call_id: str
    name: str
    args: EncodedValue
    source_args: dict[str, EncodedValue]
    response_address: AddressOrNone
    store_result: bool
    consistency: str
    refs: list[str]
    extras: dict[str, Any] = field(default_factory=dict)  # the client's session (see runtime/consistency.py)
    # ids of this client's calls whose results came in since its previous request: the scheduler forgets
    # them (see runtime/retries.py); riding here costs no message of its own
    completed: list[str] = field(default_factory=list)


@message(41)
class DagTrigger(Message):
    """One edge of a DAG call, carrying the schedule so no separate schedule message is needed.

    ``locations`` maps each function of the call to the executor address chosen for it, ``versions``
    to its registered version (an executor reloads code whose version it does not hold), ``edges`` is
    the DAG's edge list. ``source`` is the upstream function ('' for the caller); ``payload`` is the
    encoded upstream result (or argument list for a source). ``extras`` carries per-call options that
    only some calls need (consistency metadata, continuation depth).
    """

    call_id: str
    dag: str
    function: str
    locations: dict[str, Address]
    versions: dict[str, int]
    edges: list[list[str]]
    source: str
    payload: EncodedValue
    response_address: AddressOrNone
    store_result: bool
    consistency: str
    extras: dict[str, Any]


@message(42)
class CallResult(Message):
    """Sink executor (or scheduler, on a failed dispatch) -> caller's response address."""

    call_id: str
    ok: bool
    value: EncodedValue
    error_type: str = ""
    message: str = ""
    traceback: str = ""
    executor_id: ExecutorIdOrNone = ""
    remote_type: str = ""  # the user exception's class name, for FunctionError
    extras: dict[str, Any] = field(default_factory=dict)  # the call's writes, for the client's session


# --- executors and schedulers -------------------------------------------------------------------------


@message(50)
class ExecutorStatus(Message):
    """Every executor -> every scheduler, about once a second, and once at start and on leaving."""

    executor_id: ExecutorId
    address: Address
    executor_type: ExecutorType
    running: bool
    pinned: list[str]
    utilization: Utilization
    queue_length: Count
    cached_keys: list[str]
    pid: Pid
    metrics: dict[str, Any]


@message(51)
class StatusAck(Message):
    executor_id: ExecutorId


@message(52)
class PinRequest(Message):
    """Scheduler -> executor: load ``function`` and keep it ready (classes are constructed now)."""

    function: str
    version: Version
    scheduler_address: Address


@message(53)
class PinResponse(Message):
    executor_id: ExecutorId
    function: str
    accepted: bool
    reason: str = ""


@message(54)
class UnpinRequest(Message):
    function: str


@message(55)
class DirectMessage(Message):
    """``cb.send(executor_id, message)``: one running function to another executor's ``cb.recv()``. ``sent_ns``
    (wall clock) scopes it to the function running there at that time; a refusal goes to ``reply_address``."""

    sender: str
    body: EncodedValue
    sent_ns: Version = 0
    reply_address: AddressOrNone = ""


@message(56)
class DirectRefused(Message):
    """The receiver of the ``DirectMessage`` sent at ``sent_ns`` refused it (its function's inbox was full):
    the sender's function, if it is the one still running, gets ``InboxFull`` from its next send or recv."""

    receiver: str
    sent_ns: Version
    reason: str


@message(57)
class CallAborted(Message):
    """A step of a DAG call failed and the caller has its error: executors that may hold the call's partial
    joins (upstream results waiting for a failed branch that will never come) drop them now, not at expiry."""

    call_id: str


# --- supervisor ----------------------------------------------------------------------------------------


@message(60)
class ProcessReady(Message):
    """A child -> the supervisor, once it is serving (or ``error`` if it could not start)."""

    role: Role
    index: Count
    pid: Pid
    address: AddressOrNone
    error: str = ""


@message(61)
class SupervisorRequest(Message):
    """CLI -> supervisor: ``command`` is status, stop or scale; ``arguments`` depends on it, and may hold
    ``START_BY``: unix seconds after which the supervisor ignores the request instead of carrying it out (its
    sender gave up waiting: a supervisor resumed after SIGSTOP must not act on a `cbctl down` nobody awaits)."""

    req_id: int
    command: str
    arguments: dict[str, Any] = field(default_factory=dict)


#: ``SupervisorRequest.arguments`` key: see the class.
START_BY = "start_by"


# --- executor departure (kinds 70-79; see executor/departure.py) ------------------------------------


@message(70)
class ExecutorLeaving(Message):
    """A departing executor -> every other executor: send nothing more to ``address``; send what was meant
    for it to ``heir_address`` ('' when it has no heir) and acknowledge with ``LeavingAck``."""

    executor_id: ExecutorId
    address: Address
    heir_address: AddressOrNone


@message(71)
class LeavingAck(Message):
    """A scheduler or executor -> a departing executor, on the socket that carried its earlier triggers
    there, so every one of them arrived before this: ``sender`` (its own address) will send nothing more."""

    sender: Address


# --- consistency: repeatable-read snapshots between executors (kinds 90-99; see runtime/consistency.py) ---


@message(90)
class VersionRequest(Message):
    """Executor -> the executor that first read ``key`` in repeatable-read call ``call_id``: send the version
    you keep for it to ``reply_to``."""

    req_id: int
    call_id: str
    key: str
    reply_to: Address


@message(91)
class VersionResponse(Message):
    """``found`` is False when no snapshot is kept (released, expired, or lost with a restart); ``lattice``
    (wire form) is None with ``found`` when the call's version is "no value"."""

    req_id: int
    found: bool
    lattice: list[Any] | None


@message(92)
class SnapshotRelease(Message):
    """The step that answered a repeatable-read call -> each executor holding snapshots for it: these calls
    ended, drop their snapshots."""

    call_ids: list[str]


# --- execution features: continuations and storage triggers (kinds 100-109) --------------------------------


@message(100)
class ContinueCall(Message):
    """Executor -> scheduler: a sink returned ``cbctl.Continue(name, *args)``; call ``name`` with ``args``
    under the same call id and response address, so the original caller receives the chain's final result.
    ``depth`` is how many hand-offs this call has made, including this one (bounded per call)."""

    call_id: str
    name: str
    args: EncodedValue
    response_address: AddressOrNone
    store_result: bool
    consistency: str
    depth: Count
    extras: dict[str, Any] = field(default_factory=dict)  # the call's extras, for its client session


@message(101)
class AddTrigger(Message):
    """Client -> scheduler: every put to a key starting with ``prefix`` calls ``function`` with (key, value);
    or, with one of ``batch`` (N keys arrived), ``window_s`` (every T s, what arrived) or ``join`` (every named
    key put), with the keys (and with ``values``, their values) that fired it (``store/triggers.py``)."""

    req_id: int
    name: str
    prefix: str
    function: str
    batch: int = 0
    window_s: float = 0.0
    join: list[str] = field(default_factory=list)
    values: bool = False


@message(102)
class ListTriggers(Message):
    req_id: int


@message(103)
class RemoveTrigger(Message):
    req_id: int
    name: str


# --- crash semantics (kinds 110-119; see runtime/retries.py) -------------------------------------------------


@message(110)
class ExecutorLost(Message):
    """The supervisor -> every scheduler, as soon as it sees an executor process die: stop placing work at
    ``address`` until a status of its restarted process comes, and re-dispatch the calls that used it."""

    executor_id: ExecutorId
    address: Address
    pid: Pid
    reason: str


@message(111)
class CallRetried(Message):
    """A scheduler -> the surviving executors of a call it dispatches again as ``attempt``: drop what an older
    attempt left waiting for its other triggers (the new attempt may place its joins elsewhere), and the older
    attempt's triggers still on their way."""

    call_id: str
    attempt: Count


# --- hosts: joined machines (kinds 120-129; see supervisor/nodes.py and supervisor/node.py) -------------------


@message(120)
class NodeHeartbeat(Message):
    """A joined host's node supervisor -> the head's supervisor, every ``NODE_HEARTBEAT_S``: the host is alive,
    and these are its executors, each ``[index, pid, address, type, state, started_at, restarts]``. The head
    judges the host by these alone (an executor's silent status may be one long call). ``leaving``: the host
    departs (`cbctl leave`); its executors have left or are leaving, as in ``cbctl scale``. ``max_executors``:
    the CPU executors the host offers the head's autoscaler (`cbctl join --max-executors N`; 0: it runs a fixed
    number)."""

    host: HostName
    node_pid: Pid
    seq: Count
    executors: list[list[Any]]
    leaving: bool = False
    max_executors: Count = 0


@message(121)
class NodeAck(Message):
    """The head's supervisor -> a node supervisor, for each heartbeat: ``accepted`` False with ``reason`` when
    the host may not (or may no longer) take part, else the head's cluster file (JSON; no key is ever in it),
    which the host keeps as its copy, so its executors see every other host's executors. ``executors``: the CPU
    executors the head's autoscaler wants the host to run (its share of the target, at most the host's
    ``max_executors``), or -1: keep the number it runs (the head does not autoscale, or the host offers nothing)."""

    seq: Count
    accepted: bool
    reason: str
    cluster_file: str
    executors: CountOrKeep = -1


@message(122)
class DescribeCluster(Message):
    """Client -> scheduler: the cluster file (the addresses a client on another machine needs, and the limits),
    answered in a ``ControlResponse``."""

    req_id: int


# --- placement by outstanding work (kinds 130-139; see scheduler/placement.py and executor/stealing.py) -----


@message(130)
class ExecutorLoad(Message):
    """Executor -> every scheduler, only when it turns idle, busy, or backlogged (a step that could run
    elsewhere waits behind the one it runs), at most once per ``LOAD_REPORT_MIN_INTERVAL_S`` (the latest state
    follows when that passes): ``load`` is the steps it holds, the running one included (0: idle). Never sent
    per call."""

    executor_id: ExecutorId
    address: Address
    pid: Pid
    load: Count
    movable: bool  # a waiting step could run on another executor (stealing.stealable): worth a thief
    last_call: str  # the call of the latest step it received: what a scheduler placed before it, it counted
    denied_by: AddressOrNone = ""  # the address of a backlogged executor that just had nothing this one could take


@message(131)
class StealHint(Message):
    """Scheduler -> an idle executor: the executor at ``victim`` has calls queued behind a running one; ask it
    for one (``StealRequest``) if you are still idle."""

    victim: Address


@message(132)
class StealRequest(Message):
    """An idle executor -> a backlogged one: hand me one queued call (a ``DagTrigger``), or say there is none
    (``NothingToSteal``)."""

    thief: Address
    executor_type: ExecutorType


@message(133)
class CallMoved(Message):
    """A victim -> every scheduler, after handing the step ``function`` of ``call_id`` to the executor at
    ``to``: a scheduler that dispatched the call dispatches it again if that executor dies, not the victim."""

    call_id: str
    function: str
    source: Address  # the victim's address
    to: Address


@message(134)
class NothingToSteal(Message):
    """A backlogged executor -> a thief, when it has no queued call that can move (another thief took it, or
    it ran it meanwhile): the thief reports itself idle again, so no scheduler keeps counting it busy."""

    victim: Address


# --- autoscaling (kinds 140-149; see supervisor/autoscaler.py and supervisor/autoscaling.py) -----------------


@message(140)
class LoadReport(Message):
    """Scheduler -> the head's supervisor (to its ready socket), every ``AUTOSCALE_REPORT_INTERVAL_S``, and at once
    when a call parks for lack of a CPU executor while the cluster autoscales: what the autoscaler decides from.
    ``executors`` is, per live CPU executor the scheduler hears from, ``[utilization, queue_length]`` from its
    latest status; ``parked`` the calls this scheduler holds because no CPU executor runs."""

    scheduler: str
    executors: dict[str, list[float]]
    parked: Count


@message(141)
class AutoscaleMode(Message):
    """The supervisor -> every scheduler: whether CPU executors may be started on demand (the cluster autoscales
    with MAX > 0). While they may, a CPU call that finds no executor waits for one (``AUTOSCALE_PARK_S``) instead
    of failing at once."""

    enabled: bool
