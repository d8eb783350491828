"""``python -m benchmarks.peers``: see ``benchmarks/peers/__init__.py``."""

from benchmarks.peers.driver import main

main()
