"""The store on Redis or Redis Cluster (``cbctl up --store redis://...``): no cbctl store process.

Executors, schedulers and clients talk to Redis directly through ``RedisStoreClient`` (``client.py``), which has
the embedded ``StoreClient``'s methods; every write is one atomic Lua merge (``merge.lua``) that gives the same
bytes as ``cbctl.runtime.lattices`` and publishes the merged value, which keeps executor caches fresh
(``pushes.py``). ``url.py`` parses the store URLs and checks a server's settings before `cbctl up` uses it.

Runs in: every role (shared layer), imported only when the cluster's store is a Redis URL, so clusters on the
embedded store never import redis-py.
"""
