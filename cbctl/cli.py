"""The ``cbctl`` command: argument parsing and rendering only; the work is in the library.

Long on purpose: one click command per ``cbctl`` subcommand, each short, with its help text; the rendering of
``cbctl top`` is ``top.py``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cbctl import lifecycle
from cbctl.errors import CbctlError, FunctionError, InvalidArgument
from cbctl.runtime import cluster
from cbctl.runtime.defaults import (
    CALL_TIMEOUT_S,
    DEPARTURE_TIMEOUT_S,
    DEPLOY_IMPORT_TIMEOUT_S,
    JOIN_TIMEOUT_S,
    MAX_BATCH,
    MAX_CONTINUATIONS,
    MAX_ERROR_MESSAGE_CHARS,
    MAX_ERROR_TRACEBACK_CHARS,
    MAX_MESSAGE_BYTES,
    MAX_TRIGGER_DEPTH,
    TOP_INTERVAL_S,
    TOP_SORT_KEYS,
)

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from cbctl.client import Client

# What only some commands use (the client, rich, the top view) is imported by them: `cbctl up` is the first
# thing a user runs and waits for, and most of its time was once the imports of things it never used.


def _quiet_exit_on_closed_pipe() -> None:
    """The reader of stdout went away (``cbctl logs | head -1``): end quietly with 0, as Unix tools do. stdout
    points at /dev/null from here on, so the interpreter's own flush at exit does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(0)


class _LazyConsole:
    """A rich ``Console`` made (and rich imported) when first used; on stdout, a closed pipe ends the command
    with 0 (rich's own default is exit 1)."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Console | None = None

    def get(self) -> Console:
        if self._console is None:
            from rich.console import Console

            class _Console(Console):
                def on_broken_pipe(self) -> None:
                    _quiet_exit_on_closed_pipe()

            self._console = _Console(**self._options)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)


console = _LazyConsole(soft_wrap=True)  # a path or a message is never cut into lines a script would have to rejoin
errors = _LazyConsole(stderr=True, soft_wrap=True)  # soft_wrap: an error stays one line, whatever the width


def connect_client(home: str | None) -> Client:
    from cbctl.client import Client

    return Client(home)


def handle_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Every expected failure is one clear line on stderr and exit code 1, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except FunctionError as exc:
            from cbctl.runtime import user_errors

            if exc.remote_type in user_errors.DIAGNOSES:  # cbctl's finding, not something the code raised
                errors.print(f"error: {exc.args[0]}", markup=False, highlight=False)
                sys.exit(1)
            if exc.remote_traceback:
                errors.print(exc.remote_traceback.rstrip(), markup=False, highlight=False)
            # the traceback ends with the message already: the error line needs only its start
            errors.print(f"error: the function raised {_shown(str(exc))}", markup=False, highlight=False)
            sys.exit(1)
        except BrokenPipeError:
            _quiet_exit_on_closed_pipe()
        except CbctlError as exc:
            user_traceback = getattr(exc, "user_traceback", "")  # a DeployFileError's: the deploy file's own
            if user_traceback:
                from cbctl.runtime import user_errors

                errors.print(user_errors.cut(user_traceback.rstrip(), MAX_ERROR_TRACEBACK_CHARS, keep_tail=True),
                             markup=False, highlight=False)
            errors.print(f"error: {_shown(str(exc))}", markup=False, highlight=False)
            sys.exit(1)
        except Exception as exc:  # the machine said no (a full disk, a file gone): still one line
            zmq = sys.modules.get("zmq")  # a ZMQError comes only from a command that imported zmq
            if not isinstance(exc, OSError) and (zmq is None or not isinstance(exc, zmq.ZMQError)):
                raise
            errors.print(f"error: {exc}", markup=False, highlight=False)
            sys.exit(1)

    return wrapper


def _shown(text: str) -> str:
    """An error line's text, at most ``MAX_ERROR_MESSAGE_CHARS`` (a 50 MB message is not a line to print)."""
    from cbctl.runtime import user_errors

    return user_errors.cut(text, MAX_ERROR_MESSAGE_CHARS)


def new_table(title: str, *columns: str) -> Table:
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    return table


def parse_value(text: str, what: str = "value") -> Any:
    """A command-line value: JSON when it parses as JSON, else the string itself; but text that starts like
    a JSON object, array or string must parse, so a typo in `{"a": 1` is not silently stored as a string."""
    try:
        return json.loads(text)
    except ValueError as exc:
        if text.lstrip()[:1] in ('{', '[', '"'):
            shown = text if len(text) <= 40 else text[:37] + "..."
            raise InvalidArgument(f"{what} {shown!r} looks like JSON but does not parse ({exc}): fix it, or "
                                  f"to pass it as a string quote it as a JSON string, e.g. {json.dumps(shown)!r}"
                                  ) from None
        return text


def render_value(value: Any, as_json: bool) -> str:
    """A value for the terminal: a string as it is, anything else as JSON when it has a JSON form, else its
    repr; with ``as_json`` always JSON (``json_form``), or a ``CbctlError`` saying what has none."""
    if as_json:
        return json.dumps(json_form(value), allow_nan=False)
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return repr(value)


