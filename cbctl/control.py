"""The supervisor's control channel as the client and the CLI use it: one request (status, stop, scale,
autoscale) to the supervisor's control socket, and ``scale_cluster`` and ``autoscale_cluster`` on top of it.
Its own module because both the client (``Client.scale``, ``Client.supervisor_status``) and ``lifecycle``
(``cbctl down``) need it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psutil
import zmq

from cbctl.errors import CbctlError, ClusterNotRunning, InvalidArgument, error_from_wire
from cbctl.runtime import cluster
from cbctl.runtime.defaults import CONTROL_TIMEOUT_S, STARTUP_TIMEOUT_S, SUPERVISOR_ANSWER_TIMEOUT_S
from cbctl.runtime.process import new_socket
from cbctl.runtime.wire import auth
from cbctl.runtime.wire.messages import START_BY, ControlResponse, SupervisorRequest, unpack


def supervisor_request(found: cluster.ClusterFile, command: str, timeout_s: float = CONTROL_TIMEOUT_S,
                       home: Path | None = None, **arguments: Any) -> Any:
    """One request to the supervisor's control socket (status, stop, scale). ``home`` is where the cluster
    file was read (its keys are there), when that is not the home the cluster runs in.

    Every wait is bounded: ``timeout_s`` in all, and ``SUPERVISOR_ANSWER_TIMEOUT_S`` while the supervisor is
    stopped (SIGSTOP) or after it exited. The request carries that same bound as the time by which the supervisor
    must take it up (``START_BY``), so one resumed later ignores what its caller no longer waits for."""
    home = home or Path(found.home)
    context = zmq.Context.instance()
    keys = auth.cluster_keys(home, found.auth)
    sock = new_socket(context, zmq.DEALER)
    watch = auth.watch_handshakes(sock, found.control_address, keys)
    pid = found.supervisor_pid
    try:
        auth.connect(sock, found.control_address, keys)
        sent = time.monotonic()
        start_by = time.time() + min(timeout_s, SUPERVISOR_ANSWER_TIMEOUT_S)
        sock.send(SupervisorRequest(1, command, {**arguments, START_BY: start_by}).pack())
        stopped_since: float | None = None
        while not auth.wait_for_reply(sock, min(0.25, max(0.0, sent + timeout_s - time.monotonic())), watch,
                                      found.control_address, home):
            now = time.monotonic()
            state = _process_state(pid)
            if state == "stopped":
                stopped_since = stopped_since or now
            else:
                stopped_since = None
            if state == "gone":
                raise ClusterNotRunning(f"the supervisor (pid {pid}) exited before it answered {command!r}: "
                                        "check `cbctl status`")
            out_of_time = now - sent >= timeout_s
            if stopped_since is not None and (out_of_time or now - stopped_since >= SUPERVISOR_ANSWER_TIMEOUT_S):
                raise CbctlError(f"the supervisor (pid {pid}) is stopped (SIGSTOP?) and did not answer {command!r} "
                                 f"within {min(timeout_s, SUPERVISOR_ANSWER_TIMEOUT_S):.0f} s: resume it with `kill "
                                 f"-CONT {pid}` and run the command again (a request it had not taken up is then "
                                 "ignored)")
            if out_of_time:
                raise ClusterNotRunning(f"the supervisor (pid {pid}) did not answer {command!r} within "
                                        f"{timeout_s:.0f} s: see `cbctl logs supervisor`")
        reply = unpack(sock.recv())
    finally:
        if watch is not None:
            watch.close()
        sock.close()
    if not isinstance(reply, ControlResponse):
        raise CbctlError(f"unexpected reply {type(reply).__name__} from the supervisor")
    if not reply.ok:
        raise error_from_wire(reply.error_type, reply.message)
    return reply.payload


def _process_state(pid: int) -> str:
    """"gone", "stopped" (SIGSTOP, or a debugger) or "running", for the wait on a supervisor's answer."""
    try:
        status = psutil.Process(pid).status()
    except psutil.Error:
        return "gone"
    if status == psutil.STATUS_ZOMBIE:
        return "gone"
    return "stopped" if status in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP) else "running"


def scale_request_timeout(departure_timeout_s: float) -> float:
    """Seconds a client waits for a scale request: starting executors, or departing ones up to the cluster's
    departure bound (``cbctl up --departure-timeout``), plus slack."""
    return STARTUP_TIMEOUT_S + departure_timeout_s + 10


def scale_cluster(home: Path, executors: int) -> dict[str, Any]:
    """Run ``executors`` CPU executors in the cluster in ``home``: start more, or depart the highest-numbered
    ones gracefully (they finish the work they were sent; no call is lost). Returns once done, with
    ``{"executors": N, "started": [names], "stopped": [names], "cut_short": [names]}`` (``cut_short``: departed
    past the departure bound, their unfinished calls dispatched again)."""
    if isinstance(executors, bool) or not isinstance(executors, int) or executors < 0:
        raise InvalidArgument(f"--executors must be a whole number >= 0, not {executors!r}")
    found = cluster.running_cluster(home)
    return supervisor_request(found, "scale", timeout_s=scale_request_timeout(found.departure_timeout_s), home=home,
                              executors=executors)


def autoscale_cluster(home: Path, span: str, policy: tuple[str, ...] | list[str] = (),
                      executors: int | None = None) -> dict[str, Any]:
    """Autoscale the cluster in ``home`` between ``span`` = "MIN:MAX" CPU executors ("MIN:" for the machine's
    default MAX), tuned by ``policy`` items ``autoscale_NAME=VALUE``; or ``span`` = "off": a fixed size again,
    ``executors`` of them (default: as many as run now). Returns the autoscaler's state (`cbctl status`)."""
    # here, not at the top: the client imports this module, and no role may load the supervisor's package
    from cbctl.runtime.supervisor.autoscaler import AutoscaleSettings, parse_range
    from cbctl.runtime.supervisor.spec import default_max_executors

    options = parse_autoscale_policy(policy)
    found = cluster.running_cluster(home)
    if span == "off":
        if policy:
            raise InvalidArgument("--policy applies to `cbctl autoscale MIN:MAX`, not to `off`")
        return supervisor_request(found, "autoscale", home=home, range=None, executors=executors)
    if executors is not None:
        raise InvalidArgument("--executors applies to `cbctl autoscale off` (the fixed size to keep)")
    low, high = parse_range(span, default_max_executors())
    return supervisor_request(found, "autoscale", home=home, range=[low, high],
                              policy=AutoscaleSettings.from_options(options).as_options() if options else None)


def parse_autoscale_policy(items: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``autoscale_NAME=VALUE`` items -> ``{autoscale_NAME: VALUE}``, checked by ``AutoscaleSettings``."""
    from cbctl.runtime.supervisor.autoscaler import POLICY_PREFIX, AutoscaleSettings

    options = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip().startswith(POLICY_PREFIX):
            raise InvalidArgument(f"--policy {item!r} must look like autoscale_NAME=VALUE, e.g. "
                                  "autoscale_down_window_s=10")
        options[name.strip()] = value.strip()
    AutoscaleSettings.from_options(options)
    return options
