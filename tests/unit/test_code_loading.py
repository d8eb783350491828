"""Loaded functions keep their user's file name in tracebacks, even though cloudpickle drops it."""

from __future__ import annotations

import traceback
from pathlib import Path

import cloudpickle
import pytest

from cbctl.declare import load_file
from cbctl.runtime.code_loading import load_target, source_file_of
from cbctl.runtime.registry import FunctionRecord

SOURCE = '''
import cbctl

def helper(x):
    raise ValueError(f"bad {x}")

@cbctl.function
def outer(cb, x):
    def inner():
        return helper(x)
    return inner()

@cbctl.function
class Model:
    def __init__(self):
        self.scale = 2

    def run(self, cb, x):
        return helper(x * self.scale)
'''


def _record(target, is_class: bool = False) -> FunctionRecord:
    return FunctionRecord(name="f", code=cloudpickle.dumps(target), version=1, is_class=is_class,
                          source_file=source_file_of(target))


def _traceback_of(call) -> str:
    with pytest.raises(ValueError) as raised:
        call()
    return "".join(traceback.format_exception(raised.type, raised.value, raised.tb))


@pytest.mark.parametrize("is_class", [False, True])
def test_remote_traceback_names_the_users_file_and_line(tmp_path: Path, is_class: bool) -> None:
    path = tmp_path / "userfile.py"
    path.write_text(SOURCE)
    declared = load_file(path)
    target = declared.functions[1 if is_class else 0].target
    loaded = load_target(_record(target, is_class))
    text = _traceback_of(lambda: loaded(None, 3))
    assert str(path) in text and "<dynamic-code>" not in text
    assert 'raise ValueError(f"bad {x}")' in text  # the file is here, so the line itself is shown
    assert ", in helper" in text and (", in run" if is_class else ", in inner") in text


def test_a_record_without_a_source_file_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "other.py"
    path.write_text(SOURCE)
    target = load_file(path).functions[0].target
    record = _record(target)
    record.source_file = ""
    with pytest.raises(ValueError, match="bad 3"):
        load_target(record)(None, 3)
