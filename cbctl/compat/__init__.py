"""Other systems' client APIs, as thin adapters over cbctl's public client and user library.

``cbctl.compat.cloudburst``: Cloudburst's ``CloudburstConnection``, user library, references, futures, error
codes and Anna lattices, so a Cloudburst program runs on cbctl unmodified.
"""
