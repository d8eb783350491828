"""A first-time user's mistakes, from the shell and from Python: each gets one clear line naming what was
wrong and what to do (exit code 1; click's usage errors exit 2), never a traceback of cbctl's own, never a
crashed process or lost data.

One 2-executor cluster is shared by the module (tests use names of their own); tests about `cbctl up` use
homes where no cluster ever starts, except the one that needs a cluster on TCP.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

import cbctl
from cbctl.cli import main
from cbctl.lifecycle import kill_processes
from cbctl.runtime.cluster import ClusterFile
from tests.conftest import EXAMPLES, RunningCluster, run_cli
from tests.integration.shared_cluster import DEPLOYABLES

FUNCTIONS = DEPLOYABLES / "usability_fns.py"


pytestmark = [pytest.mark.cbctl(deploy=[EXAMPLES / "pipeline.py", FUNCTIONS]), pytest.mark.both_stores]


def one_error_line(result: subprocess.CompletedProcess[str], *fragments: str, code: int = 1) -> str:
    """The failure is exactly one line `error: ...` on stderr containing ``fragments``, with exit ``code``."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def restarts(handle: RunningCluster) -> dict[str, tuple[int, int]]:
    """Each process's (pid, restarts): unchanged across a test means nothing crashed."""
    status = json.loads(handle.cli("status", "--json", check=True).stdout)
    return {p["name"]: (p["pid"], p["restarts"]) for p in status["processes"]}


# --- help -------------------------------------------------------------------------------------------------


COMMANDS = [[], ["up"], ["down"], ["status"], ["put"], ["get"], ["logs"], ["deploy"], ["call"], ["ls"], ["rm"],
            ["top"], ["scale"], ["trigger"], ["trigger", "add"], ["trigger", "ls"], ["trigger", "rm"]]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_explains_itself_with_an_example(command):
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output.split("Options:")[0], result.output


def test_the_readme_command_table_lists_every_command():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme.split("## Commands", 1)[1].split("\n\n", 2)[1]
    for command in COMMANDS[1:]:
        named = " ".join(command)
        assert f"`cbctl {named}" in table or f"`{named} " in table, command  # `trigger ls` after `cbctl trigger add`


# --- values on the command line ---------------------------------------------------------------------------


def test_json_looking_values_must_parse_and_nothing_is_stored(shared):
    one_error_line(shared.cli("put", "ux-typo", '{"a": 1'), "'{\"a\": 1'", "does not parse", "quote it")
    one_error_line(shared.cli("get", "ux-typo"), "no value is stored under 'ux-typo'")
    one_error_line(shared.cli("call", "ux_identity", "[1, 2"), "argument '[1, 2'", "does not parse")
    one_error_line(shared.cli("call", "ux_chain", "--arg", "ux_identity={"), "--arg ux_identity value")
    # the escape hatch the message offers, and plain words, still work
    shared.cli("put", "ux-typo", '"{\\"a\\": 1"', check=True)
    assert shared.cli("get", "ux-typo", check=True).stdout.strip() == '{"a": 1'
    assert shared.cli("call", "ux_identity", "plain words", check=True).stdout.strip() == "plain words"


def test_empty_and_reserved_keys_are_refused_and_the_registry_is_untouched(shared):
    one_error_line(shared.cli("put", "", "1"), "key ''", "non-empty")
    one_error_line(shared.cli("put", "__cb/fn/increment", "1"), "'__cb/fn/increment'", "__cb/")
    one_error_line(shared.cli("get", "__cb/fn/increment"), "'__cb/fn/increment'", "__cb/")
    client = shared.client()
    for bad in ("", "__cb/dag/pipeline", 5):
        for attempt in (client.get, client.put, client.delete_key):
            with pytest.raises(cbctl.InvalidArgument, match="invalid"):
                attempt(*((bad, 1) if attempt == client.put else (bad,)))
    assert client.call("pipeline", 3, timeout=10) == 16  # its records under __cb/ are all still there


def test_fifty_megabytes_through_stdin_and_back(shared):
    big = "x" * (50 << 20)
    put = shared.cli("put", "ux-big", "-", input=big, timeout=60)
    assert put.returncode == 0, put.stderr
    got = shared.cli("get", "ux-big", timeout=60)
    assert got.returncode == 0 and got.stdout == big + "\n"
    client = shared.client()
    blob = os.urandom(50 << 20)
    client.put("ux-big-bytes", blob)
    assert client.get("ux-big-bytes") == blob


