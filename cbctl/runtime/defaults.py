"""Every tunable of the runtime, with its unit and the reason for its value.

Loops and processes read these at start; tests override them through arguments, never by patching.
"""

from __future__ import annotations

#: Wire protocol version, checked once per frame at unpack.
PROTOCOL_VERSION = 1

#: Default cluster directory when $CBCTL_HOME is unset.
DEFAULT_HOME = "~/.cbctl"

#: What `cbctl up` and every cluster process create files under: directories 0700, files 0600 (the home holds
#: the cluster's keys, data and sockets: they are the user's alone).
PRIVATE_UMASK = 0o077

#: Seconds between two looks at the cluster file while `cbctl up` waits for a supervisor that does not say on a
#: pipe when it is up (``lifecycle.wait_for_cluster``; the supervisor `up` starts does, and after its line the file
#: is there at once): reading a small file 100 times a second costs nothing, and a coarser poll adds its half.
CLUSTER_FILE_POLL_S = 0.01

#: Milliseconds a zmq socket waits before it tries again to connect to a peer that is not there (yet), doubling
#: per failed try up to RECONNECT_MAX_MS (each wait plus up to RECONNECT_FIRST_MS of zmq's jitter). On ipc every
#: process of a cluster starts at once and connects before its peers have bound: with zmq's default (100 ms plus
#: up to 100 ms of jitter, every time) an executor's first tries at the store and the scheduler cost `cbctl up`
#: 30 to 280 ms of waiting, most of its children's start. A refused try is one failed syscall: 5 ms is cheap,
#: and a peer that stays away (a dead host) is still tried only every 100 ms, as zmq's default does.
RECONNECT_FIRST_MS = 5
RECONNECT_MAX_MS = 100

#: A ZAP handler logs the 1st, (N+1)th, (2N+1)th ... refused CURVE handshake: every refusal is worth knowing
#: about, but a client retrying against the port (zmq reconnects every RECONNECT_MAX_MS) must not fill the log.
ZAP_DENIAL_LOG_EVERY = 100

#: Failed CURVE handshakes after which a client stops waiting for a reply and says its keys were refused: one
#: can be a peer dying mid-handshake, but 3 in a row (zmq retries after 5, 10, 20 ms: RECONNECT_FIRST_MS) mean
#: wrong keys.
HANDSHAKE_REFUSALS_CONCLUSIVE = 3

#: Seconds between executor status reports (Cloudburst reports about once a second).
STATUS_INTERVAL_S = 1.0

#: Seconds `cbctl up` waits for every process to report ready before giving up.
STARTUP_TIMEOUT_S = 60.0

#: Seconds `cbctl down` gives the cluster to stop warmly before killing what is left.
SHUTDOWN_TIMEOUT_S = 20.0

#: Seconds an executor departing in a `cbctl scale` down gets to finish the calls it holds (`cbctl up
#: --departure-timeout S`). Past it the supervisor kills it and tells the schedulers, which dispatch its unfinished
#: calls again on the executors that stay, as after a crash: never dropped, at least once.
DEPARTURE_TIMEOUT_S = 20.0

#: Seconds each role gets to stop when the cluster failed to start (nothing ran yet, so nothing needs draining)
#: before it is killed, so `cbctl up` reports the failure promptly.
STARTUP_FAILED_STOP_S = 2.0

#: Seconds a stopping store or scheduler gives the frames it queued last (replies, the triggers of the calls it
#: dispatched while draining) to leave before its sockets close. A live peer takes them in microseconds; one that is
#: gone (an executor `cbctl down` already stopped) never does and costs this much on every stop, hence short.
STOP_LINGER_S = 0.25

#: Seconds a store client waits for one reply before retrying (writes are merges, so retries are safe).
STORE_REQUEST_TIMEOUT_S = 2.0

#: Total seconds a store client keeps retrying one request (covers a store restart by the supervisor).
STORE_RETRY_BUDGET_S = 15.0

#: Seconds a control request to a scheduler waits before the client calls the cluster unreachable.
CONTROL_TIMEOUT_S = 15.0

#: Default timeout of a call, in seconds, for ``client.call``, ``future.result()`` and ``cbctl call`` alike
#: (``timeout=None`` / a larger ``--timeout`` waits longer): long enough for any interactive call and a cold
#: function load, short enough that a call lost with a killed executor does not hang a script for ever.
CALL_TIMEOUT_S = 60.0

