"""`cbctl join`'s checks before anything starts: each missing piece is one line naming what to do."""

from __future__ import annotations

from pathlib import Path

import pytest

from cbctl.errors import AuthenticationError, InvalidArgument
from cbctl.lifecycle import plan_join
from cbctl.runtime.cluster import ClusterFile, pid_space
from cbctl.runtime.wire import auth

HEAD = "tcp://10.9.0.1:7100"


def head_copy(home: Path, space: str = "another-machine/pid:[1]", auth_mode: str = "curve") -> None:
    home.mkdir(exist_ok=True)
    ClusterFile(str(home), 10, 0.0, "tcp://10.9.0.1:7001", "tcp://10.9.0.1:7002", [HEAD], 0.0, "0.1.0",
                auth=auth_mode, pid_space=space, head_host="10.9.0.1").write(home)


def test_a_good_copy_plans_a_join(tmp_path: Path) -> None:
    head_copy(tmp_path)
    auth.generate_keys(tmp_path)
    spec = plan_join(tmp_path, HEAD, 2, 0, "tcp://10.9.0.2", None)
    assert (spec.host, spec.advertise, spec.executors) == ("10.9.0.2", "tcp://10.9.0.2", 2)
    assert plan_join(tmp_path, HEAD, 1, 0, "tcp://10.9.0.2", "gpu-box").host == "gpu-box"


@pytest.mark.parametrize(("setup", "args", "error", "words"), [
    (lambda h: h.mkdir(), (HEAD, 1, 0, "tcp://10.9.0.2", None), InvalidArgument, "cluster.json is missing"),
    (lambda h: head_copy(h, pid_space()), (HEAD, 1, 0, "tcp://10.9.0.2", None), InvalidArgument,
     "cluster of this machine"),
    (head_copy, ("tcp://10.9.0.1:7999", 1, 0, "tcp://10.9.0.2", None), InvalidArgument, "is not the cluster at"),
    (lambda h: head_copy(h, auth_mode="none"), (HEAD, 1, 0, "tcp://10.9.0.2", None), InvalidArgument, "without keys"),
    (head_copy, (HEAD, 1, 0, "tcp://10.9.0.2", None), AuthenticationError, "cannot be read"),
    (head_copy, ("10.9.0.1:7100", 1, 0, None, None), InvalidArgument, "tcp://HOST:PORT"),
])
def test_join_refuses_what_cannot_work(tmp_path: Path, setup, args, error, words) -> None:
    home = tmp_path / "home"
    setup(home)
    with pytest.raises(error, match=words):
        plan_join(home, *args)


@pytest.mark.parametrize(("advertise", "name", "words"), [
    ("tcp://10.9.0.2:5000", None, "no port"),
    ("tcp://10.9.0.2", "bad/name", "letters, digits"),
    ("tcp://10.9.0.1", None, "head's own host name"),
])
def test_join_refuses_bad_addresses_and_names(tmp_path: Path, advertise: str, name: str | None, words: str) -> None:
    head_copy(tmp_path)
    auth.generate_keys(tmp_path)
    with pytest.raises(InvalidArgument, match=words):
        plan_join(tmp_path, HEAD, 1, 0, advertise, name)
    with pytest.raises(InvalidArgument, match="at least one executor"):
        plan_join(tmp_path, HEAD, 0, 0, "tcp://10.9.0.2", None)


def test_max_executors_offers_capacity_and_is_checked(tmp_path: Path) -> None:
    head_copy(tmp_path)
    auth.generate_keys(tmp_path)
    spec = plan_join(tmp_path, HEAD, 0, 0, "tcp://10.9.0.2", None, max_executors=2)  # none until the head asks
    assert (spec.executors, spec.max_executors) == (0, 2)
    for executors, max_executors, words in ((3, 2, "above --max-executors 2"), (0, -1, "negative"),
                                            (0, 10**6, "is above")):
        with pytest.raises(InvalidArgument, match=words):
            plan_join(tmp_path, HEAD, executors, 0, "tcp://10.9.0.2", None, max_executors=max_executors)
