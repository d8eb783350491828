"""``CloudburstConnection``: Cloudburst's client, over ``cbctl.Client``.

Every method sends what cbctl's own client sends (register, register_dag, call_async, get/put, list, delete);
the differences from Cloudburst a user can meet are listed in the README ("Coming from Cloudburst").
"""

from __future__ import annotations

import os
import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cbctl
from cbctl import CallFuture, Client, ClusterNotRunning, InvalidArgument, NoSuchKey, Ref
from cbctl.compat.cloudburst import shapes
from cbctl.compat.cloudburst.function import CloudburstFunction
from cbctl.compat.cloudburst.future import CloudburstFuture
from cbctl.compat.cloudburst.proto import (
    CBCTL_MODES,
    DAG_ALREADY_EXISTS,
    NO_CLOUDBURST_ERROR,
    NO_SUCH_DAG,
    NORMAL,
    CloudburstError,
)
from cbctl.compat.cloudburst.reference import CloudburstReference
from cbctl.compat.cloudburst.user_library import (
    CallTail,
    FirstValid,
    FixedArgs,
    FunctionBody,
    Tail,
    TailSource,
    body_class,
)

_LOOPBACK = {"", "127.0.0.1", "localhost", "::1", "0.0.0.0"}
_HOST_PORT = re.compile(r"^[\w.\-\[\]:]+:\d+$")


def connect_to(func_addr: Any, local: bool = False) -> Client:
    """The cluster a Cloudburst ``func_addr`` names: a loopback address (Cloudburst's local mode) is the cluster
    in ``$CBCTL_HOME``; a directory is a cluster home; ``tcp://HOST:PORT`` (or ``HOST:PORT``) is the cluster in
    ``$CBCTL_HOME`` when its scheduler listens there (a client reaches a cluster through its home, where its
    addresses and keys are)."""
    if isinstance(func_addr, os.PathLike) or (isinstance(func_addr, str) and func_addr
                                             and os.path.isdir(os.path.expanduser(func_addr))):
        return cbctl.connect(func_addr)
    if not isinstance(func_addr, str):
        raise InvalidArgument(f"func_addr {func_addr!r} is not an address: pass '127.0.0.1' (the cluster in "
                              "$CBCTL_HOME), a cluster home directory, or tcp://HOST:PORT")
    address = func_addr.strip()
    if address in _LOOPBACK:
        return cbctl.connect()
    if not address.startswith("tcp://") and _HOST_PORT.match(address):
        address = "tcp://" + address
    if not address.startswith("tcp://"):
        if local:
            return cbctl.connect()
        raise InvalidArgument(f"func_addr {func_addr!r} is not a cluster cbctl can reach: pass '127.0.0.1' (the "
                              "cluster in $CBCTL_HOME), a cluster home directory, or tcp://HOST:PORT of a cluster "
                              "started with `cbctl up --listen`")
    address = address.replace("//localhost:", "//127.0.0.1:")
    client = cbctl.connect()
    if address not in client.cluster.scheduler_addresses:
        listening = ", ".join(client.cluster.scheduler_addresses)
        client.close()
        raise ClusterNotRunning(f"the cluster in {client.home} listens on {listening}, not {address}: set "
                                "CBCTL_HOME to the home of the cluster started with `cbctl up --listen "
                                f"{address}`, or pass that home as func_addr")
    return client


@dataclass
class DagCall:
    """What ``call_dag(..., dry_run=True)`` returns instead of calling: the call it would have made."""

    name: str
    function_args: dict[str, list[Any]] = field(default_factory=dict)
    consistency: int = NORMAL
    output_key: str = ""
    client_id: str = ""
    response_address: str = ""


def _body_of(function: Any) -> type[FunctionBody]:
    """What ``register`` registers for a function, a class, or a ``(class, init_args)`` pair."""
    if isinstance(function, tuple):
        if len(function) != 2 or not isinstance(function[0], type):
            raise InvalidArgument(f"{function!r} is not a (class, init_args) pair: register a function, a class "
                                  "with a run method, or (class, init_args)")
        cls, init_args = function
        init_args = init_args if type(init_args) is tuple else (init_args,)
    elif isinstance(function, type):
        cls, init_args = function, ()
    elif callable(function):
        return body_class(function)
    else:
        raise InvalidArgument(f"{function!r} is not a function or a class: register a callable")
    if not callable(getattr(cls, "run", None)):
        raise InvalidArgument(f"class {cls.__name__} has no run(self, cloudburst, ...) method to call")
    return body_class(cls, init_args)


