"""Bringing a cluster up and down from the command line's side: spawn the supervisor, wait for the
cluster file, and on the way down wait until every process of the cluster is gone."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cbctl.errors import CbctlError, ClusterAlreadyRunning, ClusterNotRunning, InvalidArgument
from cbctl.runtime import cluster, home_lock
from cbctl.runtime.defaults import (
    CLUSTER_FILE_POLL_S,
    DEPARTURE_TIMEOUT_S,
    JOIN_TIMEOUT_S,
    MAX_BATCH,
    MAX_CONTINUATIONS,
    MAX_EXECUTORS,
    MAX_MESSAGE_BYTES,
    MAX_TRIGGER_DEPTH,
    SHUTDOWN_TIMEOUT_S,
    STARTUP_TIMEOUT_S,
    SUPERVISOR_ANSWER_TIMEOUT_S,
)
from cbctl.runtime.supervisor.spec import ClusterSpec, count_gpus, default_max_executors

if TYPE_CHECKING:
    import psutil

    from cbctl.runtime.supervisor.node import JoinSpec

# psutil and zmq (through wire/auth) are imported where they are used: `cbctl up` of an ipc cluster in a fresh
# home uses neither before the supervisor runs, and the command's imports are the first part of every start.

LOOPBACK_HOSTS = ("localhost", "[::1]")  # and every 127.x.y.z (see is_loopback)
_LISTEN = re.compile(r"tcp://(?P<host>\[[0-9a-fA-F:.]+\]|[^:/\[\]]+)(?::(?P<port>[0-9]+))?")
#: Highest ``--max-message-mb``: msgpack carries at most 4 GiB in one bytes value, and a value travels inside a
#: frame with room to spare (``FRAME_HEADROOM_BYTES``).
MAX_MESSAGE_MB_CEILING = 2048
#: ``--durability``: when the store fsyncs its log (every write, at most every 50 ms, never)
DURABILITY_MODES = ("always", "batch", "none")


def unusable_home(home: Path, exc: OSError) -> InvalidArgument:
    """The error for a cluster directory the OS refuses (``exc``), saying what to point CBCTL_HOME at."""
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        return InvalidArgument(f"the cluster directory {home} is (or is inside) a file: point CBCTL_HOME or --home "
                               "at a directory")
    return InvalidArgument(f"cannot use {home} as the cluster directory ({exc.strerror}): point CBCTL_HOME or "
                           "--home at a directory you can write")


def claim_home(home: Path) -> int:
    """Take the home's lock for a new cluster before anything in the home is touched (see ``home_lock``), or
    refuse at once, naming the process that holds it. Returns the lock's descriptor: ``start_supervisor`` hands
    it on, and the supervisor holds it for its life."""
    try:
        with private_umask():
            home.mkdir(parents=True, exist_ok=True, mode=0o700)
            return home_lock.acquire(cluster.lock_path(home))
    except home_lock.LockHeld as held:
        raise ClusterAlreadyRunning(f"a cluster is already running in {home} (supervisor pid {held.pid or '?'}, "
                                    "or a `cbctl up` starting it): stop it with `cbctl down`, or use another "
                                    "CBCTL_HOME") from None
    except OSError as exc:
        raise unusable_home(home, exc) from None


def release_home(lock_fd: int) -> None:
    """Close `cbctl up`'s copy of the home's lock (the supervisor it started holds the lock on)."""
    home_lock.release(lock_fd)


def check_not_running(home: Path, holding_lock: bool = False) -> str:
    """Refuse a second cluster in one home; clean a crashed one's file (``holding_lock``: the caller holds the
    home's lock, from ``claim_home``, so nobody else runs there). Returns a note to show, if any."""
    try:
        found = cluster.running_cluster(home, holding_lock=holding_lock)
    except ClusterNotRunning as exc:
        return str(exc).split(";")[0] + "; cleaned it up" if "stale" in str(exc) else ""
    raise ClusterAlreadyRunning(f"a cluster is already running in {home} (supervisor pid {found.supervisor_pid}): "
                                "stop it with `cbctl down`, or use another CBCTL_HOME")


