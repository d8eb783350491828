"""Cloudburst's protobuf enums, as ``cloudburst.shared.proto.cloudburst_pb2`` offers them (no protobuf needed).

Names and numbers mirror ``cloudburst.proto`` in hydro-project/common. Each enum is an ``IntEnum`` whose
members are the plain numbers protobuf uses (``DAG_ALREADY_EXISTS == 6``), with protobuf's enum-wrapper
methods: ``CloudburstError.Name(6)``, ``CloudburstError.Value("DAG_ALREADY_EXISTS")``, ``keys()``, ``values()``,
``items()``. The members are also module constants, as protoc generates them (``from ... import NORMAL``).
The protobuf messages themselves (``Dag``, ``DagCall``, ...) are not offered: cbctl does not speak them.
"""

from __future__ import annotations

import enum


class _ProtoEnum(enum.IntEnum):
    """An enum with the lookups of protobuf's ``EnumTypeWrapper``."""

    @classmethod
    def Name(cls, number: int) -> str:  # noqa: N802 - protobuf's name
        try:
            return cls(number).name
        except ValueError:
            raise ValueError(f"Enum {cls.__name__} has no name defined for value {number!r}") from None

    @classmethod
    def Value(cls, name: str) -> int:  # noqa: N802 - protobuf's name
        try:
            return cls[name]
        except KeyError:
            raise ValueError(f"Enum {cls.__name__} has no value defined for name {name!r}") from None

    @classmethod
    def keys(cls) -> list[str]:
        return [member.name for member in cls]

    @classmethod
    def values(cls) -> list[int]:
        return [member.value for member in cls]

    @classmethod
    def items(cls) -> list[tuple[str, int]]:
        return [(member.name, member.value) for member in cls]

    def __str__(self) -> str:
        return str(self.value)  # as protobuf's plain int prints: str(r.error) == '6'


class ExecutionType(_ProtoEnum):
    REGULAR = 0
    MULTIEXEC = 1


class SerializerType(_ProtoEnum):
    DEFAULT = 0
    NUMPY = 1
    STRING = 2


class CloudburstError(_ProtoEnum):
    NO_CLOUDBURST_ERROR = 0
    FUNC_NOT_FOUND = 1
    NOT_PINNED = 2
    EXECUTION_ERROR = 3
    NO_SUCH_DAG = 4
    NO_RESOURCES = 5
    DAG_ALREADY_EXISTS = 6


class ConsistencyType(_ProtoEnum):
    NORMAL = 0
    SINGLE = 1
    MULTI = 2


REGULAR, MULTIEXEC = ExecutionType
DEFAULT, NUMPY, STRING = SerializerType
(NO_CLOUDBURST_ERROR, FUNC_NOT_FOUND, NOT_PINNED, EXECUTION_ERROR, NO_SUCH_DAG, NO_RESOURCES,
 DAG_ALREADY_EXISTS) = CloudburstError
NORMAL, SINGLE, MULTI = ConsistencyType

#: The cbctl consistency mode each Cloudburst mode runs as. NORMAL is Cloudburst's last-writer-wins world.
#: SINGLE and MULTI (single- and multi-key causal) both run as cbctl's ``causal``: it tracks a vector clock per
#: key and carries the call's dependencies across the DAG's functions, which is MULTI's promise (and more than
#: SINGLE's); cbctl has no weaker causal mode to map SINGLE to.
CBCTL_MODES = {NORMAL: "lww", SINGLE: "causal", MULTI: "causal"}
