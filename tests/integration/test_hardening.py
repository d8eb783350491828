"""Ordinary mistakes and ordinary data, as a new user meets them (issue 16): deploy files that are wrong in small
ways, values that must come back equal, output a script parses. Each case is what the user typed or wrote; each
must end in one clear line (exit 1) or the right result, never a traceback, a silent success or a changed value.

One 2-executor cluster is shared by the module; tests use names of their own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import cbctl
from tests.conftest import EXAMPLES, REPO, RunningCluster
from tests.integration.shared_cluster import module_cluster, registered_names


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Iterator[RunningCluster]:
    with module_cluster(tmp_path_factory.mktemp("cbhard"), deploy=(EXAMPLES / "messaging.py",)) as handle:
        yield handle


def one_error_line(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """The failure is exactly one line `error: ...` on stderr containing ``fragments``, with exit code 1."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# --- 1. deploy contracts ------------------------------------------------------------------------------------

#: Each file declares a good function (``hd_good_<case>``) next to its mistake: none of it may be registered.
BAD_DEPLOY_FILES = {
    "duplicate": ('@cbctl.function(name="hd_dup")\ndef a(cb):\n    return 1\n\n'
                  '@cbctl.function(name="hd_dup")\ndef b(cb):\n    return 2\n',
                  ["two functions are named 'hd_dup'", "a (line", "b (line", "name=..."]),
    "class_without_run": ("@cbctl.function(init_args=(1,))\nclass NoRun:\n    def __init__(self, k):\n        pass\n",
                          ["class NoRun has no run(cb, ...) method"]),
    "run_without_cb": ("@cbctl.function\nclass R:\n    def run(self):\n        return 1\n",
                       ["R.run", "define it as run(self, cb, ...)"]),
    "run_without_self": ("@cbctl.function\nclass S:\n    def run(cb, x):\n        return x\n",
                         ["S.run takes cb where self goes"]),
    "init_args_on_a_function": ("@cbctl.function(init_args=(1,))\ndef plain(cb):\n    return 1\n",
                                ["init_args are for a class", "plain is a function", "drop init_args"]),
    "empty_name": ('@cbctl.function(name="")\ndef unnamed(cb):\n    return 1\n',
                   ["unnamed (line", "name=''", "give a non-empty name"]),
    "async": ("@cbctl.function\nasync def coro(cb):\n    return 1\n", ["coro is an async def"]),
    "trigger_arity": ('@cbctl.function\ndef on_put(cb, key):\n    return key\n\n'
                      'cbctl.trigger("hd_t", prefix="hd/", function=on_put)\n',
                      ["trigger 'hd_t' calls on_put with (key, value)", "on_put(cb, key, value)"]),
}


@pytest.mark.parametrize("case", sorted(BAD_DEPLOY_FILES))
def test_a_deploy_file_with_a_mistake_registers_nothing_and_names_file_object_and_fix(shared, tmp_path, case):
    body, fragments = BAD_DEPLOY_FILES[case]
    path = tmp_path / f"{case}.py"
    path.write_text(f"import cbctl\n\n@cbctl.function\ndef hd_good_{case}(cb):\n    return 0\n\n{body}")
    line = one_error_line(shared.cli("deploy", str(path)), *fragments)
    assert str(path) in line
    functions, _ = registered_names(shared)
    assert not any(name.startswith(("hd_good_", "hd_dup", "NoRun", "plain", "unnamed")) for name in functions)


@pytest.mark.parametrize("ending, how", [("os._exit(0)", "exited (code 0)"),
                                         ("os.kill(os.getpid(), signal.SIGKILL)", "was killed by SIGKILL")])
def test_a_deploy_file_that_ends_its_interpreter_is_a_clear_failure(shared, tmp_path, ending, how):
    path = tmp_path / "ends.py"
    path.write_text(f"import os, signal\nimport cbctl\n\n@cbctl.function\ndef hd_ends(cb):\n    return 1\n\n{ending}\n")
    one_error_line(shared.cli("deploy", str(path)), str(path), how, "while importing")
    assert "hd_ends" not in registered_names(shared)[0]