def parse_listen(listen: str) -> tuple[str, int]:
    """``--listen`` as ``("tcp://HOST", PORT)``: PORT is the first scheduler's (the address clients call), 0
    when not given; every other socket takes a random port of HOST. ``("", 0)`` for ipc."""
    if not listen:
        return "", 0
    match = _LISTEN.fullmatch(listen)
    port = int(match["port"]) if match and match["port"] else 0
    if match is None or (match["port"] is not None and not 1 <= port <= 65535):
        raise InvalidArgument(f"--listen {listen!r} must look like tcp://HOST or tcp://HOST:PORT (PORT 1-65535, "
                              "the first scheduler's; other processes take random ports of HOST)")
    return f"tcp://{match['host']}", port


def is_loopback(listen: str) -> bool:
    """Whether ``tcp://HOST`` is reachable from this machine only."""
    host = listen.removeprefix("tcp://")
    if host in LOOPBACK_HOSTS:
        return True
    import ipaddress  # here, as socket in check_port_free: only --listen needs it

    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host or interface name: assume it reaches beyond this machine


def check_auth(listen: str, no_auth: bool) -> bool:
    """Whether the cluster uses CURVE; ``--no-auth`` is refused where it would let others in."""
    if not no_auth:
        return bool(listen)
    if not listen:
        raise InvalidArgument("--no-auth applies only with --listen tcp://HOST: ipc sockets need no keys, they are "
                              "private to you already")
    if not is_loopback(listen):
        raise InvalidArgument(f"--no-auth with --listen {listen} would let anyone who can reach that address run "
                              "code in this cluster: drop --no-auth (TCP then requires the keys `cbctl up` writes "
                              "to HOME/keys), or listen on 127.0.0.1")
    return False


def check_port_free(listen: str, port: int) -> None:
    """Fail now, in one line, rather than as a scheduler that cannot start."""
    if not port:
        return
    import socket

    host = listen.removeprefix("tcp://").strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as zmq binds: a TIME_WAIT port is free
        try:
            probe.bind(("" if host == "*" else host, port))
        except OSError as exc:
            raise InvalidArgument(f"cannot listen on {listen}:{port} ({exc.strerror}): pick another port, or give "
                                  "none (tcp://HOST) for random ones") from None


def plan_up(home: Path, *, executors: int | None = None, gpu_executors: int | None = None, schedulers: int = 1,
            listen: str = "", no_auth: bool = False, durability: str = "batch", cache_mb: int = 64,
            fake_gpus: int = 0, max_batch: int = MAX_BATCH, max_continuations: int = MAX_CONTINUATIONS,
            max_message_mb: int = MAX_MESSAGE_BYTES >> 20, policy: Iterable[str] | Mapping[str, Any] = (),
            max_trigger_depth: int = MAX_TRIGGER_DEPTH, executor_memory_mb: int = 0,
            autoscale: str = "", store: str = "", salvage: bool = False,
            departure_timeout_s: float = DEPARTURE_TIMEOUT_S, holding_lock: bool = False
            ) -> tuple[ClusterSpec, list[str]]:
    """Everything ``cbctl up`` (and ``cbctl.local()``) does before starting a process, from its options (the
    keywords are the command's options): refuse a second cluster in ``home``, check the options into a
    ``ClusterSpec``, make the home ready and private. Returns the spec and lines to show the user
    (``note: ...``, ``warning: ...``); any bad option raises ``InvalidArgument`` before anything is touched.
    ``holding_lock``: the caller holds the home's lock (``claim_home``), as `cbctl up` does."""
    shown = []
    stale = check_not_running(home, holding_lock)
    if stale:
        shown.append(f"note: {stale}")
    spec = plan_spec(executors, gpu_executors, schedulers, listen, durability, fake_gpus, cache_mb, max_batch,
                     max_continuations, policy, max_message_mb, no_auth, max_trigger_depth, executor_memory_mb,
                     autoscale, salvage=salvage, departure_timeout_s=departure_timeout_s)
    if store:  # a Redis store: checked before anything is touched (it refuses settings that lose data)
        spec.store, store_warnings = check_store(store, durability)
        shown += [f"warning: {warning}" for warning in store_warnings]
    if spec.listen and not is_loopback(spec.listen):
        shown.append(f"warning: listening on {spec.listen}, reachable beyond this machine (only holders of "
                     f"{home / 'keys'} can use it)")
    shown += [f"note: {note}" for note in prepare_home(home, spec, store or None)]
    return spec, shown