# --- limits (cbctl/runtime/wire/limits.py)

#: Largest serialised value (call arguments, a result, a put), in bytes, by default (``cbctl up
#: --max-message-mb``). The store holds every value in memory and an executor's cache is 64 MiB by default, so a
#: larger value could not be cached anyway; bigger data belongs in files whose paths travel instead.
MAX_MESSAGE_BYTES = 64 << 20

#: Smallest numpy array buffer or bytes value, in bytes, that travels as a zmq frame of its own instead of inside
#: its message's msgpack body (``wire/serialization.py``, ``wire/frames.py``). Below it, copying the bytes into the
#: one frame costs less than a frame's own overhead; measured with ``python -m benchmarks.bigdata --threshold`` (one
#: ipc hop, loaded 2-core machine): inline wins by about 20 us at 64 KiB, the two forms cost the same at 128 KiB,
#: and at 256 KiB inline costs milliseconds (each copy is a fresh mmap'd allocation, page faults and all).
OUT_OF_BAND_BYTES = 128 << 10

# Shared memory between the processes of one host (``wire/shared.py``).
#: Smallest buffer, in bytes, lent through a segment; smaller ones stay zmq frames. Measured with ``python -m
#: benchmarks.bigdata --threshold`` (one ipc hop, 2-core machine): a lending's syscalls (lock test, link, open,
#: flock, mmap, unlink) cost about 100 us more than a frame up to 512 KiB, the two cost the same at 1 MiB (430 us),
#: and at 4 MiB a lending takes 440 us where a frame takes 990. A call's argument crosses two hops, where a lending
#: pays earlier.
SHARED_MIN_BYTES = 1 << 20
#: A sender's pool: at most this many segments, of at most this many bytes together; past either, the least
#: recently lent is let go (unlinked: a receiver that still maps it keeps its memory until it lets go too).
POOL_MAX_SEGMENTS = 4
POOL_MAX_BYTES = 256 << 20
#: Seconds a pooled segment may go unlent before ``shared.trim`` lets it go (its memory is the sender's resident
#: memory).
POOL_IDLE_S = 30.0
#: Age, in seconds, past which a ``TAKE`` lending name nobody took is removed by ``shared.sweep``: its message was
#: lost, or waited unread in a socket's queue that long (its receiver then fails that value with a clear error).
ORPHAN_AGE_S = 600.0
#: Seconds a dead process's segments are left for a receiver to take (a process may exit right after sending).
DEAD_CREATOR_GRACE_S = 10.0

#: Seconds between the supervisor's sweeps of ``/dev/shm`` for values lent through shared memory by processes that
#: died (``wire/shared.py``): a listing of one directory, whose leftovers hold memory until removed.
SHARED_MEMORY_SWEEP_S = 5.0

#: Longest error message and traceback text, in characters, that a failed call carries to its caller (and the CLI
#: prints). A function may raise with a 50 MB message; the caller gets the head (and the traceback its head and
#: tail, where the raising line is), with a note naming the executor log that has the whole text.
MAX_ERROR_MESSAGE_CHARS = 4_000
MAX_ERROR_TRACEBACK_CHARS = 20_000

#: Seconds a replaced version of a function stays loadable, for calls dispatched before the deploy that
#: replaced it (a call runs the versions current at its dispatch). The join timeout of a DAG step (600 s) bounds
#: how long such a call can still be under way; past this its executor fails it with a clear error.
FUNCTION_VERSION_KEEP_S = 900.0

#: A running function's inbox of direct messages it has not read with ``cb.recv`` yet: at most this many
#: messages and bytes (encoded). Past either, the receiver refuses the message and the sender's function gets
#: ``InboxFull``. The bytes bound is the default largest value: one message of any allowed size fits alone.
INBOX_MAX_MESSAGES = 10_000
INBOX_MAX_BYTES = 64 << 20

#: Longest key, in UTF-8 bytes. Every key lives in the store's memory, in each cache's index, in `list_keys`
#: answers and in executors' status reports (their cached keys), so a 20 MB key costs many times its size;
#: 4 KiB is longer than any path-like name needs. Past it: ``InvalidArgument``.
MAX_KEY_BYTES = 4096