def json_form(value: Any, where: str = "the value") -> Any:
    """``value`` in the JSON encoding of ``--json`` output (README, "JSON output"): numpy arrays as nested lists
    (masked entries null), numpy scalars as numbers, bytes as ``{"base64": ...}``, sets as sorted lists, tuples as
    lists, complex numbers as ``{"real", "imag"}``, dates and times in ISO 8601, timedeltas in seconds, NaN and
    infinities as null (as JavaScript's JSON.stringify writes them), a ``cbctl.Ref`` as ``{"ref": key}``.
    Anything else raises a ``CbctlError`` naming where it is: no output a script would misparse."""
    kind = type(value)
    if value is None or kind in (bool, int, str):
        return value
    if kind is float or isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return [json_form(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise CbctlError(f"{where} has a key of type {type(key).__name__} ({key!r:.40}), which JSON "
                                 "cannot carry (keys are strings): print it without --json")
            out[key if isinstance(key, str) else json.dumps(key)] = json_form(item, f"{where}[{key!r}]")
        return out
    if isinstance(value, (bytes, bytearray, memoryview)):
        import base64  # here, as datetime below: only --json output needs them, and `cbctl up` waits for its imports

        return {"base64": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, (set, frozenset)):
        try:
            items = sorted(value)
        except TypeError:
            items = sorted(value, key=repr)
        return [json_form(v, f"{where} item") for v in items]
    if isinstance(value, int):  # an IntEnum, say
        return int(value)
    if isinstance(value, complex):
        return {"real": json_form(value.real), "imag": json_form(value.imag)}
    import datetime

    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    from cbctl.runtime.wire.serialization import Ref  # here: it imports msgpack and cloudpickle

    if isinstance(value, Ref):
        return {"ref": value.key}
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, (numpy.ndarray, numpy.generic)):
        if value.dtype.kind == "M" and not value.dtype.name.endswith(("[s]", "[ms]", "[us]", "[D]", "[W]")):
            value = value.astype("datetime64[us]")  # finer units: tolist() gives bare ints, not dates
        return json_form(value.tolist(), where)
    raise CbctlError(f"{where} is a {kind.__name__}, which has no JSON form: print it without --json, or return "
                     "plain data (numbers, strings, lists, dicts, bytes, numpy arrays)")


def print_json(value: Any) -> None:
    click.echo(json.dumps(json_form(value), indent=2, allow_nan=False))


def home_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--home", envvar="CBCTL_HOME", default=None, show_default="$CBCTL_HOME or ~/.cbctl",
                        callback=_home_from_group, help="Cluster directory.")(command)


