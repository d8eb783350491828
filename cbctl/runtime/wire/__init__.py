"""What crosses a socket between cbctl's processes: the typed messages (``messages``), how values are encoded
(``serialization``), CURVE keys and ZAP (``auth``), and the size limits on frames (``limits``).

Every role and the client import this package; it imports only ``cbctl.errors`` and
``cbctl.runtime.defaults``, never a role or another shared module.
"""
