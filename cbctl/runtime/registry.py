"""The function and DAG registry as it lives in the store, under reserved keys.

``__cb/fn/NAME`` holds a function record (code, options, version) and ``__cb/dag/NAME`` a DAG record;
each is one last-writer-wins value, so a re-deploy replaces a name atomically and every scheduler (a
restarted one, or a second one) reads the same registry. ``version`` is the registration time in ns.

A call runs the versions current when it was dispatched (its triggers carry them), even if a deploy replaces
them while it runs: so each function record is also kept under ``__cb/fnv/NAME/VERSION``, from which an
executor loads a version that is no longer the latest. Such copies are deleted once a newer version has been
current for ``FUNCTION_VERSION_KEEP_S`` (``prune_versions``); a call that still needs one then fails clearly.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from cbctl.errors import NoSuchKey
from cbctl.runtime.store_client import StoreClient
from cbctl.runtime.wire import serialization

FUNCTION_PREFIX = "__cb/fn/"
DAG_PREFIX = "__cb/dag/"
RESULT_PREFIX = "__cb/result/"
VERSION_PREFIX = "__cb/fnv/"


@dataclass
class FunctionRecord:
    name: str
    code: bytes
    version: int
    gpu: bool = False
    batching: bool = False
    is_class: bool = False
    init_args: bytes = b""
    source_file: str = ""  # where the user defined it, for tracebacks (see code_loading.py)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "gpu": self.gpu, "batching": self.batching, "is_class": self.is_class,
                "version": self.version}


@dataclass
class DagRecord:
    name: str
    functions: list[str]
    edges: list[list[str]]
    version: int
    options: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "functions": self.functions, "edges": self.edges,
                "options": self.options, "version": self.version}


def save_function(store: StoreClient, record: FunctionRecord) -> None:
    """The latest version of a function, and its copy by version (for calls dispatched before a redeploy)."""
    fields = asdict(record)
    store.put(version_key(record.name, record.version), fields)
    store.put(FUNCTION_PREFIX + record.name, fields)


def version_key(name: str, version: int) -> str:
    return f"{VERSION_PREFIX}{name}/{version}"


def load_function_version(store: StoreClient, name: str, version: int) -> FunctionRecord | None:
    """Version ``version`` of function ``name``, if it is still kept."""
    try:
        return FunctionRecord(**store.get(version_key(name, version)))
    except NoSuchKey:
        return None


def prune_versions(store: StoreClient, names: Iterable[str], now_ns: int, keep_ns: int,
                   remove_all: bool = False) -> int:
    """Delete the kept copies of the ``names``' versions that a newer version replaced more than ``keep_ns`` ago
    (every copy, with ``remove_all``: the functions are gone), with one listing of the store's version keys for
    all of them. Returns how many were deleted."""
    names = set(names)
    versions: dict[str, list[int]] = {}
    for key in store.list_keys(VERSION_PREFIX):
        name, _, version = key[len(VERSION_PREFIX):].rpartition("/")
        if name in names and version.isdigit():
            versions.setdefault(name, []).append(int(version))
    deleted = 0
    for name, found in versions.items():
        found.sort()
        doomed = found if remove_all else [v for v, newer in zip(found, found[1:]) if newer < now_ns - keep_ns]
        for version in doomed:
            store.delete(version_key(name, version))
        deleted += len(doomed)
    return deleted


def save_dag(store: StoreClient, record: DagRecord) -> None:
    store.put(DAG_PREFIX + record.name, asdict(record))


def load_function(store: StoreClient, name: str) -> FunctionRecord | None:
    try:
        return FunctionRecord(**store.get(FUNCTION_PREFIX + name))
    except NoSuchKey:
        return None


def load_dag(store: StoreClient, name: str) -> DagRecord | None:
    try:
        return DagRecord(**store.get(DAG_PREFIX + name))
    except NoSuchKey:
        return None


def load_all(store: StoreClient) -> tuple[dict[str, FunctionRecord], dict[str, DagRecord]]:
    fn_keys = store.list_keys(FUNCTION_PREFIX)
    dag_keys = store.list_keys(DAG_PREFIX)
    keys = fn_keys + dag_keys
    lattices = store.get_lattices(keys) if keys else []
    functions: dict[str, FunctionRecord] = {}
    dags: dict[str, DagRecord] = {}
    for key, lattice in zip(keys, lattices):
        if lattice is None or getattr(lattice, "tombstone", False):
            continue
        raw = serialization.decode(lattice.value)
        if key.startswith(FUNCTION_PREFIX):
            functions[raw["name"]] = FunctionRecord(**raw)
        else:
            dags[raw["name"]] = DagRecord(**raw)
    return functions, dags


def result_key(call_id: str) -> str:
    return RESULT_PREFIX + call_id