def test_the_python_api_refuses_the_same_mistakes(shared):
    client = shared.client()

    class NoRun:
        pass

    with pytest.raises(cbctl.InvalidArgument, match="class NoRun has no run"):
        client.register(NoRun, name="hd_norun")
    with pytest.raises(cbctl.InvalidArgument, match="init_args are for a class"):
        client.register(lambda cb: 1, name="hd_fn_init", init_args=(1,))
    with pytest.raises(cbctl.InvalidDag, match="one string"):
        client.register_dag("hd_dag_str", "increment")


def test_a_good_file_still_deploys_and_its_threads_do_not_hold_the_deploy(shared, tmp_path):
    path = tmp_path / "good.py"
    path.write_text("import threading, time\nimport cbctl\n\n"
                    "threading.Thread(target=time.sleep, args=(600,)).start()  # not a daemon\n\n"
                    "@cbctl.function\ndef hd_fine(cb, x):\n    return x + 1\n")
    out = shared.cli("deploy", str(path), check=True, timeout=30).stdout
    assert "function hd_fine" in out
    assert json.loads(shared.cli("call", "hd_fine", "2", "--json", check=True).stdout) == 3


# --- 6. values that survive the trip ------------------------------------------------------------------------


def test_structured_record_and_masked_arrays_come_back_equal_through_calls_and_the_store(shared):
    np = pytest.importorskip("numpy")
    client = shared.client()
    client.register(lambda cb, a: a, name="hd_ident")
    client.register(lambda cb, k: cb.get(k), name="hd_read")
    values = {
        "structured": np.zeros(3, dtype=[("a", "i4"), ("b", "f8")]),
        "records": np.rec.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]),
        "masked": np.ma.array([1, 2, 3], mask=[0, 1, 0]),
        "big_endian_masked": np.ma.array(np.arange(3, dtype=">i8"), mask=[1, 0, 0]),
    }
    for label, value in values.items():
        client.put(f"hd/{label}", value)
        for result in (client.call("hd_ident", value, timeout=10), client.get(f"hd/{label}"),
                       client.call("hd_read", f"hd/{label}", timeout=10)):
            assert type(result) is type(value) and result.dtype == value.dtype, (label, result)
            assert result.tobytes() == value.tobytes()
            if isinstance(value, np.ma.MaskedArray):
                assert result.mask.tolist() == value.mask.tolist()


# --- 7. decode failures and keys ----------------------------------------------------------------------------


def test_a_value_only_its_writer_can_decode_is_one_line_naming_the_key_and_module(shared, tmp_path):
    writer_dir = tmp_path / "writer"
    writer_dir.mkdir()
    (writer_dir / "mylocal.py").write_text("class Foo:\n    def __init__(self, n):\n        self.n = n\n")
    script = ("import sys, cbctl, mylocal\n"
              "with cbctl.connect(sys.argv[1]) as c:\n    c.put('hd/lm', mylocal.Foo(4))\n")
    subprocess.run([sys.executable, "-c", script, str(shared.home)], cwd=writer_dir, check=True, timeout=60,
                   env={**os.environ, "PYTHONPATH": f"{writer_dir}{os.pathsep}{REPO}"})
    one_error_line(shared.cli("get", "hd/lm"), "the value under 'hd/lm' cannot be decoded here",
                   "module 'mylocal'", "PYTHONPATH")
    client = shared.client()
    with pytest.raises(cbctl.DecodeError, match="module 'mylocal'"):
        client.get("hd/lm")
    client.register(lambda cb, k: cb.get(k), name="hd_read_lm")  # the executors cannot import mylocal either
    with pytest.raises(cbctl.DecodeError, match="the value under 'hd/lm'"):
        client.call("hd_read_lm", "hd/lm", timeout=10)


def test_damaged_bytes_and_an_undecodable_result_are_decode_errors(shared):
    client = shared.client()
    client._store.put_lattice("hd/garbage", client._store.new_lww(b"\xc1 not msgpack"))
    one_error_line(shared.cli("get", "hd/garbage"), "the value under 'hd/garbage'", "not a value cbctl wrote")
    path = Path(__file__).resolve().parent / "deployables" / "hardening_fns.py"
    shared.cli("deploy", str(path), check=True)
    with pytest.raises(cbctl.DecodeError, match=r"the result of call \S+ of 'hd_unloadable'.*unpickling it raised"):
        client.call("hd_unloadable", timeout=10)
    assert client.call("hd_fine_after", 1, timeout=10) == 2  # nothing else broke


