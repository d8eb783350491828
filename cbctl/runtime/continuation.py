"""What a function returns to hand its call on (``cbctl.Continue``), and the extras key that counts the
hand-offs: shared because user code, the executor (``executor/continuation.py``, which sends the hand-off)
and the scheduler (which checks the depth) all read them.
"""

from __future__ import annotations

from typing import Any

from cbctl.errors import InvalidArgument

#: ``DagTrigger.extras`` key holding how many hand-offs the call has made so far (absent: none).
DEPTH_KEY = "depth"


class Continue:
    """Returned by a function: "my caller's result is whatever ``name(*args)`` returns".

    ``name`` is a registered function or DAG; ``args`` are its positional arguments (every source of a DAG
    receives all of them). Example, a retry loop bounded by the continuation limit::

        @cbctl.function
        def poll(cb, job):
            status = cb.get(f"jobs/{job}", default="pending")
            return status if status == "done" else cbctl.Continue("poll", job)
    """

    __slots__ = ("name", "args")

    def __init__(self, name: str, *args: Any) -> None:
        if not isinstance(name, str) or not name:
            raise InvalidArgument(f"cbctl.Continue needs the name of a registered function or DAG, got {name!r}")
        self.name = name
        self.args = args

    def __repr__(self) -> str:
        return f"Continue({self.name!r}, {', '.join(map(repr, self.args))})"
