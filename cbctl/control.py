"""The supervisor's control channel as the client and the CLI use it: one request (status, stop, scale,
autoscale) to the supervisor's control socket, and ``scale_cluster`` and ``autoscale_cluster`` on top of it.
Its own module because both the client (``Client.scale``, ``Client.supervisor_status``) and ``lifecycle``
(``cbctl down``) need it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import zmq

from cbctl.errors import CbctlError, ClusterNotRunning, InvalidArgument, error_from_wire
from cbctl.runtime import cluster
from cbctl.runtime.defaults import CONTROL_TIMEOUT_S, SCALE_REQUEST_TIMEOUT_S
from cbctl.runtime.process import new_socket
from cbctl.runtime.wire import auth
from cbctl.runtime.wire.messages import ControlResponse, SupervisorRequest, unpack


def supervisor_request(found: cluster.ClusterFile, command: str, timeout_s: float = CONTROL_TIMEOUT_S,
                       home: Path | None = None, **arguments: Any) -> Any:
    """One request to the supervisor's control socket (status, stop, scale). ``home`` is where the cluster
    file was read (its keys are there), when that is not the home the cluster runs in."""
    home = home or Path(found.home)
    context = zmq.Context.instance()
    keys = auth.cluster_keys(home, found.auth)
    sock = new_socket(context, zmq.DEALER)
    watch = auth.watch_handshakes(sock, found.control_address, keys)
    try:
        auth.connect(sock, found.control_address, keys)
        sock.send(SupervisorRequest(1, command, arguments).pack())
        if not auth.wait_for_reply(sock, timeout_s, watch, found.control_address, home):
            raise ClusterNotRunning(f"the supervisor (pid {found.supervisor_pid}) did not answer within "
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


def scale_cluster(home: Path, executors: int) -> dict[str, Any]:
    """Run ``executors`` CPU executors in the cluster in ``home``: start more, or depart the highest-numbered
    ones gracefully (they finish the work they were sent; no call is lost). Returns once done, with
    ``{"executors": N, "started": [names], "stopped": [names]}``."""
    if isinstance(executors, bool) or not isinstance(executors, int) or executors < 0:
        raise InvalidArgument(f"--executors must be a whole number >= 0, not {executors!r}")
    found = cluster.running_cluster(home)
    return supervisor_request(found, "scale", timeout_s=SCALE_REQUEST_TIMEOUT_S, home=home, executors=executors)


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
