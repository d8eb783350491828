"""The function and DAG registry as it lives in the store, under reserved keys.

``__cb/fn/NAME`` holds a function record (code, options, version) and ``__cb/dag/NAME`` a DAG record;
each is one last-writer-wins value, so a re-deploy replaces a name atomically and every scheduler (a
restarted one, or a second one) reads the same registry. ``version`` is the registration time in ns:
executors compare it to reload code that was replaced.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from cbctl.errors import NoSuchKey
from cbctl.runtime.store_client import StoreClient
from cbctl.runtime.wire import serialization

FUNCTION_PREFIX = "__cb/fn/"
DAG_PREFIX = "__cb/dag/"
RESULT_PREFIX = "__cb/result/"


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
    store.put(FUNCTION_PREFIX + record.name, asdict(record))


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