def plan_spec(executors: int | None, gpu_executors: int | None, schedulers: int, listen: str,
              durability: str, fake_gpus: int, cache_mb: int, max_batch: int = MAX_BATCH,
              max_continuations: int = MAX_CONTINUATIONS, policy: Iterable[str] | Mapping[str, Any] = (),
              max_message_mb: int = MAX_MESSAGE_BYTES >> 20, no_auth: bool = False,
              max_trigger_depth: int = MAX_TRIGGER_DEPTH, executor_memory_mb: int = 0,
              autoscale: str = "", salvage: bool = False,
              departure_timeout_s: float = DEPARTURE_TIMEOUT_S) -> ClusterSpec:
    counts = {"--executors": executors, "--gpu-executors": gpu_executors, "--schedulers": schedulers,
              "--fake-gpus": fake_gpus, "--cache-mb": cache_mb, "--max-batch": max_batch,
              "--max-continuations": max_continuations, "--max-message-mb": max_message_mb,
              "--max-trigger-depth": max_trigger_depth, "--executor-memory-mb": executor_memory_mb}
    for flag, count in counts.items():  # the command line parses these; a Python caller may pass anything
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
            raise InvalidArgument(f"{flag} must be a whole number, not {count!r}")
    if durability not in DURABILITY_MODES:
        raise InvalidArgument(f"--durability {durability!r} is not one of {', '.join(DURABILITY_MODES)}")
    if cache_mb < 0:
        raise InvalidArgument(f"--cache-mb {cache_mb} is negative: pass 0 for no cache, or a size in MiB")
    if isinstance(policy, Mapping):
        policy = [f"{name}={value}" for name, value in policy.items()]
    elif isinstance(policy, str):
        policy = [policy]
    if not isinstance(listen, str):
        raise InvalidArgument(f"--listen must be a string like tcp://127.0.0.1, not {listen!r}")
    span, autoscale_policy, policy = plan_autoscale(autoscale, list(policy), cache_mb)
    if span:
        # it starts at --executors if given (kept within the range), else at MIN
        executors = span[0] if executors is None else max(span[0], min(span[1], executors))
    if policy:  # the policy's module imports the message catalogue: only for a cluster that tunes it
        from cbctl.runtime.scheduler.policy import parse_policy_options

        policy_options = parse_policy_options(policy)
    else:
        policy_options = {}
    listen, scheduler_port = parse_listen(listen)
    curve = check_auth(listen, no_auth)
    if executors is None:
        executors = os.cpu_count() or 1
    # nvidia-smi takes a while to answer: asked only when the count matters
    found_gpus = fake_gpus or (count_gpus() if gpu_executors is None or gpu_executors > 0 else 0)
    if gpu_executors is None:
        gpu_executors = found_gpus
    elif gpu_executors > found_gpus:
        raise InvalidArgument(
            f"--gpu-executors {gpu_executors} asks for more GPUs than are visible ({found_gpus}): "
            "lower it, or for tests only fake devices with --fake-gpus N")
    for flag, count in (("--executors", executors), ("--gpu-executors", gpu_executors)):
        if count < 0:
            raise InvalidArgument(f"{flag} {count} is negative: pass a count of executors")
    if executors + gpu_executors == 0 and not (span and span[1] > 0):
        raise InvalidArgument("a cluster needs at least one executor: pass --executors N with N >= 1")
    if schedulers < 1:
        raise InvalidArgument("a cluster needs at least one scheduler: pass --schedulers N with N >= 1")
    if fake_gpus < 0:
        raise InvalidArgument(f"--fake-gpus {fake_gpus} is negative: pass 0 (the default) or a device count")
    if max_batch < 1:
        raise InvalidArgument(f"--max-batch {max_batch} is below 1: a batch holds at least one call")
    if max_continuations < 0:
        raise InvalidArgument(f"--max-continuations {max_continuations} is negative: pass 0 to forbid "
                              "cbctl.Continue, or a hand-off count")
    if executor_memory_mb < 0:
        raise InvalidArgument(f"--executor-memory-mb {executor_memory_mb} is negative: pass 0 (never recycle, the "
                              "default) or a size in MiB")
    if max_trigger_depth < 1:
        raise InvalidArgument(f"--max-trigger-depth {max_trigger_depth} is below 1: it counts the calls in one chain "
                              "of storage-triggered calls (1: a triggered call's puts fire nothing)")
    if not 1 <= max_message_mb <= MAX_MESSAGE_MB_CEILING:
        raise InvalidArgument(f"--max-message-mb {max_message_mb} is out of range: pass 1 to "
                              f"{MAX_MESSAGE_MB_CEILING} (MiB per serialised value)")
    if not departure_timeout_s > 0:
        raise InvalidArgument(f"--departure-timeout {departure_timeout_s} must be seconds > 0: how long a departing "
                              "executor may finish its calls before they are dispatched elsewhere")
    check_port_free(listen, scheduler_port)
    return ClusterSpec(executors=executors, gpu_executors=gpu_executors, schedulers=schedulers,
                       listen=listen, scheduler_port=scheduler_port, curve=curve, durability=durability,
                       salvage=salvage, departure_timeout_s=departure_timeout_s,
                       fake_gpus=fake_gpus,
                       cache_mb=cache_mb, max_batch=max_batch, max_continuations=max_continuations,
                       max_trigger_depth=max_trigger_depth, executor_memory_mb=executor_memory_mb,
                       policy=policy_options, max_message_bytes=max_message_mb << 20,
                       autoscale=span, autoscale_policy=autoscale_policy)