# --- functions that go wrong ------------------------------------------------------------------------------


def test_a_result_that_cannot_be_serialised_names_the_function_not_cbctl(shared):
    before = restarts(shared)
    line = one_error_line(shared.cli("call", "ux_lock"), "function 'ux_lock' returned a lock",
                          "cannot be serialised", "return plain data")
    assert "Traceback" not in line
    with pytest.raises(cbctl.FunctionError) as raised:
        shared.client().call("ux_lock", timeout=10)
    assert raised.value.remote_type == "ResultNotSerializable"
    assert "cbctl/runtime" not in raised.value.remote_traceback
    assert restarts(shared) == before


def test_a_wrong_argument_count_is_counted_after_cb(shared):
    one_error_line(shared.cli("call", "ux_add", "1"), "'ux_add' takes 2 arguments after cb", "called with 1")
    one_error_line(shared.cli("call", "ux_add", "1", "2", "3"), "takes 2 arguments after cb", "called with 3")
    client = shared.client()
    with pytest.raises(cbctl.FunctionError) as raised:
        client.call("pipeline", timeout=10)  # a DAG's source with no argument
    assert raised.value.remote_type == "WrongArgumentCount" and "'increment' takes 1 argument" in str(raised.value)
    with pytest.raises(cbctl.FunctionError) as own:
        client.call("ux_inner_type_error", 5, timeout=10)  # the function's own TypeError stays what it is
    assert own.value.remote_type == "TypeError" and "usability_fns.py" in own.value.remote_traceback
    assert "cbctl/runtime" not in own.value.remote_traceback
    assert client.call("ux_add", 1, 2, timeout=10) == 3


def test_functions_that_cannot_take_cb_are_refused_before_anything_registers(shared, tmp_path):
    client = shared.client()
    with pytest.raises(cbctl.InvalidArgument, match=r"ux_nocb\(\) takes no positional parameter"):
        client.register(lambda: 1, name="ux_nocb")
    with pytest.raises(cbctl.InvalidArgument, match="a lambda has no name"):
        client.register(lambda cb: 1)
    with pytest.raises(cbctl.InvalidArgument, match="neither a function nor a class"):
        client.register(42, name="ux_number")
    deploy = tmp_path / "half_good.py"
    deploy.write_text("import cbctl\n\n@cbctl.function\ndef ux_fine(cb):\n    return 1\n\n"
                      "@cbctl.function\ndef ux_no_cb():\n    return 2\n")
    one_error_line(shared.cli("deploy", str(deploy)), "ux_no_cb() takes no positional parameter", "(cb, ...)")
    names = {f["name"] for f in client.list()["functions"]}
    assert "ux_fine" not in names and "ux_nocb" not in names


def test_names_a_function_and_a_dag_cannot_share(shared, tmp_path):
    client = shared.client()
    with pytest.raises(cbctl.InvalidArgument, match="'pipeline' is already a DAG's name"):
        client.register(lambda cb, x: x, name="pipeline")
    with pytest.raises(cbctl.InvalidDag, match="cycle"):
        client.register_dag("ux_cycle", ["ux_identity", "ux_add"], [("ux_identity", "ux_add"),
                                                                    ("ux_add", "ux_identity")])
    clash = tmp_path / "clash.py"
    clash.write_text("import cbctl\n\n@cbctl.function\ndef ux_clash_fn(cb, x):\n    return x\n\n"
                     "cbctl.dag('ux_identity', [ux_clash_fn])\n")
    one_error_line(shared.cli("deploy", str(clash)), "DAG 'ux_identity' has the name of a function")
    assert "ux_clash_fn" not in {f["name"] for f in client.list()["functions"]}
    assert client.call("pipeline", 3, timeout=10) == 16


# --- deploy files -----------------------------------------------------------------------------------------