def _home_from_group(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """``cbctl --home X CMD`` as ``cbctl CMD --home X``: the command's own --home wins, then the group's, then
    $CBCTL_HOME."""
    if ctx.get_parameter_source("home") is click.core.ParameterSource.COMMANDLINE:
        return value
    return ctx.find_root().params.get("home") or value


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cbctl")
@click.option("--home", default=None, metavar="DIR",
              help="Cluster directory for the command that follows (as its own --home). [default: $CBCTL_HOME "
                   "or ~/.cbctl]")
def main(home: str | None) -> None:
    """cbctl: stateful functions as a service on your machine, in the line of Cloudburst.

    \b
    Examples:
    cbctl up                      start a cluster (store, scheduler, executors)
    cbctl deploy examples/fn.py   register the functions and DAGs a file declares
    cbctl call pipeline 3         call a function or DAG and print its result
    cbctl down                    stop everything
    """


@main.command()
@click.option("--executors", type=int, default=None, help="CPU executors. [default: CPU count]")
@click.option("--gpu-executors", type=int, default=None, help="GPU executors, one device each. [default: GPUs found]")
@click.option("--schedulers", type=int, default=1, show_default=True, help="Schedulers.")
@click.option("--foreground", is_flag=True, help="Stay attached; Ctrl-C stops the cluster.")
@click.option("--listen", default="", metavar="tcp://HOST[:PORT]",
              help="Use TCP on HOST instead of ipc sockets in the home; PORT is the first scheduler's (others "
                   "are random). Sockets then require the CURVE keys written to HOME/keys.")
@click.option("--no-auth", is_flag=True,
              help="With a loopback --listen only: plain TCP without keys (any local user can then run code "
                   "in the cluster).")
@click.option("--durability", type=click.Choice(lifecycle.DURABILITY_MODES), default="batch", show_default=True,
              help="When the store fsyncs its log: every write, at most every 50 ms, or never.")
@click.option("--departure-timeout", "departure_timeout", type=float, default=DEPARTURE_TIMEOUT_S, show_default=True,
              metavar="S", help="Seconds an executor departing in a `cbctl scale` down may finish its calls; past "
                                "it, it is stopped and its calls are dispatched again on the executors that stay.")
@click.option("--salvage", is_flag=True,
              help="Start even if the store's log or snapshot is damaged: keep every intact record, move the "
                   "damaged file aside and report what was dropped (without it, such damage stops `cbctl up`).")
@click.option("--cache-mb", type=click.IntRange(min=0), default=64, show_default=True,
              help="Each executor's cache of store values, in MiB (0: no cache).")
@click.option("--fake-gpus", type=int, default=0, envvar="CBCTL_FAKE_GPUS", hidden=False,
              help="TESTING ONLY: pretend N GPUs exist so GPU executors start without a device "
                   "(their functions then run on the CPU; never use it for real work).")
@click.option("--max-batch", type=int, default=MAX_BATCH, show_default=True,
              help="Most queued calls of a batching=True function one invocation serves.")
@click.option("--max-continuations", type=int, default=MAX_CONTINUATIONS, show_default=True,
              help="Most cbctl.Continue hand-offs one call may make before it fails.")
@click.option("--max-trigger-depth", type=int, default=MAX_TRIGGER_DEPTH, show_default=True,
              help="Most storage-triggered calls in one chain (a call's put firing the next); a put past it is "
                   "stored but fires nothing, and the store logs an error.")
@click.option("--executor-memory-mb", type=int, default=0, show_default=True,
              help="Recycle an executor whose resident memory is over this many MiB after a call: it finishes its "
                   "queue and leaves, and a fresh one starts (0: never).")
@click.option("--max-message-mb", type=int, default=MAX_MESSAGE_BYTES >> 20, show_default=True,
              help="Largest serialised value, in MiB: call arguments, a result, a put (larger ones are refused "
                   "with MessageTooLarge).")
@click.option("--verbose", "-v", is_flag=True, help="Also show where the start-up time went, phase by phase.")
@click.option("--store", default="", envvar="CBCTL_STORE", metavar="URL",
              help="Keep the data in Redis instead of a store process: redis://[USER:PASS@]HOST:PORT[/DB], "
                   "rediss://... (TLS) or redis+cluster://HOST:PORT[,HOST:PORT...] (see README, Store backends).")
@click.option("--policy", "policy", multiple=True, metavar="KEY=VALUE",
              help="Tune the placement policy (repeatable), e.g. placement=cloudburst (Cloudburst's policy instead "
                   "of placement by outstanding work) scale_in_calm_s=5 locality=false; keys and defaults are in "
                   "cbctl/runtime/defaults.py (POLICY_*); with --autoscale also autoscale_NAME=VALUE (AUTOSCALE_*), "
                   "e.g. autoscale_down_window_s=10.")
@click.option("--autoscale", default="", metavar="MIN:MAX",
              help="Run between MIN and MAX CPU executors as the load asks (MIN may be 0: an idle cluster then "
                   "runs none, and the first call starts one); MIN: takes the default MAX, one per core within "
                   "half the free memory. Starts at --executors if given, else MIN.")
@home_option
@handle_errors
def up(executors: int | None, gpu_executors: int | None, schedulers: int, foreground: bool, listen: str,
       durability: str, cache_mb: int, fake_gpus: int, max_batch: int, max_continuations: int,
       max_message_mb: int, policy: tuple[str, ...], no_auth: bool, max_trigger_depth: int,
       executor_memory_mb: int, verbose: bool, autoscale: str, store: str, departure_timeout: float, salvage: bool,
       home: str | None) -> None:
    """Start a cluster in the home directory and return once every process is ready.

    The home is made private to you (0700/0600). With --listen, every TCP socket is a CURVE server that
    admits only holders of the keys generated in HOME/keys (a client in another home needs copies of
    cluster.json and keys/).

    \b
    Examples:
    cbctl up --executors 4 --gpu-executors 1
    cbctl up --listen tcp://127.0.0.1:7100    the scheduler on port 7100, CURVE keys in HOME/keys
    cbctl up --verbose                        and where the time went
    cbctl up --autoscale 0:4                  0 to 4 CPU executors, following the load
    cbctl up --store redis://127.0.0.1:6379   the data in Redis (AOF on, maxmemory-policy noeviction)
    cbctl up --salvage                        start over a damaged log, keeping its intact records
    """
    stamps = {"cli_started": lifecycle.process_started_at(), "cli_entered": time.time()}
    home_path = cluster.resolve_home(home)
    lock_fd = lifecycle.claim_home(home_path)  # held from here: nobody else starts or cleans up this home
    try:
        spec, notes = lifecycle.plan_up(
            home_path, executors=executors, gpu_executors=gpu_executors, schedulers=schedulers, listen=listen,
            no_auth=no_auth, durability=durability, cache_mb=cache_mb, fake_gpus=fake_gpus, max_batch=max_batch,
            max_continuations=max_continuations, max_message_mb=max_message_mb, policy=policy,
            max_trigger_depth=max_trigger_depth, executor_memory_mb=executor_memory_mb, autoscale=autoscale,
            store=store, salvage=salvage, departure_timeout_s=departure_timeout, holding_lock=True)
        for note in notes:
            errors.print(note, markup=False)
        started = time.monotonic()
        stamps["launching"] = time.time()
        proc = lifecycle.start_supervisor(home_path, spec, foreground, lock_fd=lock_fd)
        with status_after(SPINNER_AFTER_S, "starting the cluster..."):
            found = lifecycle.wait_until_up(home_path, proc)
    finally:
        lifecycle.release_home(lock_fd)  # the supervisor holds its own copy for its life
    stamps["seen"] = time.time()
    for line in lifecycle.salvage_report(home_path, since=time.time() - (time.monotonic() - started)):
        errors.print(f"warning: {line}", markup=False)
    counts = f"{spec.executors} CPU + {spec.gpu_executors} GPU executors, {spec.schedulers} scheduler(s)"
    if spec.autoscale:
        counts += f", autoscaling {spec.autoscale[0]}:{spec.autoscale[1]} CPU executors"
    click.echo(f"cluster up in {home_path} ({counts}) in {time.monotonic() - started:.1f} s")
    stamps["printed"] = time.time()
    if verbose:
        click.echo(f"  {'phase':<38}{'took':>9} {'at':>9}")
        for name, took_s, at_s in lifecycle.startup_phases({**found.startup, **stamps}):
            click.echo(f"  {name:<38}{took_s * 1e3:>6.0f} ms {at_s * 1e3:>6.0f} ms")
    if spec.curve and not lifecycle.is_loopback(spec.listen):
        host = spec.listen.removeprefix("tcp://")
        click.echo(f"other machines join it (or call it) with a copy of {home_path / 'cluster.json'} and "
                   f"{home_path / 'keys'}; on each, run:\n  {lifecycle.copy_command(home_path, host)}\n"
                   f"  cbctl join {found.scheduler_addresses[0]} --executors N")
    if foreground:
        console.print("running in the foreground: Ctrl-C stops it", markup=False)
        try:
            proc.wait()
        except KeyboardInterrupt:
            lifecycle.stop_cluster(home_path)
        del found


#: Seconds `cbctl up` waits before it shows a spinner: a start that is over by then needs none (nor rich's import).
SPINNER_AFTER_S = 0.7


@contextlib.contextmanager
def status_after(delay_s: float, text: str) -> Iterator[None]:
    """A spinner with ``text`` on stderr once ``delay_s`` passed, until the block ends."""
    lock = threading.Lock()  # the spinner starts in the timer's thread, and must not start after the block
    ended = False
    spinners: list[Any] = []

    def show() -> None:
        with lock:
            if not ended:
                spinners.append(errors.status(text))
                spinners[-1].start()

    timer = threading.Timer(delay_s, show)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        with lock:
            ended = True
            for spinner in spinners:
                spinner.stop()


@main.command()
@home_option
@handle_errors
def down(home: str | None) -> None:
    """Stop the cluster: drain executors, stop schedulers, flush the store; return when all are gone.

    Calls in flight finish (executors run what they were sent) or fail with a clear error; SIGTERM or
    SIGINT to the supervisor does the same.

    Example: cbctl down
    """
    home_path = cluster.resolve_home(home)
    with console.status("stopping the cluster..."):
        count = lifecycle.stop_cluster(home_path)
    console.print(f"cluster in {home_path} stopped ({count} processes)", markup=False)


@main.command()
@click.argument("head", metavar="tcp://HEAD:PORT")
@click.option("--executors", type=int, default=None,
              help="CPU executors on this machine. [default: CPU count; 0 with --max-executors]")
@click.option("--gpu-executors", type=int, default=0, show_default=True, help="GPU executors, one device each.")
@click.option("--max-executors", type=int, default=0, show_default=True,
              help="Offer the head's autoscaler up to N CPU executors here (it starts and departs them; "
                   "--executors, default 0 then, is how many start). 0: --executors stays fixed.")
@click.option("--advertise", default=None, metavar="tcp://ADDR",
              help="The address of this machine that the head and other hosts reach it at (executors bind random "
                   "ports of it). [default: this machine's address on the route to the head]")
@click.option("--name", default=None, help="This host's name: executors here are NAME/executor-N. [default: ADDR]")
@click.option("--cache-mb", type=click.IntRange(min=0), default=64, show_default=True,
              help="Each executor's cache of store values, in MiB.")
@click.option("--fake-gpus", type=int, default=0, envvar="CBCTL_FAKE_GPUS", help="For testing only (see `up`).")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=JOIN_TIMEOUT_S, show_default=True,
              help="Seconds to wait for the head's first answer before giving up.")
