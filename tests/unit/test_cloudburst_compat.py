"""The Cloudburst compat layer's pure parts: installing the module names, the proto enums, Anna's lattices,
DAG shaping, and the function bodies the executors run (called here with a stand-in for cbctl's ``cb``)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

import cbctl.compat.cloudburst as compat
from cbctl import ClusterNotRunning, InvalidArgument, InvalidDag
from cbctl.compat.cloudburst import client as compat_client
from cbctl.compat.cloudburst import lattices, proto, shapes
from cbctl.compat.cloudburst.user_library import FirstValid, NoValidResult, body_class, spread_tuples

REPO = Path(__file__).resolve().parent.parent.parent


@pytest.fixture
def installed():
    assert compat.install()
    yield
    compat.uninstall()


def test_install_makes_cloudbursts_names_importable(installed):
    import cloudburst.shared.function
    from anna.lattices import LWWPairLattice
    from cloudburst.client.client import CloudburstConnection
    from cloudburst.shared.future import CloudburstFuture
    from cloudburst.shared.proto.cloudburst_pb2 import DAG_ALREADY_EXISTS, MULTIEXEC, NORMAL
    from cloudburst.shared.reference import CloudburstReference
    from cloudburst.shared.serializer import Serializer

    assert CloudburstConnection is compat.CloudburstConnection and CloudburstFuture is compat.CloudburstFuture
    assert CloudburstReference is compat.CloudburstReference and LWWPairLattice is lattices.LWWPairLattice
    assert cloudburst.shared.function.CloudburstFunction is compat.CloudburstFunction
    assert (DAG_ALREADY_EXISTS, MULTIEXEC, NORMAL) == (6, 1, 0)
    assert Serializer().load(Serializer().dump({"a": 1})) == {"a": 1}
    assert compat.install()  # again: nothing to do


def test_uninstall_removes_the_names(installed):
    compat.uninstall()
    assert "cloudburst.client.client" not in sys.modules and "anna.lattices" not in sys.modules
    with pytest.raises(ImportError):
        import cloudburst.client.client  # noqa: F401


def run_python(code: str, tmp_path: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(pythonpath or ""), str(REPO)) if p)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=60)


@pytest.fixture
def real_cloudburst(tmp_path) -> Path:
    """A directory holding a (fake) real Cloudburst installation, for PYTHONPATH."""
    site = tmp_path / "site"
    (site / "cloudburst" / "client").mkdir(parents=True)
    (site / "cloudburst" / "__init__.py").write_text("")
    (site / "cloudburst" / "client" / "__init__.py").write_text("")
    (site / "cloudburst" / "client" / "client.py").write_text("REAL = True\n")
    return site


def test_install_leaves_a_real_cloudburst_alone_unless_told(tmp_path, real_cloudburst):
    done = run_python("""
        import warnings
        import cbctl.compat.cloudburst as compat
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            print(compat.install())
        print(caught[0].category.__name__, caught[0].message)
        import cloudburst.client.client as c
        print(getattr(c, "REAL", False))
        print(compat.install(override=True))
        import cloudburst.client.client as c
        print(c.CloudburstConnection.__module__)
        """, tmp_path, real_cloudburst)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "False"
    assert lines[1].startswith("RuntimeWarning a real cloudburst is importable here (")
    assert "pass install(override=True)" in lines[1]
    assert lines[2:] == ["True", "True", "cbctl.compat.cloudburst.client"]


def test_the_runner_refuses_a_real_cloudburst_without_override(tmp_path, real_cloudburst):
    script = tmp_path / "app.py"
    script.write_text("import sys\nfrom cloudburst.client.client import CloudburstConnection\n"
                      "print(CloudburstConnection.__module__, sys.argv[1:])\n")
    env = {**os.environ, "PYTHONPATH": f"{real_cloudburst}{os.pathsep}{REPO}"}
    refused = subprocess.run([sys.executable, "-m", "cbctl.compat.cloudburst", str(script)], capture_output=True,
                             text=True, env=env, timeout=60)
    assert refused.returncode == 2
    assert "a real cloudburst is installed here; pass --override" in refused.stderr
    done = subprocess.run([sys.executable, "-m", "cbctl.compat.cloudburst", "--override", str(script), "a", "-b"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "cbctl.compat.cloudburst.client ['a', '-b']"


def test_the_runner_says_what_is_wrong(tmp_path):
    missing = subprocess.run([sys.executable, "-m", "cbctl.compat.cloudburst", str(tmp_path / "nope.py")],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "is not a file" in missing.stderr
    bare = subprocess.run([sys.executable, "-m", "cbctl.compat.cloudburst"], capture_output=True, text=True,
                          timeout=60)
    assert bare.returncode == 2 and bare.stderr.startswith("usage:")


def test_enums_mirror_the_proto():
    error = proto.CloudburstError
    assert error.items() == [("NO_CLOUDBURST_ERROR", 0), ("FUNC_NOT_FOUND", 1), ("NOT_PINNED", 2),
                             ("EXECUTION_ERROR", 3), ("NO_SUCH_DAG", 4), ("NO_RESOURCES", 5),
                             ("DAG_ALREADY_EXISTS", 6)]
    assert error.Name(6) == "DAG_ALREADY_EXISTS" and error.Value("NO_SUCH_DAG") == 4
    assert proto.DAG_ALREADY_EXISTS == 6 and str(proto.DAG_ALREADY_EXISTS) == "6"
    with pytest.raises(ValueError, match="no name defined for value 9"):
        error.Name(9)
    with pytest.raises(ValueError, match="no value defined for name 'NOPE'"):
        error.Value("NOPE")
    assert proto.ConsistencyType.keys() == ["NORMAL", "SINGLE", "MULTI"]
    assert proto.ExecutionType.values() == [0, 1] and proto.SerializerType.Name(1) == "NUMPY"
    assert compat_client._mode(proto.NORMAL) == "lww" and compat_client._mode(2) == "causal"
    assert compat_client._mode("repeatable_read") == "repeatable_read"
    with pytest.raises(InvalidArgument, match="not a Cloudburst ConsistencyType"):
        compat_client._mode(7)


def test_lattices_merge_as_annas():
    old, new = lattices.LWWPairLattice(1, b"old"), lattices.LWWPairLattice(2, b"new")
    assert old.merge(new) is new and new.merge(old) is new
    with pytest.raises(ValueError, match="timestamp-bytes pair"):
        lattices.LWWPairLattice(1, "text")
    assert lattices.SetLattice({b"a"}).merge(lattices.SetLattice({b"b"})).reveal() == {b"a", b"b"}
    ordered = lattices.OrderedSetLattice(lattices.ListBasedOrderedSet([3, 1]))
    assert ordered.merge(lattices.OrderedSetLattice(lattices.ListBasedOrderedSet([2, 3]))).reveal() == [1, 2, 3]
    counts = lattices.MapLattice({"a": lattices.MaxIntLattice(1)})
    counts.merge(lattices.MapLattice({"a": lattices.MaxIntLattice(5), "b": lattices.MaxIntLattice(2)}))
    assert {k: v.reveal() for k, v in counts.reveal().items()} == {"a": 5, "b": 2}
    clock = lattices.VectorClock({"x": 1}, deserialize=True)

    def causal(vc: dict[str, int], value: bytes) -> lattices.SingleKeyCausalLattice:
        return lattices.SingleKeyCausalLattice(lattices.VectorClock(vc, True), lattices.SetLattice({value}))

    assert causal({"x": 1}, b"a").merge(causal({"x": 2}, b"b")).reveal() == [b"b"]  # dominated
    assert sorted(causal({"x": 1}, b"a").merge(causal({"y": 1}, b"b")).reveal()) == [b"a", b"b"]  # concurrent
    assert clock == lattices.VectorClock({"x": lattices.MaxIntLattice(1)})
    with pytest.raises(NotImplementedError, match="put the lattice itself"):
        clock.serialize()


def test_multiexec_functions_get_a_first_valid_helper():
    shape = shapes.from_cloudburst("race", ["a", "b", ("check", [None, -1]), "announce"],
                                   [("a", "check"), ("b", "check"), ("check", "announce")])
    helper = shapes.first_valid_name("race", "check")
    assert shape.functions == ["a", "b", "check", "announce", helper]
    assert shape.edges == [["a", "check"], ["b", "check"], [helper, "announce"], ["check", helper]]
    assert shape.multiexec == ["check"] and shape.filters == {helper: ("check", [None, -1])}
    plain = shapes.from_cloudburst("dag", ["incr", "square"], [("incr", "square")])
    assert (plain.functions, plain.edges, plain.multiexec) == (["incr", "square"], [["incr", "square"]], [])
    with pytest.raises(InvalidDag, match=r"\(name, invalid_results\)"):
        shapes.from_cloudburst("bad", [("f",)], [])


def test_variants_add_a_tail_and_fixed_arguments():
    functions, edges = shapes.variant("dag", ["incr", "square"], [["incr", "square"]], tail=True)
    assert functions == ["incr", "square", shapes.TAIL_SOURCE, shapes.TAIL]
    assert edges == [["incr", "square"], ["square", shapes.TAIL], [shapes.TAIL_SOURCE, shapes.TAIL]]
    assert shapes.variant("one", ["f"], [], tail=True)[1] == [["f", shapes.TAIL], [shapes.TAIL_SOURCE, shapes.TAIL]]
    assert shapes.variant("chain", ["a", "b"], [], tail=True)[1][0] == ["a", "b"]  # no edges: cbctl's chain
    with pytest.raises(InvalidDag, match="2 sinks"):
        shapes.variant("forked", ["a", "b", "c"], [["a", "b"], ["a", "c"]], tail=True)
    # fixed arguments for an inner function: a source of its own, whose edge comes first among its inputs
    helper = shapes.fixed_args_name("join", "c")
    functions, edges = shapes.variant("join", ["a", "b", "c"], [["a", "c"], ["b", "c"]], fixed=["c"])
    assert functions == ["a", "b", "c", helper] and edges == [[helper, "c"], ["a", "c"], ["b", "c"]]
    assert shapes.variant_name("join", ["c", "b"], tail=True) == "cloudburst-compat/join/args=b,c+tail"
    assert shapes.variant_name("join") == "join"
    with pytest.raises(InvalidDag, match="'a' is a source"):
        shapes.variant("join", ["a", "b", "c"], [["a", "c"], ["b", "c"]], fixed=["a"])
    with pytest.raises(InvalidDag, match="'z', which is not a function of DAG 'join'"):
        shapes.variant("join", ["a", "b", "c"], [["a", "c"], ["b", "c"]], fixed=["z"])


class StandInLibrary:
    """What a function body needs of cbctl's ``cb``: a dict for the store, a list for messages."""

    def __init__(self) -> None:
        self.store: dict[str, object] = {}
        self.inbox = [("executor-1", b"hi")]

    def get(self, key, default):
        return self.store.get(key, default)

    def put(self, key, value):
        self.store[key] = value

    def getid(self):
        return "executor-0"

    def recv(self):
        messages, self.inbox = self.inbox, []
        return messages


