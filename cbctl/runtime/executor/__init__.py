"""The executor process: runs user functions for the schedulers, with the cache in front of the store
(``cache``), the consistency modes' per-call state, batching, multi-exec joins, continuations, the user
library (``userlib``, the ``cb`` argument) and graceful departure.

Runs in: each executor process. May import ``cbctl.runtime.wire`` and the shared modules in
``cbctl.runtime``; never another role's package (schedulers and the store are reached by messages).
"""