@home_option
@handle_errors
def join(head: str, executors: int | None, gpu_executors: int, max_executors: int, advertise: str | None,
         name: str | None, cache_mb: int, fake_gpus: int, timeout: float, home: str | None) -> None:
    """Join this machine to the cluster whose head listens at HEAD: start executors here that take its calls.

    The home must hold copies of the head's cluster.json and keys/ directory (server.key, server.key_secret,
    client.key, client.key_secret); `cbctl up --listen` on the head prints the command that copies them.
    Returns once every executor here is registered with the head's schedulers. `cbctl leave` departs them.

    With --max-executors N the head's autoscaler (`cbctl up --autoscale MIN:MAX` there) may run up to N CPU
    executors here: it adds them when work waits and departs them, gracefully, when the cluster is calm.

    \b
    Examples:
      cbctl join tcp://10.0.0.1:7100 --executors 4 --advertise tcp://10.0.0.2
      cbctl join tcp://10.0.0.1:7100 --max-executors 8
    """
    home_path = cluster.resolve_home(home)
    if executors is None:
        executors = 0 if max_executors else os.cpu_count() or 1
    spec = lifecycle.plan_join(home_path, head, executors, gpu_executors, advertise, name, fake_gpus, cache_mb,
                               timeout, max_executors)
    started = time.monotonic()
    proc = lifecycle.start_node(home_path, spec)
    with console.status(f"joining {head}..."):
        node = lifecycle.wait_until_joined(home_path, proc, expect_executors=executors + gpu_executors > 0)
    console.print(f"joined {head} as {node.host}: {len(node.executors)} executor(s) at {spec.advertise} in "
                  f"{time.monotonic() - started:.1f} s", markup=False)