def test_keys_users_may_not_use_are_refused_where_they_are_named(shared):
    client = shared.client()
    with pytest.raises(cbctl.InvalidArgument, match="UTF-8 cannot carry"):
        client.put("\udcff", 1)
    with pytest.raises(cbctl.InvalidArgument, match="over the limit of 4096"):
        client.put("k" * 5000, 1)
    with pytest.raises(cbctl.InvalidArgument, match="cbctl's own"):
        cbctl.Ref("__cb/fn/hd_ident")
    client.register(lambda cb, k: cb.get(k), name="hd_peek")
    with pytest.raises(cbctl.FunctionError, match="cbctl's own") as raised:  # as cb.put's refusals
        client.call("hd_peek", "__cb/fn/hd_peek", timeout=10)
    assert raised.value.remote_type == "InvalidArgument"
    assert client.get("hd/never-written", default="fallback") == "fallback"
    with pytest.raises(cbctl.NoSuchKey):
        client.get("hd/never-written")


# --- 9. --json output a script can parse ----------------------------------------------------------------------


def test_json_output_is_json_for_arrays_bytes_sets_and_nan(shared):
    np = pytest.importorskip("numpy")
    client = shared.client()
    values = {"hd/npv": np.arange(6).reshape(2, 3), "hd/bv": b"\x00hi", "hd/sv": {2, 1},
              "hd/nan": [float("nan"), float("inf"), 1.5], "hd/masked": np.ma.array([1, 2], mask=[0, 1]),
              "hd/scalar": np.float32(2.5), "hd/tuple": (1, "a"), "hd/nested": {"a": np.array([True]), "b": b"\xff"}}
    expected = {"hd/npv": [[0, 1, 2], [3, 4, 5]], "hd/bv": {"base64": "AGhp"}, "hd/sv": [1, 2],
                "hd/nan": [None, None, 1.5], "hd/masked": [1, None], "hd/scalar": 2.5, "hd/tuple": [1, "a"],
                "hd/nested": {"a": [True], "b": {"base64": "/w=="}}}
    for key, value in values.items():
        client.put(key, value)
        out = shared.cli("get", key, "--json", check=True).stdout
        assert json.loads(out) == expected[key], (key, out)
    client.register(lambda cb: {"ids": {3, 1}, "raw": b"ab"}, name="hd_setres")
    assert json.loads(shared.cli("call", "hd_setres", "--json", check=True).stdout) == {
        "ids": [1, 3], "raw": {"base64": "YWI="}}


def test_a_value_without_a_json_form_is_one_error_line(shared):
    shared.cli("deploy", str(Path(__file__).resolve().parent / "deployables" / "hardening_fns.py"), check=True)
    one_error_line(shared.cli("call", "hd_an_object", "--json"), "is a Opaque, which has no JSON form",
                   "without --json")
    assert shared.cli("call", "hd_an_object", check=True).stdout.startswith("<")  # the repr, without --json


# --- 10. pipes, non-terminals and --home ----------------------------------------------------------------------


