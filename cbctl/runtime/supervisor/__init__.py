"""The supervisor process (``cbctl up`` starts it): starts the store, the schedulers and the executors as
child processes, restarts the ones that crash, answers control requests (status, stop, ``cbctl scale``).

Runs in: the supervisor process only. May import ``cbctl.runtime.wire`` and the shared modules in
``cbctl.runtime``; never another role's package (it starts them by module name, see ``ROLE_MODULES``).
"""