@main.command()
@home_option
@handle_errors
def leave(home: str | None) -> None:
    """Take this machine's executors out of the cluster it joined: each finishes what it was sent (no call is
    lost) and the head stops placing work here; returns when they are gone.

    Example: cbctl leave
    """
    home_path = cluster.resolve_home(home)
    with console.status("leaving the cluster..."):
        node = lifecycle.leave(home_path)
    console.print(f"{node.host} left {node.head} ({len(node.executors)} executor(s) stopped)", markup=False)


@main.command()
@click.option("--executors", type=int, required=True, help="CPU executors to run (0 only with GPU executors).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@home_option
@handle_errors
def scale(executors: int, as_json: bool, home: str | None) -> None:
    """Start CPU executors, or depart the highest-numbered ones gracefully (each finishes the work it was
    sent, so no call is lost), and return when done.

    Example: cbctl scale --executors 2
    """
    with console.status(f"scaling to {executors} CPU executors..."):
        from cbctl import control

        result = control.scale_cluster(cluster.resolve_home(home), executors)
    if as_json:
        print_json(result)
        return
    changes = [f"started {', '.join(result['started'])}"] if result["started"] else []
    changes += [f"stopped {', '.join(result['stopped'])}"] if result["stopped"] else []
    changes += [f"{', '.join(result['cut_short'])} cut short past the departure timeout: its calls were "
                "dispatched again"] if result.get("cut_short") else []
    console.print(f"{result['executors']} CPU executors" + (f" ({'; '.join(changes)})" if changes else
                                                            " (unchanged)"), markup=False)


@main.command()
@click.argument("span", metavar="MIN:MAX|off")
@click.option("--policy", "policy", multiple=True, metavar="autoscale_NAME=VALUE",
              help="Tune the autoscaler (repeatable), e.g. autoscale_down_window_s=10; names and defaults are in "
                   "cbctl/runtime/defaults.py (AUTOSCALE_*).")
@click.option("--executors", type=int, default=None,
              help="With off: the fixed number of CPU executors to keep. [default: as many as run now]")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@home_option
@handle_errors
def autoscale(span: str, policy: tuple[str, ...], executors: int | None, as_json: bool, home: str | None) -> None:
    """Let the cluster run between MIN and MAX CPU executors as the load asks (MIN may be 0), or with off keep a
    fixed number again. Executors are added when calls wait and removed (gracefully: no call is lost) after a
    calm window; every decision is a line in `cbctl logs supervisor`, counted in `cbctl top`.

    \b
    Example: cbctl autoscale 0:4
             cbctl autoscale 1: --policy autoscale_down_window_s=10
             cbctl autoscale off --executors 2
    """
    from cbctl import control

    result = control.autoscale_cluster(cluster.resolve_home(home), span, policy, executors)
    if as_json:
        print_json(result)
        return
    console.print(autoscale_line(result), markup=False)


def autoscale_line(state: dict[str, Any]) -> str:
    """One line on the autoscaler: its range and target, or the fixed size."""
    counts = f"scale-ups {state.get('scale_ups', 0)}, scale-downs {state.get('scale_downs', 0)}"
    if not state.get("enabled"):
        return f"autoscaling off: {state['executors']} CPU executors, fixed ({counts})"
    line = (f"autoscaling {state['min']}:{state['max']} CPU executors: target {state['target']}, "
            f"running {state['executors']}" + (f", departing {state['departing']}" if state.get("departing") else "")
            + "".join(f", {count} on {host}" for host, count in (state.get("hosts") or {}).items())
            + f" ({counts})")
    last = state.get("last_decision")
    if last:
        line += f"; last: {last['from']} -> {last['to']} {last['age_s']:.0f} s ago, {last['reason']}"
    return line


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@home_option
@handle_errors
def status(as_json: bool, home: str | None) -> None:
    """Show every process of the cluster (role, pid, address, state, uptime, restarts) and a health summary
    (calls/s, errors/s, executor states and utilization, the store), as `cbctl top` computes it. If the
    supervisor was killed, says so, stops the processes it left behind and exits 1: `cbctl up` in the same
    home then brings back every key and registration.

    Example: cbctl status --json
    """
    from cbctl import snapshot as snap
    from cbctl import top as topview

    with snap.ClusterProbe(cluster.resolve_home(home)) as probe:
        raw = probe.collect()
    report, snapshot = raw["supervisor"], snap.build_snapshot(raw)
    if as_json:
        print_json({**report, "health": snap.health(snapshot)})
        return
    from rich.table import Table

    table = Table(title=f"cluster {report['home']}  up {report['uptime_s']:.0f} s")
    # names and hosts whole (a script or a person greps them); the address gives way on a narrow terminal
    for column, values in (("process", [p["name"] for p in report["processes"]]),
                           ("host", [p.get("host", "") for p in report["processes"]])):
        table.add_column(column, no_wrap=True, min_width=max(map(len, values), default=0))
    for column in ("type", "pid", "address", "state", "uptime", "restarts"):
        table.add_column(column)
    for p in report["processes"]:
        table.add_row(p["name"], p.get("host", ""), p["executor_type"] or p["role"], str(p["pid"]), p["address"],
                      p["state"], f"{p['uptime_s']:.0f} s", str(p["restarts"]))
    console.print(table)
    for line in topview.health_lines(snapshot):
        console.print(line)
    if report.get("autoscale"):
        console.print(autoscale_line(report["autoscale"]), markup=False)


@main.command()
@click.option("--interval", type=click.FloatRange(min=0.1), default=TOP_INTERVAL_S, show_default=True,
              help="Seconds between refreshes.")
@click.option("--sort", type=click.Choice(TOP_SORT_KEYS), default="util", show_default=True,
              help="Order of the executors (and functions) tables.")
@click.option("--once", is_flag=True, help="Print one snapshot and exit.")
@click.option("--json", "as_json", is_flag=True, help="Print one snapshot as JSON (implies --once; see README).")
@home_option
@handle_errors
def top(interval: float, sort: str, once: bool, as_json: bool, home: str | None) -> None:
    """Live utilization tables: executors (utilization, CPU, memory, queue, calls/s, latency, state),
    functions and DAGs, the store. q or Ctrl-C quits. With stdout not a terminal (a pipe, a file), prints one
    snapshot every --interval seconds instead, until Ctrl-C or the reader goes away.

    Example: cbctl top --sort calls --interval 0.5
    """
    from cbctl import snapshot as snap
    from cbctl import top as topview

    home_path = cluster.resolve_home(home)
    if as_json or once:
        snapshot = snap.take_snapshot(home_path)
        if as_json:
            print_json(snapshot)
        else:
            console.print(topview.render(snapshot, sort, width=console.width))
        return
    if not console.is_terminal:  # a pipe, a file, a CI log: snapshots one after the other, as `top -b` prints
        topview.run_snapshots(home_path, interval, sort, console.get())
        return
    topview.run_live(home_path, interval, sort, console.get())


@main.command()
@click.argument("key")
@click.argument("value")
@click.option("--ephemeral", is_flag=True, help="In the store's memory only, never logged; gone after --ttl.")
@click.option("--ttl", type=float, default=None, help="Seconds an --ephemeral value lives (default 300).")
@home_option
@handle_errors
def put(key: str, value: str, ephemeral: bool, ttl: float | None, home: str | None) -> None:
    """Write VALUE under KEY: JSON when it parses, else a string; - reads VALUE from stdin (for big values).

    \b
    Example: cbctl put greeting '"hello"'
             cbctl put config '{"retries": 3}'
             cbctl put report - < report.json
             cbctl put scratch/1 '[1, 2]' --ephemeral --ttl 60
    """
    if value == "-":
        value = sys.stdin.read()
    with connect_client(home) as client:
        if not client.put(key, parse_value(value), durable=not ephemeral, ttl=ttl):
            raise CbctlError(f"{key!r} was not stored: a write stamped later by another writer won (last writer "
                             "wins); read it with `cbctl get`, and put again to replace it")
    console.print(f"stored {key}" + (" (ephemeral)" if ephemeral else ""), markup=False)


@main.command()
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="Print the value as JSON.")
@home_option
@handle_errors
def get(key: str, as_json: bool, home: str | None) -> None:
    """Print the value stored under KEY.

    Example: cbctl get greeting
    """
    with connect_client(home) as client:
        value = client.get(key)
    click.echo(render_value(value, as_json))