def plan_autoscale(autoscale: str, policy: list[str], cache_mb: int) -> tuple[list[int], dict[str, float], list[str]]:
    """``--autoscale MIN:MAX`` and the ``--policy autoscale_...`` items: ``([MIN, MAX] or [], the autoscaler's
    settings, the other --policy items)``."""
    from cbctl.runtime.supervisor.autoscaler import POLICY_PREFIX, AutoscaleSettings, parse_range

    mine = [p for p in policy if p.strip().startswith(POLICY_PREFIX)]
    rest = [p for p in policy if not p.strip().startswith(POLICY_PREFIX)]
    if not autoscale:
        if mine:
            raise InvalidArgument("--policy autoscale_... settings apply only with --autoscale MIN:MAX")
        return [], {}, rest
    options = {}
    for item in mine:
        name, _, value = item.partition("=")
        options[name.strip()] = value.strip()
    settings = AutoscaleSettings.from_options(options)
    low, high = parse_range(autoscale, default_max_executors(cache_mb))
    return [low, high], {k: v for k, v in settings.as_options().items() if k in options}, rest


def check_store(store: str, durability: str) -> tuple[str, list[str]]:
    """``cbctl up --store URL``: parse it and check the server (reachable, no evicting maxmemory-policy, AOF on
    unless ``--durability none``); returns the redacted URL for the spec and warnings to show."""
    from cbctl.runtime.redis_store.url import check_server, parse_store_url

    url = parse_store_url(store)
    return url.redacted(), check_server(url, durability)


def prepare_home(home: Path, spec: ClusterSpec, store_url: str | None = None) -> list[str]:
    """Make the cluster directory ready and private, with fresh CURVE keys for a TCP cluster and the store URL
    of a Redis store (``store_url``, with its password, in a file of its own), or say in one line why it cannot
    be used. Returns notes for the user (permissions it had to tighten)."""
    notes = []
    try:
        with private_umask():
            tightened = cluster.secure_home(home)
            (home / cluster.STARTUP_ERROR_FILE).unlink(missing_ok=True)
            probe = home / ".write-test"  # a read-only home may still list: only a write tells
            probe.write_bytes(b"")
            probe.unlink()
            if spec.curve:
                from cbctl.runtime.wire import auth

                auth.generate_keys(home)
            else:  # an earlier TCP cluster's keys, of no use to this one
                shutil.rmtree(home / cluster.KEYS_DIR, ignore_errors=True)
            from cbctl.runtime.redis_store.url import save_secret

            save_secret(home, store_url)  # the Redis store's URL with its password (or none: removed)
    except OSError as exc:
        raise unusable_home(home, exc) from None
    if tightened:
        shown = ", ".join(str(p.relative_to(home)) if p != home and p.is_relative_to(home) else str(p)
                          for p in tightened[:5])
        more = f" and {len(tightened) - 5} more" if len(tightened) > 5 else ""
        notes.append(f"made {len(tightened)} path(s) in {home} private to you (other users could read them): "
                     f"{shown}{more}")
    return notes


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Files and directories created meanwhile (and by processes started meanwhile) are the user's alone."""
    previous = os.umask(cluster.PRIVATE_UMASK)
    try:
        yield
    finally:
        os.umask(previous)