#: Bytes a server socket accepts beyond the value limit (zmq ``MAXMSGSIZE`` = limit + this) before it drops the
#: sender's connection: room for what travels next to a value in an honest frame, the largest being an executor
#: status listing 10,000 cached key names (``CACHED_KEYS_REPORTED``) and the schedule of the largest DAG.
FRAME_HEADROOM_BYTES = 16 << 20

#: Most functions in one DAG: each trigger carries the whole schedule and placing a call costs time per pair of
#: functions, so this bounds both (Cloudburst's DAGs have a handful); longer pipelines chain DAGs with
#: ``cbctl.Continue``.
MAX_DAG_FUNCTIONS = 128

#: Most edges in one DAG (every trigger carries them all): four per function on average, a dense fan-in's worth.
MAX_DAG_EDGES = 512

#: Seconds ``cbctl deploy`` lets a deploy file's import run (``--import-timeout``) before it gives up on a file
#: that hangs at import (a blocking call at module level): importing a big framework such as torch takes
#: seconds to tens of seconds on a cold disk, a minute tells a hang from a slow import.
DEPLOY_IMPORT_TIMEOUT_S = 60.0

#: Seconds between a waiting client's checks that its cluster's supervisor still runs (only while calls wait and
#: no reply arrives): once it is gone, the calls fail with ClusterNotRunning instead of hanging. A second is
#: quick next to `cbctl down` itself, and a psutil lookup per second costs nothing.
CLIENT_LIVENESS_CHECK_S = 1.0

#: Batch-durability fsync interval of the write-ahead log, in seconds (the issue fixes 50 ms).
WAL_BATCH_INTERVAL_S = 0.05

#: Log size in bytes past which the store compacts the log into a snapshot.
WAL_COMPACT_BYTES = 64 * 1024 * 1024

#: Supervisor restart backoff: first delay and cap, in seconds, doubled per consecutive crash.
RESTART_BACKOFF_FIRST_S = 0.2
RESTART_BACKOFF_MAX_S = 5.0

#: Restarts of one process allowed per minute before the supervisor gives up on it.
RESTARTS_PER_MINUTE = 10

#: Exit code of an executor that left because its memory was over ``cbctl up --executor-memory-mb`` after a call
#: (it departed gracefully, as on SIGTERM): the supervisor starts a fresh one at once, with no crash backoff, and
#: counts it under ``recycles`` (EX_TEMPFAIL: "try again", which is what the supervisor does).
EXECUTOR_RECYCLE_EXIT_CODE = 75

#: Most executors one supervisor runs: far above a machine's cores, and a bound on what a scale request (a
#: frame, on TCP from anyone holding the keys) can make it spawn.
MAX_EXECUTORS = 1024

#: Outgoing zmq sockets to peers (clients, executors) kept open per process; the oldest is closed past this.
MAX_PEER_SOCKETS = 256

#: High-water mark (messages) on sockets; sends never block past it, they fail and are counted.
SOCKET_HWM = 100_000

#: Most warning lines a server writes per second about frames it rejected (each is still counted): enough to
#: diagnose a misbehaving peer, too few for a flood of garbage to fill the disk with its log.
REJECTED_FRAME_LOG_PER_S = 10

#: Longest ipc socket path the OS accepts (sun_path is 108 bytes on Linux, minus the terminator).
MAX_IPC_PATH = 100

#: Prefix of store keys the runtime reserves for itself (registry, call results).
RESERVED_PREFIX = "__cb/"

#: Seconds of history behind the calls/s and ops/s rates schedulers and the store report (long enough to
#: smooth one-second bursts, short enough that `cbctl top` follows a load change within a few refreshes).
RATE_WINDOW_S = 5.0

#: Seconds between the counter samples those rates are computed from (matches the status interval).
RATE_SAMPLE_S = 1.0

#: Seconds between `cbctl top` refreshes by default (statuses arrive about once a second, so faster shows
#: nothing new).
TOP_INTERVAL_S = 1.0

#: Seconds a command that talks to the supervisor (`down`, `scale`) waits for it to take the request up: a
#: supervisor that has not by then (stopped with SIGSTOP, or stuck) gets a clear error instead of a hang, and
#: ignores the request if it resumes later (``messages.START_BY``); and how long one already working on a
#: request may be seen stopped before its caller gives up.
SUPERVISOR_ANSWER_TIMEOUT_S = 5.0
#: `cbctl top --sort`: executors (and functions) by utilization, by calls per second, or by name.
TOP_SORT_KEYS = ("util", "calls", "name")