def test_deploy_files_that_do_not_import_or_declare_nothing(shared, tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("import cbctl\n\n@cbctl.function\ndef f(cb x):\n    return 1\n")
    result = shared.cli("deploy", str(broken))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {broken} failed to import: SyntaxError")
    assert "def f(cb x):" in result.stderr  # the user's line is shown...
    assert "cbctl/declare.py" not in result.stderr and "<frozen" not in result.stderr  # ...not cbctl's frames
    empty = tmp_path / "empty.py"
    empty.write_text("def helper(cb):\n    return 1\n")
    one_error_line(shared.cli("deploy", str(empty)), "declares no functions or DAGs", "@cbctl.function")
    one_error_line(shared.cli("deploy", str(tmp_path / "missing.py")), "is not a file")


def test_a_dag_of_functions_from_another_file(shared):
    out = shared.cli("deploy", str(DEPLOYABLES / "usability_cross.py"), check=True).stdout
    assert "dag      ux_cross: ux_loud -> ux_echo_loud" in out
    # usability_helpers is not importable on the executors: it travelled by value with the functions
    assert shared.cli("call", "ux_cross", "hi", check=True).stdout.strip() == "HI! AGAIN!"


def test_arguments_for_a_dag_step_that_is_not_a_source(shared):
    one_error_line(shared.cli("call", "ux_chain", "--arg", "ux_inner_type_error=1"),
                   "'ux_inner_type_error', which is not a source of 'ux_chain'", "its sources are ux_identity")
    one_error_line(shared.cli("call", "ux_chain", "--arg", "nonsense"), "must look like FUNCTION=VALUE")
    assert shared.cli("call", "ux_chain", "--arg", 'ux_identity="abc"', check=True).stdout.strip() == "3"


def test_rm_of_a_function_that_a_dag_and_a_trigger_use(shared):
    client = shared.client()
    client.register(lambda cb, x: x, name="ux_used")
    client.register_dag("ux_user_dag", ["ux_used"])
    client.add_trigger("ux_user_trigger", "ux-used/", "ux_used")
    one_error_line(shared.cli("rm", "ux_used"), "'ux_used' is called by trigger(s) ux_user_trigger", "trigger rm")
    client.remove_trigger("ux_user_trigger")
    one_error_line(shared.cli("rm", "ux_used"), "used by DAG(s) ux_user_dag", "cbctl rm")
    assert client.call("ux_user_dag", 7, timeout=10) == 7  # refusals took nothing away
    shared.cli("rm", "ux_user_dag", check=True)
    shared.cli("rm", "ux_used", check=True)
    one_error_line(shared.cli("rm", "ux_used"), "no function or DAG is registered as 'ux_used'")


# --- the other commands -----------------------------------------------------------------------------------


def test_logs_n_zero_and_follow_until_ctrl_c(shared):
    role = "store" if shared.redis is None else "triggers"  # on Redis: the trigger relay, no store process
    quiet = shared.cli("logs", role, "-n", "0", check=True).stdout
    assert quiet.strip() == f"==> {role}-0.log <=="
    env = {**os.environ, "CBCTL_HOME": str(shared.home)}
    follow = subprocess.Popen([sys.executable, "-m", "cbctl.cli", "logs", "-f", "-n", "0", "scheduler"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert select.select([follow.stdout], [], [], 15)[0], "logs -f printed nothing"
        assert follow.stdout.readline().startswith("==> scheduler-0.log <==")  # now it is following
        follow.send_signal(signal.SIGINT)
        out, err = follow.communicate(timeout=10)
    finally:
        if follow.poll() is None:
            follow.kill()
    assert follow.returncode == 0 and "Traceback" not in err, err
    one_error_line(shared.cli("logs", "nonsense"), "no logs for 'nonsense'")


def test_top_and_scale_refuse_bad_values(shared):
    assert "'bogus' is not one of" in shared.cli("top", "--sort", "bogus").stderr
    assert shared.cli("top", "--sort", "bogus").returncode == 2
    one_error_line(shared.cli("scale", "--executors", "0"), "at least one executor")
    one_error_line(shared.cli("scale", "--executors", "-1"), "--executors must be a whole number >= 0")
    assert shared.cli("call", "ux_add", "1", "2", "--timeout", "0").returncode == 2


def test_up_refuses_bad_counts_and_unusable_homes(tmp_path):
    home = tmp_path / "never-started"
    one_error_line(run_cli(home, "up", "--executors", "0"), "at least one executor")
    one_error_line(run_cli(home, "up", "--executors", "-1"), "--executors -1 is negative")
    one_error_line(run_cli(home, "up", "--executors", "1", "--gpu-executors", "-1"), "--gpu-executors -1 is negative")
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    one_error_line(run_cli(a_file, "up", "--executors", "1"), f"{a_file} is (or is inside) a file")
    one_error_line(run_cli(a_file / "home", "up", "--executors", "1"), "is (or is inside) a file")
    one_error_line(run_cli(a_file, "status"), f"{a_file} is a file")
    # a home nobody can create: a read-only directory (or, as root, who may write anywhere, under /proc)
    readonly = tmp_path / "read-only"
    readonly.mkdir(mode=0o500)
    unwritable = readonly / "home" if os.geteuid() != 0 else Path("/proc/cbctl-test-home")
    one_error_line(run_cli(unwritable, "up", "--executors", "1"), f"cannot use {unwritable} as the cluster directory")
    one_error_line(run_cli(home, "up", "--executors", "1", "--listen", "tcp://127.0.0.1:5000/x"), "tcp://HOST")
    assert not (home / "cluster.json").exists()


def test_listen_beyond_loopback_warns_and_a_foreign_address_fails_clearly(tmp_path):
    failed = run_cli(tmp_path / "foreign", "up", "--executors", "1", "--listen", "tcp://192.0.2.1", timeout=60)
    lines = failed.stderr.strip().splitlines()
    assert failed.returncode == 1 and lines[0].startswith("warning: listening on tcp://192.0.2.1"), failed.stderr
    assert lines[-1].startswith("error: the cluster did not start:") and "192.0.2.1" in lines[-1], failed.stderr
    home = tmp_path / "everywhere"
    started = run_cli(home, "up", "--executors", "1", "--listen", "tcp://0.0.0.0", timeout=90)
    try:
        assert started.returncode == 0, started.stderr
        assert started.stderr.strip() == ("warning: listening on tcp://0.0.0.0, reachable beyond this machine (only "
                                          f"holders of {home / 'keys'} can use it)")
        with cbctl.connect(home) as client:
            client.put("k", 1)
            assert client.get("k") == 1
    finally:
        pids = ClusterFile.read(home).pids() if ClusterFile.read(home) else []
        run_cli(home, "down", timeout=60)
        kill_processes(pids)


# --- the Python API ---------------------------------------------------------------------------------------


def test_connect_with_no_cluster(tmp_path):
    with pytest.raises(cbctl.ClusterNotRunning, match=f"no cluster is running in {tmp_path}"):
        cbctl.connect(tmp_path)


def test_call_timeouts_closed_clients_and_unserialisable_arguments(shared):
    client = shared.client()
    for timeout in (0, -1):
        with pytest.raises(cbctl.InvalidArgument, match="would give up before the call could finish"):
            client.call("ux_write", "ux-timeout-zero", 1, timeout=timeout)
    with pytest.raises(cbctl.NoSuchKey):
        client.get("ux-timeout-zero")  # refused before it was sent: the function never ran
    with pytest.raises(cbctl.InvalidArgument, match="arguments of the call of 'ux_identity' cannot be serialised"):
        client.call_async("ux_identity", threading.Lock())
    with pytest.raises(cbctl.InvalidArgument, match="value for key 'ux-lock' cannot be serialised"):
        client.put("ux-lock", threading.Lock())
    pending = client.call_async("ux_add", 1, 2)
    client.close()
    with pytest.raises(cbctl.CbctlError, match="had not returned when its client was closed"):
        pending.result(timeout=1)
    for after_close in (lambda: client.call("ux_add", 1, 2, timeout=5), lambda: client.get("k"),
                        lambda: client.put("k", 1), lambda: client.list()):
        with pytest.raises(cbctl.CbctlError, match="this client is closed"):
            after_close()


def test_a_ref_to_a_missing_key_names_the_key(shared):
    with pytest.raises(cbctl.NoSuchKey, match="'ux-never-written'"):
        shared.client().call("ux_identity", cbctl.Ref("ux-never-written"), timeout=10)


def test_a_causal_key_reads_as_its_list_and_refuses_plain_writes(shared):
    client = shared.client()
    assert client.call("ux_write", "ux-causal", 5, consistency="causal", timeout=10) == [5]
    assert client.get("ux-causal") == [5]
    assert json.loads(shared.cli("get", "ux-causal", "--json", check=True).stdout) == [5]
    with pytest.raises(cbctl.InvalidArgument, match="could not write 'ux-causal'.*causal"):
        client.put("ux-causal", 6)
    one_error_line(shared.cli("put", "ux-causal", "6"), "could not write 'ux-causal'", "delete it first")
    assert client.get("ux-causal") == [5]