def salvage_report(home: Path, since: float) -> list[str]:
    """What the store's recovery dropped when started with ``--salvage`` (written after ``since``), as lines for
    the user: one per damaged file moved aside."""
    try:
        report = json.loads((cluster.data_dir(home) / cluster.SALVAGE_REPORT).read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(report, dict) or report.get("time", 0) < since:
        return []
    lines = []
    for entry in report.get("files", []):
        stretches = ", ".join(f"{d['bytes']} bytes at offset {d['offset']} ({d['why']})" for d in entry["damaged"])
        lines.append(f"salvaged {entry['file']}: kept {entry['records_kept']} intact records, dropped {stretches}; "
                     f"the damaged file is kept as {entry['moved_to']}")
    return lines


class SupervisorProcess(subprocess.Popen):
    """The supervisor's process, with the read end of the pipe on which it says that the cluster is up (a
    line once the cluster file is written; the end of the pipe if it exits first): ``wait_for_cluster`` wakes
    at once instead of looking at the file on a timer. Owned, and closed, by ``wait_for_cluster``."""

    ready_pipe: int = -1


def start_supervisor(home: Path, spec: ClusterSpec, foreground: bool = False,
                     lock_fd: int | None = None) -> SupervisorProcess:
    """Start the supervisor of a cluster in ``home`` (made ready by ``prepare_home``), with a private umask
    that it and every process it starts inherit. It inherits the home's lock (``lock_fd``, from ``claim_home``;
    taken here when not given) and holds it for its life; the caller may close its own copy once it runs."""
    own_lock = lock_fd is None
    fd = claim_home(home) if lock_fd is None else lock_fd
    ready_read, ready_write = os.pipe()
    command = [sys.executable, "-m", "cbctl.runtime.supervisor", "--home", str(home),
               "--spec", json.dumps(asdict(spec)), "--lock-fd", str(fd), "--ready-fd", str(ready_write)]
    try:
        with private_umask():
            proc = SupervisorProcess(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=not foreground,
                                     pass_fds=(fd, ready_write))
        proc.ready_pipe = ready_read
        home_lock.write_pid(fd, proc.pid)  # what a refused `cbctl up` names
    except BaseException:
        os.close(ready_read)
        raise
    finally:
        os.close(ready_write)  # the supervisor's copy is the only one: its exit ends the pipe
        if own_lock:
            release_home(fd)  # the supervisor holds its own copy
    return proc


def wait_until_up(home: Path, proc: subprocess.Popen, timeout_s: float = STARTUP_TIMEOUT_S + 10) -> cluster.ClusterFile:
    """The cluster file once the supervisor ``proc`` reports every process ready. Ctrl-C while waiting stops
    the half-started cluster: its supervisor is detached and would otherwise run on with no cluster file for
    `cbctl down` to find."""
    try:
        return wait_for_cluster(home, proc, timeout_s)
    except KeyboardInterrupt:
        proc.terminate()  # the supervisor stops the children it already started, in order
        try:
            proc.wait(SHUTDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        cluster.remove_socket_dir(home)
        raise CbctlError("interrupted while the cluster was starting: the processes already started were "
                         "stopped; run `cbctl up` again") from None


def wait_for_cluster(home: Path, proc: subprocess.Popen,
                     timeout_s: float = STARTUP_TIMEOUT_S + 10) -> cluster.ClusterFile:
    """The cluster file once the supervisor ``proc`` wrote it (every process ready); ``CbctlError`` with the
    supervisor's reason if it exits first, or at the deadline. A ``SupervisorProcess`` says when on its pipe
    (which this closes); for another process, the file is looked at every ``CLUSTER_FILE_POLL_S``."""
    import select

    deadline = time.monotonic() + timeout_s
    ready_pipe = getattr(proc, "ready_pipe", -1)
    try:
        while time.monotonic() < deadline:
            found = cluster.ClusterFile.read(home)
            if found is not None and found.supervisor_pid == proc.pid:
                return found
            if proc.poll() is not None:
                cluster.remove_socket_dir(home)  # a supervisor that failed before stop() could not
                error_file = home / cluster.STARTUP_ERROR_FILE
                reason = error_file.read_text().strip() if error_file.exists() else f"exit code {proc.returncode}"
                raise CbctlError(f"the cluster did not start: {reason} (logs in {home / 'logs'})")
            if ready_pipe < 0:
                time.sleep(CLUSTER_FILE_POLL_S)
            elif select.select([ready_pipe], [], [], max(0.0, deadline - time.monotonic()))[0]:
                # the line (the file is there now), or the pipe's end (the supervisor exits: poll() says so
                # once it has): either way it says no more, and the file is looked at on the timer from here
                os.read(ready_pipe, 64)
                os.close(ready_pipe)
                ready_pipe = proc.ready_pipe = -1
    finally:
        if ready_pipe >= 0:
            os.close(ready_pipe)
            proc.ready_pipe = -1
    proc.terminate()
    raise CbctlError(f"the cluster did not report ready within {timeout_s:.0f} s: see {home / 'logs'}")


#: `cbctl up --verbose`: (phase, the step it starts at, the step it ends at), the steps being the keys of the
#: cluster file's ``startup`` (the supervisor's) and the command's own.
STARTUP_PHASES = (
    ("cli: interpreter, imports", "cli_started", "cli_entered"),
    ("cli: options, home", "cli_entered", "launching"),
    ("supervisor: interpreter", "launching", "supervisor_entered"),
    ("supervisor: forkserver launched", "supervisor_entered", "forkserver_started"),
    ("supervisor: imports", "forkserver_started", "supervisor_imported"),  # the forkserver's preload alongside
    ("forkserver: preload, children forked", "supervisor_imported", "children_forked"),
    ("children: all ready", "children_forked", "children_ready"),  # each has shaken hands with every scheduler
    ("supervisor: cluster file", "children_ready", "cluster_file"),
    ("cli: saw the cluster file", "cluster_file", "seen"),
    ("cli: printed ready", "seen", "printed"),
)


def startup_phases(stamps: dict[str, float]) -> list[tuple[str, float, float]]:
    """``[(phase, seconds it took, seconds since the command started at its end)]`` from the unix times of
    the start-up's steps; a phase with a step missing (a supervisor started otherwise) is left out."""
    origin = stamps.get("cli_started", min(stamps.values(), default=0.0))
    return [(name, stamps[end] - stamps[begin], stamps[end] - origin) for name, begin, end in STARTUP_PHASES
            if begin in stamps and end in stamps]


def process_started_at() -> float:
    """The unix time this process started: on Linux to the clock tick (10 ms), from its start in ticks since
    boot and the time since boot (psutil's create_time adds the boot time, which Linux gives in whole seconds)."""
    try:
        with open("/proc/self/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()  # after the command name, which may hold spaces
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return time.time() - age
    except (OSError, ValueError, IndexError, AttributeError):
        import psutil

        return psutil.Process().create_time()


def stop_cluster(home: Path, timeout_s: float = 3 * SHUTDOWN_TIMEOUT_S + 10) -> int:
    """Stop the cluster in ``home`` and wait until every one of its processes is gone; returns how many
    processes were stopped. The wait covers the supervisor's own deadlines (one per role: executors,
    schedulers, store) so a warm stop that is still finishing long calls is not cut short."""
    import psutil

    found = cluster.running_cluster(home)
    if not found.is_local():
        raise InvalidArgument(f"the cluster in {home} runs on another machine (its head, {found.head_host}): run "
                              "`cbctl down` there; `cbctl leave` takes this machine's executors out of it")
    procs = []
    for pid in [found.supervisor_pid] + [p.pid for p in found.processes if not p.host]:
        try:
            procs.append(psutil.Process(pid))
        except psutil.Error:
            pass
    from cbctl.control import supervisor_request  # here: `cbctl up` never needs zmq before the supervisor runs

    # asked, not signalled: a stopped or stuck supervisor gets a bounded wait and a clear error, and ignores the
    # request if it resumes later (a SIGTERM would wait in its queue and stop the cluster by surprise)
    supervisor_request(found, "stop", timeout_s=SUPERVISOR_ANSWER_TIMEOUT_S, home=home)
    alive = wait_gone(procs, timeout_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    wait_gone(alive, 5)
    # what the cluster's processes lent through shared memory and nobody took (the supervisor sweeps as it stops;
    # this is for one that was killed first): every one of them is gone now (wire/shared.py)
    from cbctl.runtime.process import process_alive
    from cbctl.runtime.wire import shared

    shared.sweep(process_alive, grace_s=0.0)
    if cluster.home_holder(home) is None:  # not a newer cluster's, started meanwhile
        cluster.remove_cluster_file(home)
        cluster.remove_socket_dir(home, found.control_address)  # the supervisor's own removal, if it was killed
    return len(procs)


def wait_gone(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Wait until every process has exited; return those still running at the deadline. An exited process
    that is a zombie counts as gone: the detached supervisor is init's child, and init may reap it seconds
    later (psutil.wait_procs would wait for that)."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = [proc for proc in procs if _running(proc)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.02)


def kill_processes(pids: list[int], timeout_s: float = 10.0) -> None:
    """SIGKILL whatever of ``pids`` still runs and wait until it is gone (what teardown code uses when a
    warm stop did not finish)."""
    import psutil

    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.Error:
            pass
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    wait_gone(procs, timeout_s)


def _running(proc: psutil.Process) -> bool:
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# --- hosts: `cbctl join` and `cbctl leave` on a machine other than the head ---------------------------------

#: What a joining machine needs from the head's home, relative to it: ``cbctl up --listen`` prints the command.
JOIN_FILES = (cluster.CLUSTER_FILE, cluster.KEYS_DIR)


def copy_command(home: Path, listen_host: str) -> str:
    """The command that copies what a joining machine (or a remote client) needs, run on that machine."""
    return (f"mkdir -p ~/.cbctl && scp -rp {listen_host}:{home}/{{{','.join(JOIN_FILES)}}} ~/.cbctl/ "
            "&& chmod -R go= ~/.cbctl")


def route_address(head: str) -> str:
    """This machine's address on the route to ``head``: what the head's processes reach it at by default."""
    parse_tcp_address(head, "the head address")
    return cluster.address_towards(head)


def parse_tcp_address(address: str, what: str) -> tuple[str, int]:
    match = _LISTEN.fullmatch(address)
    if match is None or not match["port"] or not 1 <= int(match["port"]) <= 65535:
        raise InvalidArgument(f"{what} {address!r} must look like tcp://HOST:PORT (the head's scheduler port, as "
                              "`cbctl up --listen` printed it)")
    return match["host"].strip("[]"), int(match["port"])


def plan_join(home: Path, head: str, executors: int, gpu_executors: int, advertise: str | None, name: str | None,
              fake_gpus: int = 0, cache_mb: int = 64, timeout_s: float = JOIN_TIMEOUT_S,
              max_executors: int = 0) -> JoinSpec:
    """Check that this machine can join ``head`` (a copy of its cluster file and keys here, no node running
    here yet) and say in one line what is missing if not."""
    from cbctl.runtime.supervisor.node import JoinSpec
    from cbctl.runtime.wire import auth

    parse_tcp_address(head, "the head address")
    node = cluster.NodeFile.read(home)
    if node is not None and node.alive():
        raise ClusterAlreadyRunning(f"this machine joined {node.head} already from {home} (as {node.host}): "
                                    "run `cbctl leave` first, or use another CBCTL_HOME")
    found = cluster.ClusterFile.read(home)
    if found is None:
        raise InvalidArgument(f"{home / cluster.CLUSTER_FILE} is missing: copy the head's cluster.json and keys/ "
                              f"into {home} (on the head, `cbctl up --listen` printed the command)")
    if found.is_local():
        raise InvalidArgument(f"{home} holds a cluster of this machine: join from another machine, with a copy of "
                              "the head's cluster.json and keys/ in a home of its own")
    if head not in found.scheduler_addresses:
        raise InvalidArgument(f"{home / cluster.CLUSTER_FILE} is not the cluster at {head} (its schedulers are "
                              f"{', '.join(found.scheduler_addresses)}): copy the head's current cluster.json again")
    if found.auth != auth.AUTH_CURVE:
        raise InvalidArgument("the head runs without keys (--no-auth, loopback only): other machines cannot join it; "
                              "start it with `cbctl up --listen tcp://HOST:PORT`")
    auth.load_keys(home)  # AuthenticationError saying what is missing
    for flag, count in (("--executors", executors), ("--gpu-executors", gpu_executors),
                        ("--max-executors", max_executors)):
        if count < 0:
            raise InvalidArgument(f"{flag} {count} is negative: pass a count of executors")
    if max_executors > MAX_EXECUTORS:
        raise InvalidArgument(f"--max-executors {max_executors} is above {MAX_EXECUTORS}: lower it")
    if max_executors and executors > max_executors:
        raise InvalidArgument(f"--executors {executors} is above --max-executors {max_executors}: the host starts "
                              "with at most what it offers")
    if executors + gpu_executors + max_executors == 0:
        raise InvalidArgument("joining needs at least one executor: pass --executors N with N >= 1 (or offer the "
                              "head's autoscaler some with --max-executors N)")
    if gpu_executors > (fake_gpus or count_gpus()):
        raise InvalidArgument(f"--gpu-executors {gpu_executors} asks for more GPUs than are visible here: lower it")
    if advertise is None:
        advertise = route_address(head)
    else:
        listen, port = parse_listen(advertise)
        if port or not listen:
            raise InvalidArgument(f"--advertise {advertise!r} must look like tcp://ADDR (no port: executors take "
                                  "random ports of ADDR)")
        advertise = listen
    host = name or advertise.removeprefix("tcp://").strip("[]").replace(":", "-")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", host):
        raise InvalidArgument(f"--name {host!r} must be letters, digits, '_', '.', '-' (up to 63): executors here "
                              "are NAME/executor-N")
    if host == found.head_host:
        raise InvalidArgument(f"{host} is the head's own host name: pass --name")
    return JoinSpec(head=head, advertise=advertise, host=host, executors=executors, gpu_executors=gpu_executors,
                    fake_gpus=fake_gpus, cache_mb=cache_mb, timeout_s=timeout_s, max_executors=max_executors)


def start_node(home: Path, spec: JoinSpec) -> subprocess.Popen:
    """Start this machine's node supervisor (detached), with a private umask."""
    command = [sys.executable, "-m", "cbctl.runtime.supervisor.node", "--home", str(home),
               "--spec", json.dumps(asdict(spec))]
    with private_umask():
        cluster.secure_home(home)
        (home / cluster.STARTUP_ERROR_FILE).unlink(missing_ok=True)
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)


def wait_until_joined(home: Path, proc: subprocess.Popen,
                      timeout_s: float = STARTUP_TIMEOUT_S + JOIN_TIMEOUT_S + 10,
                      expect_executors: bool = True) -> cluster.NodeFile:
    """The node file once the node supervisor ``proc`` has joined and every executor is ready, or why not
    (``expect_executors`` False: a host that starts none, `--executors 0 --max-executors N`)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = cluster.NodeFile.read(home)
        if found is not None and found.node_pid == proc.pid and (found.executors or not expect_executors) and \
                all(e.pid for e in found.executors):
            return found
        if proc.poll() is not None:
            error_file = home / cluster.STARTUP_ERROR_FILE
            reason = error_file.read_text().strip() if error_file.exists() else f"exit code {proc.returncode}"
            raise CbctlError(f"could not join: {reason} (logs in {home / 'logs'})")
        time.sleep(0.05)
    proc.terminate()
    raise CbctlError(f"this machine did not join within {timeout_s:.0f} s: see {home / 'logs'}")


def leave(home: Path, timeout_s: float = SHUTDOWN_TIMEOUT_S + 15) -> cluster.NodeFile:
    """Take this machine's executors out of the cluster gracefully (no call lost) and stop its node."""
    node = cluster.NodeFile.read(home)
    if node is None or not node.alive():
        if node is not None:
            (home / cluster.NODE_FILE).unlink(missing_ok=True)
        raise ClusterNotRunning(f"this machine has not joined a cluster from {home}: nothing to leave")
    import psutil

    proc = psutil.Process(node.node_pid)
    proc.terminate()
    if wait_gone([proc], timeout_s):
        proc.kill()
        wait_gone([proc], 5)
        raise CbctlError(f"the node supervisor (pid {node.node_pid}) did not stop within {timeout_s:.0f} s and was "
                         f"killed: see {home / 'logs'}")
    return node