#: Seconds `cbctl top` and `cbctl status` wait for the supervisor, schedulers and store to answer one
#: snapshot; short, so that a cluster going away is noticed within a refresh or two.
TOP_REQUEST_TIMEOUT_S = 3.0

#: Seconds without a status after which `cbctl top` calls a live executor "silent".
TOP_SILENT_AFTER_S = 5.0

#: Most calls of a ``batching=True`` function an executor hands to one invocation (``cbctl up --max-batch``).
#: Cloudburst's GPU fork batches up to 10: enough to fill a model's forward pass, small enough that the first
#: caller of a batch does not wait long for the last.
MAX_BATCH = 10

#: Most ``cbctl.Continue`` hand-offs one call may make before it fails with ``ContinuationDepthExceeded``
#: (``cbctl up --max-continuations``); bounds a runaway cycle of continuations to a few ms of work.
MAX_CONTINUATIONS = 32

#: Seconds the store waits for a storage-triggered call to finish before it sends the call again (the
#: at-least-once retry); long, so a slow function is rarely run twice, short enough to recover a call lost
#: with a restarted scheduler or executor within a minute.
TRIGGER_RETRY_S = 30.0

#: Sends of one storage-triggered call (the first and the retries) before the store gives up on it.
TRIGGER_MAX_ATTEMPTS = 5

#: Triggered calls the store tracks while they run; past this the oldest is forgotten (counted as
#: ``trigger_dropped``) so a cluster with no live scheduler cannot grow the store's memory without bound.
TRIGGER_OUTBOX_LIMIT = 100_000

#: Seconds an ephemeral value (``cb.put(key, value, durable=False)``) lives when its put names no ``ttl``:
#: long enough for the step that reads a map task's partial result to run, short enough that forgotten
#: intermediate data leaves the store's memory within minutes.
EPHEMERAL_TTL_S = 300.0

#: Longest ``ttl`` an ephemeral put may ask for (a day): longer-lived data belongs in a durable put.
EPHEMERAL_MAX_TTL_S = 86_400.0

#: Bytes of ephemeral values the store node holds at most; a put past it fails
#: with ``StoreFull`` instead of evicting someone's intermediate result or growing without bound.
EPHEMERAL_MAX_BYTES = 1 << 30

#: Shortest ``window`` a trigger may have: the store's loop wakes at least every 100 ms, so a shorter window
#: would not fire on time anyway.
TRIGGER_MIN_WINDOW_S = 0.1

#: Most keys a ``join`` trigger may name, and the largest ``batch``: bounds what one trigger keeps in memory.
TRIGGER_MAX_JOIN_KEYS = 10_000
#: Most storage-triggered calls in one chain (a put fires call 1, a put that call makes fires call 2, ...),
#: `cbctl up --max-trigger-depth N`. A function that writes under its own watched prefix is a loop (one ran
#: 21,870 times in 5 s); continuations have the same kind of bound (MAX_CONTINUATIONS). Past it the put is
#: stored but fires nothing, and the store logs an error and counts it for `cbctl trigger ls`.
MAX_TRIGGER_DEPTH = 16

# --- placement policy (scheduler/policy.py); each can be set per cluster with `cbctl up --policy KEY=VALUE`

#: Reported utilization (busy time / wall time) above which an executor goes into backoff; Cloudburst's 0.70
#: leaves headroom so a queue does not build before calls move elsewhere.
POLICY_BACKOFF_UTILIZATION = 0.70

#: Seconds an executor stays in backoff after its last hot status (Cloudburst's 5 s: enough to drain a queue).
POLICY_BACKOFF_WINDOW_S = 5.0

#: Seconds of call start times kept per executor (Cloudburst's running_counts window); ties between equally
#: good executors go to the one with the fewest calls in this window.
POLICY_CALL_WINDOW_S = 5.0

#: Utilization under which every location of a scaled-out function must stay before an extra pin is dropped:
#: well under the backoff threshold, so a function does not flap between scale-out and scale-in.
POLICY_SCALE_IN_UTILIZATION = 0.20

