"""The store process: the key-value node (``node``) that answers the store client's requests, keeps
storage triggers, and keeps its data in a backend (the write-ahead log + lattices today, ``wal``).

Runs in: the store process only. May import ``cbctl.runtime.wire`` and the shared modules in
``cbctl.runtime``; never another role's package (calls go to schedulers as messages).
"""