def test_a_function_body_gives_cloudbursts_library_and_spreads_tuples():
    def body(cloudburst, a, b, c):
        cloudburst.put("k", {"v": a})
        return cloudburst.get(["k", "missing"]), cloudburst.get("missing"), b + c, cloudburst.recv()

    cb = StandInLibrary()
    found, missing, total, messages = body_class(body)().run(cb, 1, (2, 3))
    assert found == {"k": {"v": 1}, "missing": None} and missing is None and total == 5
    assert messages == [("executor-1", b"hi")]
    assert spread_tuples((1, (2, (3,)), [4])) == (1, 2, (3,), [4])


def test_a_class_body_is_constructed_once_with_the_library_and_init_args():
    class Counter:
        def __init__(self, cloudburst, start):
            self.count = start
            self.id = cloudburst.getid()

        def run(self, cloudburst, step):
            self.count += step
            return self.id, self.count

    body = body_class(Counter, (10,))()
    cb = StandInLibrary()
    assert [body.run(cb, 1), body.run(cb, 2)] == [("executor-0", 11), ("executor-0", 13)]


def test_a_pickled_body_imports_cloudburst_names_where_it_runs(tmp_path):
    """Unpickled in a process without the names (an executor), a body installs them before the user's code is
    unpickled (which may hold the package ``cloudburst`` as a global) and runs (importing them in its body)."""
    pickled = tmp_path / "body.pkl"
    done = run_python(f"""
        import cloudpickle
        import cbctl.compat.cloudburst as compat
        compat.install()
        import cloudburst.shared.reference
        from cbctl.compat.cloudburst.user_library import body_class

        def uses_names(cloudburst_library, data):
            import cloudpickle as cp
            from anna.lattices import LWWPairLattice

            ref = cloudburst.shared.reference.CloudburstReference("k", True)
            return [ref.key, cp.loads(LWWPairLattice(1, cp.dumps(data)).reveal())]

        open({str(pickled)!r}, "wb").write(cloudpickle.dumps(body_class(uses_names)))
        """, tmp_path)
    assert done.returncode == 0, done.stderr
    done = run_python("""
        import pickle, sys
        body = pickle.loads(open("body.pkl", "rb").read())()
        print(body.run(object(), [1, 2]))
        """, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['k', [1, 2]]"
    # pickling a body installs nothing where it is pickled (the client's process)
    done = run_python("""
        import sys, cloudpickle
        from cbctl.compat.cloudburst.user_library import body_class
        cloudpickle.dumps(body_class(lambda cloudburst: None))
        print("cloudburst" in sys.modules)
        """, tmp_path)
    assert done.stdout.strip() == "False", done.stderr


def test_first_valid_skips_invalid_results_in_arrival_order():
    pick = FirstValid("check", [None, np.zeros(2)])
    assert pick(None, [None, np.zeros(2), np.ones(2), 4]).tolist() == [1.0, 1.0]
    assert pick(None, [None, 3]) == 3
    with pytest.raises(NoValidResult, match="every result of MULTIEXEC function 'check'"):
        pick(None, [None, np.zeros(2)])


def test_func_addr_names_what_to_connect_to(tmp_path, monkeypatch):
    monkeypatch.setenv("CBCTL_HOME", str(tmp_path / "nothing-here"))
    with pytest.raises(ClusterNotRunning, match="no cluster is running"):
        compat_client.connect_to("127.0.0.1")
    with pytest.raises(ClusterNotRunning, match="no cluster is running"):
        compat_client.connect_to(str(tmp_path))  # a home directory
    with pytest.raises(InvalidArgument, match="not a cluster cbctl can reach"):
        compat_client.connect_to("my-elb.amazonaws.com")
    with pytest.raises(InvalidArgument, match="is not an address"):
        compat_client.connect_to(42)


def test_register_refuses_what_is_not_a_function_or_class():
    class NoRun:
        pass

    with pytest.raises(InvalidArgument, match="has no run"):
        compat_client._body_of((NoRun, ()))
    with pytest.raises(InvalidArgument, match="not a function or a class"):
        compat_client._body_of(42)
    class WithRun:
        def run(self, cloudburst):
            return None

    assert compat_client._body_of((WithRun, 5)).init_args == (5,)


def test_install_warns_once_in_words(installed):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compat.install()  # already installed: no warning