#: Seconds a scaled-out function's locations must stay under that utilization before one extra pin is dropped
#: (then one more per policy update); long enough to ride out a pause between bursts.
POLICY_SCALE_IN_CALM_S = 10.0

#: Seconds between the policy's periodic updates in a scheduler (expire backoff and call times, rebuild key
#: locations, scale out and in); one status interval, as nothing changes faster than statuses arrive.
POLICY_UPDATE_INTERVAL_S = 1.0

#: Seconds a pin request may stay unanswered before the policy gives up on it and may place it elsewhere.
POLICY_PIN_TIMEOUT_S = 5.0

#: Seconds after a refused pin before the same executor is asked for the same function again.
POLICY_PIN_RETRY_S = 10.0

#: Seconds without a status after which an executor is preferred only when nothing fresher can run a call:
#: executors report once a second, so a longer silence means its one thread is stuck in a long call.
POLICY_STALE_S = 2.5

#: Seconds without a status after which an executor gets no calls at all, and four times this after which
#: the policy forgets it (a crashed executor that the supervisor could not restart).
POLICY_SILENCE_S = 5.0

#: Seconds after a scheduler starts, or learns of a DAG from the registry, before its timer pins DAG functions
#: that no executor reports: executors report their pins within a status interval, so a restarted scheduler,
#: or one that did not register the DAG, waits for them instead of pinning a second time.
POLICY_START_GRACE_S = 2.0

#: The placement policy a scheduler runs unless `cbctl up --policy placement=...` says otherwise: "outstanding"
#: (cbctl's: an idle executor first, then the fewest calls outstanding; cbctl/runtime/scheduler/placement.py) or
#: "cloudburst" (Cloudburst's: locality, then the fewest calls placed in the last POLICY_CALL_WINDOW_S, with
#: backoff from utilization reports; cbctl/runtime/scheduler/policy.py). See the README, "Placement".
POLICY_PLACEMENT = "outstanding"

#: The values ``placement`` may take.
POLICY_PLACEMENTS = ("outstanding", "cloudburst")

# --- load reports and work stealing (cbctl/runtime/scheduler/placement.py, cbctl/runtime/executor/stealing.py)

#: Seconds per load report (ExecutorLoad) of one executor, on average. An executor reports when it turns idle,
#: busy or backlogged; under a stream of short calls it flips thousands of times a second, so beyond this rate
#: flips are folded into one report of the state when the next is allowed. 10 ms: far under the 1 s status
#: interval, yet at most 100 reports a second per executor for a scheduler to read.
LOAD_REPORT_MIN_INTERVAL_S = 0.01

#: Seconds a scheduler assumes a step may take to reach its executor and the executor's load report to come back
#: (a report folded by the rate above comes up to 10 ms late): a report counts the steps placed within this
#: window on top of the executor's own count, unless their calls are known finished.
LOAD_REPORT_WINDOW_S = 0.02

#: Load reports an executor may send at once before the rate above applies: a call's busy and idle edges and
#: a steal's, so that a burst of calls after a quiet spell is reported as it happens, not 10 ms late.
LOAD_REPORT_BURST = 4

#: Seconds an executor that asked a backlogged peer for a call (StealRequest) ignores further hints, so two
#: hints in a row do not bring it two calls; the peer answers within a step boundary or a `cb.get`, or not at all.
STEAL_WAIT_S = 0.2

#: Steps an executor keeps in its step records when $CBCTL_RECORD_STEPS is set (tests and benchmarks only).
STEP_RECORDS_KEPT = 100_000

# --- executor departure (cbctl/runtime/executor/departure.py)

#: Seconds a departing executor waits for every scheduler and peer executor to acknowledge that it is leaving
#: (after which no trigger can still be on its way to it); a peer that died cannot answer, hence the bound.
DEPARTURE_ACK_TIMEOUT_S = 10.0

#: Seconds the last sends of a stopping process (results, hand-overs) may take to leave its sockets.
DEPARTURE_LINGER_S = 2.0

#: Seconds a client remembers a write its calls (or its puts) made, sending it with its next calls so no
#: executor cache serves that client an older version (read-your-writes across calls). Pushes from the store
#: reach every subscribed cache in well under a millisecond; this covers a late one by a wide margin.
SESSION_HORIZON_S = 5.0

#: Most recent writes a client remembers for read-your-writes (the oldest are forgotten first); each call
#: carries them all (about 30 bytes each), so this bounds what a write-heavy client adds to every call.
SESSION_MAX_KEYS = 256

