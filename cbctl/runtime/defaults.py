"""Every tunable of the runtime, with its unit and the reason for its value.

Loops and processes read these at start; tests override them through arguments, never by patching.
"""

from __future__ import annotations

#: Wire protocol version, checked once per frame at unpack.
PROTOCOL_VERSION = 1

#: Default cluster directory when $CBCTL_HOME is unset.
DEFAULT_HOME = "~/.cbctl"

#: Seconds between executor status reports (Cloudburst reports about once a second).
STATUS_INTERVAL_S = 1.0

#: Seconds `cbctl up` waits for every process to report ready before giving up.
STARTUP_TIMEOUT_S = 60.0

#: Seconds `cbctl down` gives the cluster to stop warmly before killing what is left.
SHUTDOWN_TIMEOUT_S = 20.0

#: Seconds a store client waits for one reply before retrying (writes are merges, so retries are safe).
STORE_REQUEST_TIMEOUT_S = 2.0

#: Total seconds a store client keeps retrying one request (covers a store restart by the supervisor).
STORE_RETRY_BUDGET_S = 15.0

#: Seconds a control request to a scheduler waits before the client calls the cluster unreachable.
CONTROL_TIMEOUT_S = 15.0

#: Default timeout of a call from the CLI, in seconds (the Python API defaults to waiting forever).
CLI_CALL_TIMEOUT_S = 60.0

#: Batch-durability fsync interval of the write-ahead log, in seconds (the issue fixes 50 ms).
WAL_BATCH_INTERVAL_S = 0.05

#: Log size in bytes past which the store compacts the log into a snapshot.
WAL_COMPACT_BYTES = 64 * 1024 * 1024

#: Supervisor restart backoff: first delay and cap, in seconds, doubled per consecutive crash.
RESTART_BACKOFF_FIRST_S = 0.2
RESTART_BACKOFF_MAX_S = 5.0

#: Restarts of one process allowed per minute before the supervisor gives up on it.
RESTARTS_PER_MINUTE = 10

#: Outgoing zmq sockets to peers (clients, executors) kept open per process; the oldest is closed past this.
MAX_PEER_SOCKETS = 256

#: High-water mark (messages) on sockets; sends never block past it, they fail and are counted.
SOCKET_HWM = 100_000

#: Longest ipc socket path the OS accepts (sun_path is 108 bytes on Linux, minus the terminator).
MAX_IPC_PATH = 100

#: Prefix of store keys the runtime reserves for itself (registry, call results).
RESERVED_PREFIX = "__cb/"