@main.command()
@click.argument("role", required=False, default="")
@click.option("-f", "--follow", is_flag=True, help="Keep printing as the logs grow (Ctrl-C stops).")
@click.option("-n", "--lines", type=click.IntRange(min=0), default=50, show_default=True,
              help="Last lines of each log to show first (0: none).")
@home_option
@handle_errors
def logs(role: str, follow: bool, lines: int, home: str | None) -> None:
    """Print the per-process logs; ROLE narrows them (store, scheduler, executor, executor-1, supervisor; node on
    a joined host).

    Example: cbctl logs executor -f
    """
    directory = cluster.resolve_home(home) / "logs"

    def matching() -> list[Path]:
        return sorted(p for p in directory.glob("*.log") if p.stem.startswith(role))

    files = matching()
    if not files:
        raise InvalidArgument(f"no logs{' for ' + repr(role) if role else ''} in {directory}: "
                              "roles are store (triggers on a Redis store), scheduler, executor and supervisor")
    positions = {}
    try:  # Ctrl-C is how -f ends, and may come at any point
        for path in files:
            text = path.read_text(errors="replace").splitlines()
            click.echo(f"==> {path.name} <==")
            for line in text[len(text) - lines:] if lines else ():
                click.echo(line)
            positions[path] = path.stat().st_size
        while follow:
            time.sleep(0.25)
            for path in matching():  # again each time: `cbctl scale` adds executors, and their logs
                size = path.stat().st_size
                if size > positions.setdefault(path, 0):
                    with open(path, errors="replace") as handle:
                        handle.seek(positions[path])
                        for line in handle.read().splitlines():
                            click.echo(f"{path.stem}: {line}")
                    positions[path] = size
    except KeyboardInterrupt:
        return


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print what was registered as JSON.")
@click.option("--import-timeout", type=click.FloatRange(min=0, min_open=True), default=DEPLOY_IMPORT_TIMEOUT_S,
              show_default=True, help="Seconds FILE's import may take before the deploy gives up (nothing is "
                                      "registered then).")