#: Seconds an executor keeps a repeatable-read snapshot whose call never released it (a branch of a failed
#: DAG, a lost release): as long as a DAG step may wait for its triggers, after which the call is dead anyway.
SNAPSHOT_TTL_S = 600.0

#: Seconds an executor waits for another executor to send a repeatable-read version it holds; that executor
#: answers between the function runs, so this must outlast a long function upstream.
VERSION_FETCH_TIMEOUT_S = 30.0

#: Most cached keys an executor lists in each status (most recently used first), for the scheduler's
#: locality; bounds the status size of an executor caching many small values.
CACHED_KEYS_REPORTED = 10_000

# --- crash semantics: calls whose executor or scheduler died (cbctl/runtime/retries.py, README "When a process dies")

#: Dispatches of one call (the first and the retries after its executor died) before its caller gets
#: ``CallLost``: one crash is survived twice over, while a function that kills its executor every time (an
#: ``os._exit``, a segfaulting extension) fails after three executors' worth of damage instead of looping.
CALL_MAX_ATTEMPTS = 3

#: Seconds a scheduler remembers a call it dispatched (to re-dispatch it if an executor it used dies) when the
#: caller never reports it done; clients report finished calls on their next request, so this only bounds the
#: calls of clients that went quiet. A call still running after this is no longer retried on a crash.
IN_FLIGHT_MAX_AGE_S = 60.0

#: Most calls a scheduler remembers in flight; past it the oldest are forgotten first (memory bound for
#: callers that never report: triggered calls, clients that make one call and close).
IN_FLIGHT_LIMIT = 100_000

#: Seconds a call that must be (re-)dispatched while no executor can take it waits for one to report (a
#: restarted executor reports within about a second of its start; a restarted scheduler hears every executor
#: within a status interval) before its caller gets the error.
DISPATCH_WAIT_S = 5.0

#: Seconds after its start during which a scheduler parks calls it cannot place yet instead of failing them:
#: it learns the executors from their statuses, which come once a second.
SCHEDULER_WARMUP_S = 3.0 * STATUS_INTERVAL_S

#: Seconds between a client's checks of the cluster file for a restarted scheduler, made only while it has
#: calls waiting longer than this: a restarted scheduler forgot the calls it had not dispatched, so the client
#: sends them again (same call ids: the scheduler ignores those it already has).
CLIENT_RESEND_CHECK_S = 0.5

#: Seconds a command that found a crashed cluster (its supervisor gone) waits for the orphans it killed to be
#: gone, so that `cbctl up` in the same home never meets one still holding the store's log or a socket.
STALE_KILL_WAIT_S = 5.0

#: Keys a writer (each client and executor) remembers a newer timestamp for, after a write of it lost to that
#: version (``writer_clock.py``): each entry is a key and an int; a forgotten key costs one retried write.
WRITER_CLOCK_KEYS = 10_000

#: Seconds between a supervisor's checks that its cluster file is intact (it rewrites one that was removed or
#: damaged), and how long a command that finds the file so, with a live supervisor holding the home, waits for the
#: rewrite before saying so (a few checks' worth: the supervisor may be busy starting or stopping processes).
CLUSTER_FILE_CHECK_S = 1.0
CLUSTER_FILE_REPAIR_WAIT_S = 3.0

# --- hosts (``cbctl join``) ------------------------------------------------------------------------------------

#: Seconds between a node supervisor's heartbeats to the head. Small next to NODE_LOST_AFTER_S, so a few lost
#: or late heartbeats (a busy head, a retransmitted packet) never look like a lost host.
NODE_HEARTBEAT_S = 0.5

#: Seconds without a heartbeat after which the head declares a joined host lost and has its calls dispatched
#: again elsewhere; a lost host is detected within this plus one supervisor tick (0.1 s). Long enough to ride out
#: a link that drops for 2 s: TCP retransmits what was sent meanwhile with a doubling timeout (0.2, 0.4, 0.8,
#: 1.6 s), so the first heartbeat after such a drop can arrive about 3.5 s after the one before it. Short enough
#: that a dead machine's calls move on within seconds.
NODE_LOST_AFTER_S = 5.0

#: Seconds `cbctl join` waits for the head to answer before it says the head is unreachable.
JOIN_TIMEOUT_S = 15.0