def test_top_without_a_terminal_prints_snapshots_and_a_closed_pipe_ends_it_with_0(shared):
    env = {**os.environ, "CBCTL_HOME": str(shared.home)}
    top = subprocess.Popen([sys.executable, "-m", "cbctl.cli", "top", "--interval", "0.2"], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = 0
        deadline = time.monotonic() + 30
        while seen < 2 and time.monotonic() < deadline:
            line = top.stdout.readline()
            assert line, top.stderr.read()
            seen += "snapshot " in line
        assert seen == 2
        top.stdout.close()  # the reader goes away, as `| head` does
        assert top.wait(timeout=20) == 0
        assert top.stderr.read() == ""
    finally:
        top.kill()
        top.wait()


@pytest.mark.parametrize("command", [["ls"], ["logs"], ["status"], ["top", "--once"]])
def test_a_closed_pipe_ends_a_command_quietly_with_0(shared, command):
    env = {**os.environ, "CBCTL_HOME": str(shared.home)}
    line = " ".join([f"'{sys.executable}'", "-m", "cbctl.cli", *command])
    result = subprocess.run(["bash", "-c", f"{line} | head -1 >/dev/null; exit ${{PIPESTATUS[0]}}"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (0, "")


def test_home_is_accepted_before_the_command(shared, tmp_path):
    env = {**os.environ, "CBCTL_HOME": str(tmp_path / "not-this-one")}
    for command in (["status"], ["ls"], ["trigger", "ls"], ["get", "hd/never", "--json"]):
        result = subprocess.run([sys.executable, "-m", "cbctl.cli", "--home", str(shared.home), *command], env=env,
                                capture_output=True, text=True, timeout=60)
        assert "no cluster is running" not in result.stderr, (command, result.stderr)
        assert result.returncode == (1 if command[0] == "get" else 0), (command, result.stderr)


# --- 8. long error messages ---------------------------------------------------------------------------------


def test_a_huge_exception_message_is_cut_for_display_and_kept_whole_in_the_log(shared):
    client = shared.client()
    client.register(lambda cb, n: (_ for _ in ()).throw(ValueError("m" * n + "END")), name="hd_loud")
    result = shared.cli("call", "hd_loud", "5000000", timeout=60)
    assert result.returncode == 1
    assert len(result.stderr) < 40_000, len(result.stderr)  # was 10 MB: the message twice
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the function raised ValueError: mmm") and "characters cut" in last
    assert "cbctl logs executor-" in result.stderr and "END" in result.stderr  # the traceback keeps its tail
    with pytest.raises(cbctl.FunctionError) as raised:
        client.call("hd_loud", 5_000_000, timeout=60)
    executor = raised.value.args[0].rsplit("cbctl logs ", 1)[1].split("`")[0]
    log = (shared.home / "logs" / f"{executor}.log").read_text()
    assert "m" * 5_000_000 + "END" in log  # the whole text, once per call


# --- 2. one version per call --------------------------------------------------------------------------------

VERSIONED = """import cbctl

@cbctl.function
def hd_ver(cb, x):
    return ["v{n}", x]

@cbctl.function
def hd_vpost(cb, p):
    return p + ["post{n}"]

cbctl.dag("hd_vdag", [hd_ver, hd_vpost])
"""


def test_a_dag_call_runs_the_versions_current_at_its_dispatch_while_redeploys_run(shared, tmp_path):
    from cbctl.deploy_import import import_deploy_file

    versions = []
    for n in (1, 2, 3):
        (tmp_path / f"ver{n}.py").write_text(VERSIONED.format(n=n))
        versions.append(import_deploy_file(tmp_path / f"ver{n}.py", 30))
    deployer = shared.client()
    deployer.deploy(versions[0])
    stop = threading.Event()
    results: list[list] = []
    failures: list[BaseException] = []

    def call_in_a_loop() -> None:
        client = cbctl.connect(shared.home)
        try:
            i = 0
            while not stop.is_set():
                results.append(client.call("hd_vdag", i, timeout=30))
                i += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)
        finally:
            client.close()

    callers = [threading.Thread(target=call_in_a_loop) for _ in range(3)]
    for thread in callers:
        thread.start()
    deploys = 0
    try:
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            deployer.deploy(versions[deploys % 3])
            deploys += 1
    finally:
        stop.set()
        for thread in callers:
            thread.join(60)
    assert not failures, failures
    mixed = [r for r in results if r[0][1:] != r[2][4:]]
    assert len(results) > 100 and deploys > 20, (len(results), deploys)
    assert not mixed, f"{len(mixed)} of {len(results)} calls mixed versions, e.g. {mixed[:3]}"


# --- 3. triggered chains are bounded --------------------------------------------------------------------------


def test_a_trigger_that_writes_under_its_own_prefix_stops_at_the_chain_limit(shared):
    from cbctl.runtime.defaults import MAX_TRIGGER_DEPTH

    shared.cli("deploy", str(Path(__file__).resolve().parent / "deployables" / "hardening_fns.py"), check=True)
    client = shared.client()
    client.add_trigger("hd_loop", "hd-loop/", "hd_loop_step")
    try:
        shared.cli("put", "hd-loop/0", "0", check=True)

        def stopped() -> dict | None:
            found = {t["name"]: t for t in client.list_triggers()}["hd_loop"]
            return found if found["errors"] else None

        found = shared.wait_for(stopped, timeout=30, what="the chain to stop")
        assert "TriggerDepthExceeded" in found["last_error"] and "--max-trigger-depth 16" in found["last_error"]
        assert found["fired"] == MAX_TRIGGER_DEPTH
        assert client.list_keys("hd-loop/") == sorted(f"hd-loop/{i}" for i in range(MAX_TRIGGER_DEPTH + 1))
        assert client.store_stats()["trigger_depth_stops"] == 1
        assert "TriggerDepthExceeded" in (shared.home / "logs" / "store-0.log").read_text()
        shared.cli("put", "hd-loop/0", "100", check=True)  # a put from outside starts a chain of its own
        shared.wait_for(lambda: "hd-loop/101" in client.list_keys("hd-loop/"), what="a new chain")
    finally:
        client.remove_trigger("hd_loop")


# --- 4. direct messages are for the function running when they are sent ----------------------------------------


def test_a_message_nobody_reads_never_reaches_a_later_unrelated_call(shared):
    shared.cli("deploy", str(Path(__file__).resolve().parent / "deployables" / "hardening_fns.py"), check=True)
    client = shared.client()
    client.call("hd_send_everywhere", 2, "stale", timeout=10)  # to an idle executor, and to itself
    seen: dict[str, list] = {}
    for _ in range(40):
        executor_id, heard = client.call("hd_recv_now", timeout=10)
        seen.setdefault(executor_id, []).extend(heard)
        if len(seen) == 2:
            break
    assert len(seen) == 2, seen
    assert seen == {executor_id: [] for executor_id in seen}, seen


def test_a_full_inbox_is_an_error_for_the_sender_and_getid_then_send_keeps_working(shared):
    shared.cli("deploy", str(Path(__file__).resolve().parent / "deployables" / "hardening_fns.py"), check=True)
    client = shared.client()
    small = client.call("hd_inbox", 1000, 1.0, timeout=120)  # 1 s for a refusal that must not come
    assert small == {"heard": [1000, 1000, 1000], "outcome": "all accepted"}, small
    big = client.call("hd_inbox", 25 << 20, 30.0, timeout=120)  # 75 MiB unread, over INBOX_MAX_BYTES (64 MiB)
    assert big["heard"] == [25 << 20, 25 << 20], big["heard"]
    assert big["outcome"].startswith("InboxFull: executor-") and "must cb.recv() them" in big["outcome"], big
    assert client.call("messaging", "hello", timeout=30)["heard"][1] == "hello"


# --- 5. executors that grow are recycled --------------------------------------------------------------------


def test_an_executor_over_its_memory_limit_after_a_call_is_recycled_and_top_shows_it(tmp_path):
    path = Path(__file__).resolve().parent / "deployables" / "hardening_fns.py"
    with module_cluster(tmp_path / "home", executors=1, deploy=(path,),
                        extra_args=("--executor-memory-mb", "300")) as handle:
        client = handle.client()
        first_pid = handle.pid_of("executor-0")
        leaked = [client.call("hd_leak", 100, timeout=60)[1] for _ in range(6)]
        # the module global grows until the process is over 300 MiB after a call; the fresh one starts empty
        assert leaked[0] == 1 and 1 in leaked[1:], leaked
        assert max(leaked) <= 4, leaked
        status = json.loads(handle.cli("status", "--json", check=True).stdout)
        (executor,) = [p for p in status["processes"] if p["name"] == "executor-0"]
        assert executor["recycles"] >= 1 and executor["pid"] != first_pid
        top = json.loads(handle.cli("top", "--json", check=True).stdout)
        assert top["executors"][0]["recycles"] >= 1
        from cbctl.top import _restarts_cell

        assert _restarts_cell(top["executors"][0]).endswith(" mem)")  # the restarts column of the table
        log = (handle.home / "logs" / "executor-0.log").read_text()
        assert "over --executor-memory-mb 300 after a call: recycling" in log


# --- what is missing: stored results are cleaned up -----------------------------------------------------------


def test_a_stored_result_is_deleted_once_its_future_read_it(shared):
    client = shared.client()
    client.register(lambda cb, x: x * 2, name="hd_double")
    before = client.store_stats()["keys"]
    futures = [client.call_async("hd_double", i, store_result=True) for i in range(50)]
    assert [f.result(timeout=30) for f in futures] == [i * 2 for i in range(50)]
    assert [f.result(timeout=0) for f in futures[:3]] == [0, 2, 4]  # read again: from the future, not the store
    assert client.store_stats()["keys"] <= before + 1, (before, client.store_stats()["keys"])