@home_option
@handle_errors
def deploy(file: Path, as_json: bool, import_timeout: float, home: str | None) -> None:
    """Register every function, DAG and trigger that FILE declares (replacing earlier ones of the same
    names). All of it is checked first, so a file with a mistake registers nothing.

    \b
    Example: cbctl deploy examples/pipeline.py
             cbctl deploy model.py --import-timeout 300
    """
    with connect_client(home) as client:
        registered = client.deploy_file(file, import_timeout)
    if as_json:
        print_json(registered)
        return
    for f in registered["functions"]:
        flags = ", ".join([k for k in ("gpu", "batching") if f[k]] + (["class"] if f.get("is_class") else []))
        console.print(f"function {f['name']}" + (f" ({flags})" if flags else ""), markup=False)
    for d in registered["dags"]:
        chain = [list(e) for e in zip(d["functions"], d["functions"][1:])]
        shape = " -> ".join(d["functions"]) if d["edges"] == chain else ", ".join(f"{a}->{b}" for a, b in d["edges"])
        console.print(f"dag      {d['name']}: {shape}", markup=False)
    for t in registered.get("triggers", []):
        console.print(f"trigger  {t['name']}: {describe_trigger(t)}", markup=False)


def describe_trigger(t: dict[str, Any]) -> str:
    """What fires a trigger, in words: 'puts under 'in/' call f', 'every 2.0 s, keys under 'ev/' call f', ..."""
    function = t["function"] + (" with values" if t.get("values") else "")
    if t.get("join"):
        shown = ", ".join(t["join"][:3]) + (f", ... ({len(t['join'])} keys)" if len(t["join"]) > 3 else "")
        return f"once all of {shown} are put, call {function}"
    if t.get("batch"):
        return f"every {t['batch']} keys put under {t['prefix']!r}, call {function}"
    if t.get("window_s"):
        return f"every {t['window_s']:g} s, the keys put under {t['prefix']!r} call {function}"
    return f"puts under {t['prefix']!r} call {function}"


@main.command()
@click.argument("name")
@click.argument("args", nargs=-1)
@click.option("--arg", "source_args", multiple=True, metavar="FUNCTION=VALUE",
              help="An argument of one source function of a DAG, given instead of ARGS to that source "
                   "(repeatable; repeat a function for several arguments).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=CALL_TIMEOUT_S,
              show_default=True, help="Seconds to wait for the result (past it: error CallTimeout, and the call "
                                      "may still be running).")
@click.option("--consistency", type=click.Choice(["lww", "repeatable_read", "causal"]), default="lww",
              show_default=True, help="Consistency of the call's reads and writes.")
@home_option
@handle_errors
def call(name: str, args: tuple[str, ...], source_args: tuple[str, ...], as_json: bool, timeout: float,
         consistency: str, home: str | None) -> None:
    """Call function or DAG NAME with ARGS (each JSON when it parses, else a string) and print the result.
    ARGS go to every source function of a DAG; --arg gives one source its own arguments instead.

    \b
    Example: cbctl call pipeline 3
             cbctl call wordcount 'the cat saw the dog' --json
             cbctl call pipeline --arg increment=3 --timeout 5
    """
    per_source: dict[str, list[Any]] = {}
    for item in source_args:
        function, sep, value = item.partition("=")
        if not sep or not function:
            raise InvalidArgument(f"--arg {item!r} must look like FUNCTION=VALUE")
        per_source.setdefault(function, []).append(parse_value(value, f"--arg {function} value"))
    values = [parse_value(a, "argument") for a in args]
    with connect_client(home) as client:
        result = client.call(name, *values, timeout=timeout, consistency=consistency, **per_source)
    click.echo(render_value(result, as_json))


