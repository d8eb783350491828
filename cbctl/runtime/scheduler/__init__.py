"""The scheduler process: takes calls and DAG calls from clients, places them on executors (``policy``),
retries calls lost with an executor (``retries``), registers functions, DAGs and triggers.

Runs in: each scheduler process. May import ``cbctl.runtime.wire`` and the shared modules in
``cbctl.runtime``; never another role's package (executors and the store are reached by messages).
"""