# --- autoscaling (cbctl/runtime/supervisor/autoscaler.py); `cbctl up --autoscale MIN:MAX`, and each can be set with
# `--policy autoscale_NAME=VALUE` (the names below without AUTOSCALE_, lower case)

#: Executors' worth of running work each CPU executor should carry: the autoscaler wants
#: ``busy / target_utilization + queued + parked`` executors. Cloudburst's backoff threshold (0.70: its policy,
#: ``placement=cloudburst``, steers calls away from an executor past it), leaving headroom so that a queue does
#: not build before an executor is added.
AUTOSCALE_TARGET_UTILIZATION = 0.70

#: Seconds a need above the current size must last, in every report, before executors are added: two reports in
#: a row (schedulers report every second), so one busy status interval, or a burst the executors drain within it,
#: adds nothing. Measured with benchmarks.autoscale: with 2 s the first executors came 4.3 s into a burst (the
#: figures lag the load by up to two intervals: the executors' status, then the schedulers' report), and every
#: call sent meanwhile queued on the executors that ran; 1 s saves one of those seconds.
AUTOSCALE_UP_WINDOW_S = 1.0

#: Seconds every report must show a need below the current size before idle executors are removed (the size kept
#: is the highest need seen in the window, so a load oscillating faster than this never removes anything). An
#: executor starts in about 0.1 s from the forkserver, so a wrong removal is cheap; 30 s rides out the pauses of a
#: bursty client and is Knative's scale-to-zero grace period.
AUTOSCALE_DOWN_WINDOW_S = 30.0

#: Seconds after a change during which reports are not acted on: a new executor reports its first status within
#: ~0.1 s of its start, but busy and queue figures describe the cluster after the change only once every executor
#: has reported a full status interval (1 s) and the schedulers have sent their next report (1 s).
AUTOSCALE_SETTLE_S = 2.0

#: Seconds without a report from any scheduler after which the autoscaler decides nothing (it never shrinks a
#: cluster it cannot see).
AUTOSCALE_STALE_S = 5.0

#: Seconds between the schedulers' load reports to the supervisor (one status interval: nothing changes faster).
AUTOSCALE_REPORT_INTERVAL_S = 1.0

#: Seconds a call waits in a scheduler for an executor to start when the cluster autoscales and none runs (scale
#: from zero): an executor starts in about 0.1 s; the rest covers a loaded machine, and a call that waits this
#: long fails with NoExecutorAvailable rather than hang.
AUTOSCALE_PARK_S = 30.0

#: Bytes of memory one CPU executor is budgeted (its interpreter with the runtime, ~60 MiB resident, plus its
#: default 64 MiB cache and room for a function's working set) when the default MAX is derived from the machine.
AUTOSCALE_EXECUTOR_BUDGET_BYTES = 256 << 20

# --- the Redis store (`cbctl up --store redis://...`, cbctl/runtime/redis_store/) ---------------------------

#: Seconds between a Redis store client's retries of a request Redis did not answer (restarting, loading its
#: AOF, failing over), doubling from the first to the last; the whole wait is bounded by STORE_RETRY_BUDGET_S.
REDIS_RETRY_FIRST_S, REDIS_RETRY_MAX_S = 0.01, 0.5
#: Seconds an executor's pub/sub reader waits for data before it checks whether it should stop.
REDIS_PUSH_POLL_S = 0.2
#: Seconds between the pub/sub reader's reconnect attempts, doubling from the first to the last: short, since
#: the executor's cache is dropped (and every read goes to Redis) until it is back.
REDIS_RECONNECT_FIRST_S, REDIS_RECONNECT_MAX_S = 0.02, 0.5
#: How long `trigger add` waits for the trigger relay to watch the new prefix (seconds), and how often it looks
#: (it is a control request: a few milliseconds of polling cost nothing on the call path).
TRIGGER_WATCH_TIMEOUT_S, TRIGGER_WATCH_POLL_S = 10.0, 0.005
#: Seconds between the trigger relay's writes of its counters (only when they changed): store_stats() on Redis
#: shows trigger counters at most this old.
TRIGGER_RELAY_STATS_S = 1.0
#: Seconds one wait of the trigger relay for a push may block its loop (results and retries are served between).
TRIGGER_RELAY_POLL_S = 0.05

