"""cbctl's runtime: one package per process role, over a shared layer.

- ``supervisor/``: the process that starts, watches and scales the others (``cbctl up`` runs it).
- ``scheduler/``: takes calls from clients, places them on executors, retries lost ones, registers functions.
- ``executor/``: runs user functions, with the cache, consistency sessions, batching, multi-exec and
  continuations.
- ``store/``: the key-value store node and its data backends (write-ahead log + lattices today).
- ``wire/``: what crosses a socket: messages, serialization, authentication, size limits.
- The modules here (process, cluster, defaults, metrics, registry, dag, lattices, the store client, ...) are
  shared: every role and the client may import them, and they import only ``wire/`` and each other.

Arrows point down: a role imports ``wire/`` and the shared modules, never another role (it talks to another
role through messages). ``python3 ../shared/tools/imports.py .`` checks this, and so does
``tests/unit/test_layout.py``.
"""