class CloudburstConnection:
    def __init__(self, func_addr: Any, ip: str | None = None, tid: int = 0, local: bool = False) -> None:
        """Connect to a cbctl cluster (see ``connect_to`` for what ``func_addr`` may be). ``ip`` and ``tid``
        chose the reply ports of a Cloudburst client; cbctl's client binds its own reply socket, so they are
        kept only as attributes."""
        self.client = connect_to(func_addr, local)
        self.kvs_client = self.client
        self.service_addr, self.ip, self.tid, self.local = func_addr, ip, tid, local
        self.response_address = self.client.response_address
        self.rid = 0
        self._bodies: dict[str, type[FunctionBody]] = {}  # what this connection registered (gpu/batching in DAGs)
        self._variants: dict[str, list[str]] = {}  # registered variant -> the sources of the DAG it varies
        self._known_sources: dict[str, list[str]] = {}  # DAG -> its sources
        self._close = weakref.finalize(self, self.client.close)

    # --- functions and DAGs --------------------------------------------------------------------------

    def list(self, prefix: str | None = None) -> None:
        """Print the registered functions' names (those starting with ``prefix``), one a line."""
        for name in self._function_names(prefix):
            print(name)

    def get_function(self, name: str) -> CloudburstFunction | None:
        if name not in self._function_names():
            print(f"No function found with name {name}. To view all functions, use the `list` method.")
            return None
        return CloudburstFunction(name, self, self.kvs_client)

    def register(self, function: Any, name: str) -> CloudburstFunction:
        """Register a function, a class with ``run``, or ``(class, init_args)``; a class is constructed once per
        executor, as ``Class(cloudburst, *init_args)``, and ``run(cloudburst, *args)`` runs each call."""
        body = _body_of(function)
        self.client.register(body, name=name)
        self._bodies[name] = body
        return CloudburstFunction(name, self, self.kvs_client)

    def register_dag(self, name: str, functions: Sequence[Any], connections: Sequence[Sequence[str]],
                     gpu_functions: Sequence[Any] = (), batching_functions: Sequence[Any] = (),
                     colocated: Sequence[str] = ()) -> tuple[bool, int]:
        """``(True, NO_CLOUDBURST_ERROR)``, or ``(False, DAG_ALREADY_EXISTS)`` if ``name`` is a DAG already;
        ``RuntimeError`` if a function is not registered. ``colocated`` is a hint cbctl's policy does not need
        (it places a DAG's functions by load and locality)."""
        listed = self.client.list()
        known = {f["name"] for f in listed["functions"]}
        for fname in shapes.function_names(functions):
            if fname not in known:
                raise RuntimeError(f"Function {fname} not registered. Please register before including it in a DAG.")
        if name in {d["name"] for d in listed["dags"]}:
            return False, DAG_ALREADY_EXISTS
        shape = shapes.from_cloudburst(name, functions, connections)
        gpu, batching = set(shapes.function_names(gpu_functions)), set(shapes.function_names(batching_functions))
        for fname in sorted(gpu | batching):
            body = self._bodies.get(fname)
            if body is None:
                raise InvalidArgument(f"{fname!r} is listed in gpu_functions or batching_functions but was not "
                                      "registered by this connection: register it here first")
            self.client.register(body, name=fname, gpu=fname in gpu, batching=fname in batching)
        for helper, (fname, invalid_results) in shape.filters.items():
            self.client.register(FirstValid(fname, invalid_results), name=helper)
        options = {"multiexec": shape.multiexec} if shape.multiexec else {}
        self.client.register_dag(name, shape.functions, shape.edges, **options)
        return True, NO_CLOUDBURST_ERROR

    def delete_dag(self, dname: str) -> tuple[bool, int]:
        listed = self.client.list()
        dags = {d["name"] for d in listed["dags"]}
        if dname not in dags:
            return False, NO_SUCH_DAG
        mine = shapes.variant_prefix(dname)
        for variant in [d for d in dags if d.startswith(mine)]:
            self.client.delete(variant)
            self._variants.pop(variant, None)
        self.client.delete(dname)
        self._known_sources.pop(dname, None)
        for f in listed["functions"]:
            if f["name"].startswith(mine):  # its first-valid and fixed-args helpers
                self.client.delete(f["name"])
        return True, NO_CLOUDBURST_ERROR

    # --- calls ---------------------------------------------------------------------------------------

    def call_dag(self, dname: str, arg_map: dict[str, Any], direct_response: bool = False,
                 consistency: int | str = NORMAL, output_key: str | None = None, client_id: str | None = None,
                 dry_run: bool = False, continuation: DagCall | None = None) -> Any:
        """With ``direct_response`` the DAG's result (``cbctl.CallTimeout`` past cbctl's call timeout, where
        Cloudburst returned None after 1 s); else a ``CloudburstFuture``. ``arg_map`` maps functions to their
        arguments (a list, or one value); a function that is not a source gets them before its upstream
        results. ``continuation``, a ``dry_run`` call of another DAG, is called with this DAG's result added to
        its sources' arguments, and its result is this call's."""
        if dry_run:
            return DagCall(dname, {f: v if type(v) is list else [v] for f, v in arg_map.items()}, consistency,
                           output_key or "", client_id or "", self.response_address if direct_response else "")
        mode = _mode(consistency)
        args = {fname: [self._argument(a) for a in (v if type(v) is list else [v])] for fname, v in arg_map.items()}
        tail = None
        if continuation is not None:
            tail = self._continuation_tail(continuation, direct_response)
        if output_key and not direct_response:  # Cloudburst wrote a direct response to the client only
            tail = tail or CallTail()
            tail.output_key = output_key
        target = dname
        fixed = [f for f in args if f not in self._sources(dname)] if args else []
        if tail is not None or fixed:
            target, sources = self._variant(dname, fixed, tail)
            args = {(f if f in sources else shapes.fixed_args_name(dname, f)): values for f, values in args.items()}
            if tail is not None:
                args[shapes.TAIL_SOURCE] = [tail]
        if direct_response:
            return self.client.call(target, consistency=mode, **args)
        call = self.client.call_async(target, consistency=mode, store_result=True, **args)
        call.delete_stored_after_read = False  # Cloudburst's results stay in the KVS: a future from the id reads it
        return CloudburstFuture(output_key or call.call_id, self.kvs_client, call=call, output_key=output_key)

    def _continuation_tail(self, continuation: Any, direct_response: bool) -> CallTail:
        if not isinstance(continuation, DagCall):
            raise InvalidArgument(f"continuation={continuation!r} is not a DAG call: pass what call_dag(..., "
                                  "dry_run=True) returned")
        if bool(continuation.response_address) != direct_response:
            raise RuntimeError("Continuation does not have same direct response setting as current call.")
        if continuation.output_key:
            raise InvalidArgument(f"the continuation call of {continuation.name!r} has an output_key, which cbctl's "
                                  "compat layer cannot honour (a continuation's result is its caller's): give the "
                                  "output_key to the first call_dag")
        try:
            sources = self._sources(continuation.name)
        except cbctl.NoSuchFunction:
            raise cbctl.NoSuchFunction(f"the continuation names {continuation.name!r}, which is not a registered "
                                       "DAG") from None
        given = {fname: list(values) for fname, values in continuation.function_args.items()}
        if set(given) - set(sources):
            raise InvalidArgument(f"the continuation gives arguments to {sorted(set(given) - set(sources))}, which "
                                  f"are not sources of {continuation.name!r} (its sources: {', '.join(sources)})")
        if len({repr(given.get(s, [])) for s in sources}) > 1:
            raise InvalidArgument(f"the continuation gives the sources of {continuation.name!r} different arguments; "
                                  "cbctl hands a continuation one argument list, for every source: give them the same")
        fixed = [self._argument(a) for a in given.get(sources[0], [])]
        return CallTail(continuation=continuation.name, continuation_args=fixed)

    def exec_func(self, name: str, args: Sequence[Any]) -> str:
        """Call function ``name`` with ``args``; returns the response id (``CloudburstFuture(id, ...)`` reads
        the result)."""
        call = self._start_call(name, list(args))
        self.rid += 1
        return call.call_id

    def _start_call(self, name: str, args: list[Any]) -> CallFuture:
        call = self.client.call_async(name, *[self._argument(a) for a in args], store_result=True)
        call.delete_stored_after_read = False  # as above
        return call

    def _argument(self, value: Any) -> Any:
        """A call argument as cbctl sends it: a reference becomes a ``cbctl.Ref`` (the executor resolves it, the
        scheduler places the call by it); a future becomes its value (this waits for it)."""
        if isinstance(value, CloudburstReference):
            return Ref(value.key)
        if isinstance(value, CloudburstFuture):
            return value.get()
        return value

    def _sources(self, dname: str) -> list[str]:
        """The sources of DAG ``dname``, looked up once per connection (a DAG's shape is fixed while it exists:
        registering it again is refused, and ``delete_dag`` here forgets it)."""
        sources = self._known_sources.get(dname)
        if sources is None:
            found = self._dag_entry(dname)
            functions = found["functions"]
            sources = self._known_sources[dname] = shapes.sources_of(
                functions, shapes.chain_if_no_edges(functions, found["edges"]))
        return sources

    def _dag_entry(self, dname: str) -> dict[str, Any]:
        found = [d for d in self.client.list()["dags"] if d["name"] == dname]
        if not found:
            raise cbctl.NoSuchFunction(f"no DAG is registered as {dname!r}: register it with register_dag")
        return found[0]

    def _variant(self, dname: str, fixed: list[str], tail: CallTail | None) -> tuple[str, list[str]]:
        """The variant of ``dname`` for a call with fixed arguments for the inner functions ``fixed`` and/or a
        tail (``shapes.variant``), registered on first use; and the sources of ``dname``."""
        name = shapes.variant_name(dname, fixed, tail is not None)
        if name in self._variants:
            return name, self._variants[name]
        found = self._dag_entry(dname)
        multiexec = set(found["options"].get("multiexec") or ()) & set(fixed)
        if multiexec:
            raise InvalidArgument(f"arguments given for MULTIEXEC function(s) {sorted(multiexec)} of {dname!r}: "
                                  "it runs once per input, so give its arguments to the function upstream of it")
        try:
            functions, edges = shapes.variant(dname, found["functions"], found["edges"], fixed, tail is not None)
        except cbctl.InvalidDag as exc:
            raise InvalidArgument(str(exc)) from None
        known = {f["name"] for f in self.client.list()["functions"]}
        helpers: dict[str, Any] = {shapes.fixed_args_name(dname, f): FixedArgs for f in fixed}
        if tail is not None:
            helpers.update({shapes.TAIL_SOURCE: TailSource, shapes.TAIL: Tail})
        for helper, kind in helpers.items():
            if helper not in known:
                self.client.register(kind(), name=helper)
        self.client.register_dag(name, functions, edges, **found["options"])
        sources = self._variants[name] = self._sources(dname)
        return name, sources

    # --- the store -----------------------------------------------------------------------------------

    def get_object(self, key: str) -> Any:
        """The value under ``key``, None if there is none."""
        try:
            return self.client.get(key)
        except NoSuchKey:
            return None

    def put_object(self, key: str, value: Any) -> bool:
        """Store ``value`` under ``key`` (last writer wins; an ``anna.lattices`` object is stored as that object)."""
        self.client.put(key, value)
        return True

    # --- lifetime ------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the cbctl client (also done when the connection is collected, or at exit)."""
        self._close()

    def __enter__(self) -> CloudburstConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _function_names(self, prefix: str | None = None) -> list[str]:
        return [f["name"] for f in self.client.list()["functions"]
                if not shapes.is_helper(f["name"]) and f["name"].startswith(prefix or "")]


def _mode(consistency: Any) -> str:
    """The cbctl consistency mode for a Cloudburst ``ConsistencyType`` (a cbctl mode name passes as it is)."""
    if isinstance(consistency, str):
        return consistency
    try:
        return CBCTL_MODES[consistency]
    except (KeyError, TypeError):
        raise InvalidArgument(f"consistency {consistency!r} is not a Cloudburst ConsistencyType: pass NORMAL, "
                              "SINGLE or MULTI") from None


__all__ = ["CloudburstConnection", "CloudburstError", "DagCall", "connect_to"]