@main.command(name="ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@home_option
@handle_errors
def list_registered(as_json: bool, home: str | None) -> None:
    """List registered functions (with where they are pinned) and DAGs.

    Example: cbctl ls --json
    """
    with connect_client(home) as client:
        registered = client.list()
    if as_json:
        print_json(registered)
        return
    functions = new_table("functions", "name", "gpu", "batching", "pinned on")
    for f in registered["functions"]:
        functions.add_row(f["name"], "yes" if f["gpu"] else "", "yes" if f["batching"] else "",
                          ", ".join(f["pinned"]) or "-")
    dags = new_table("DAGs", "name", "functions", "edges")
    for d in registered["dags"]:
        dags.add_row(d["name"], ", ".join(d["functions"]), ", ".join(f"{a}->{b}" for a, b in d["edges"]) or "-")
    console.print(functions)
    console.print(dags)


@main.command()
@click.argument("name")
@home_option
@handle_errors
def rm(name: str, home: str | None) -> None:
    """Remove the function or DAG NAME (a function a DAG or a trigger uses is refused: remove those first).

    Example: cbctl rm pipeline
    """
    with connect_client(home) as client:
        removed = client.delete(name)
    console.print(f"removed {removed['kind']} {removed['removed']}", markup=False)



@main.group()
def trigger() -> None:
    """Storage triggers: every put to a key under a prefix calls a function or DAG with (key, value);
    or a bucket of puts (--batch, --window, --join) calls it with the keys that filled it.

    Calls are asynchronous (the put does not wait) and at least once: a call that does not finish within
    30 s is sent again, so make trigger functions idempotent. Deletes do not fire.

    \b
    Examples:
    cbctl trigger add on_upload --prefix uploads/ --function thumbnail
    cbctl trigger add every100 --prefix events/ --batch 100 --function summarize
    cbctl trigger add tick --prefix events/ --window 2 --function summarize
    cbctl trigger add reduce --join part/0 --join part/1 --function reduce
    cbctl trigger ls
    cbctl trigger rm on_upload
    """


@trigger.command(name="add")
@click.argument("name")
@click.option("--prefix", default="", help="Watch keys starting with this (not with __cb/); not with --join.")
@click.option("--function", "function", required=True,
              help="Registered function or DAG to call with (key, value), or (keys) for a bucket.")
@click.option("--batch", type=int, default=0, help="Call once this many keys under --prefix were put.")
@click.option("--window", type=float, default=0.0, help="Call every this many seconds with the keys put meanwhile.")
@click.option("--join", "join", multiple=True, metavar="KEY", help="Call once every such KEY was put (repeat it).")
@click.option("--values", is_flag=True, help="With a bucket: pass (keys, values), not only keys.")
@click.option("--json", "as_json", is_flag=True, help="Print the trigger as JSON.")
@home_option
@handle_errors
def trigger_add(name: str, prefix: str, function: str, batch: int, window: float, join: tuple[str, ...],
                values: bool, as_json: bool, home: str | None) -> None:
    """Add trigger NAME (replacing one of the same name).

    \b
    Example: cbctl trigger add on_upload --prefix uploads/ --function thumbnail
             cbctl trigger add reduce --join part/0 --join part/1 --function reduce
    """
    with connect_client(home) as client:
        added = client.add_trigger(name, prefix, function, batch=batch, window=window, join=join, values=values)
    if as_json:
        print_json(added)
        return
    verb = "replaced" if added["replaced"] else "added"
    console.print(f"{verb} trigger {name}: {describe_trigger(added)}", markup=False)


@trigger.command(name="ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@home_option
@handle_errors
def trigger_ls(as_json: bool, home: str | None) -> None:
    """List triggers with the calls each fired and saw fail since the store started.

    Example: cbctl trigger ls --json
    """
    with connect_client(home) as client:
        found = client.list_triggers()
    if as_json:
        print_json(found)
        return
    table = new_table("triggers", "name", "fires", "fired", "waiting", "errors", "last error")
    for t in found:
        table.add_row(t["name"], describe_trigger(t), str(t["fired"]), str(t.get("waiting", "-")), str(t["errors"]),
                      t["last_error"] or "-")
    console.print(table)


@trigger.command(name="rm")
@click.argument("name")
@home_option
@handle_errors
def trigger_rm(name: str, home: str | None) -> None:
    """Remove trigger NAME (calls it already fired still run).

    Example: cbctl trigger rm on_upload
    """
    with connect_client(home) as client:
        client.remove_trigger(name)
    console.print(f"removed trigger {name}", markup=False)


if __name__ == "__main__":
    main()
