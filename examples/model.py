"""A class as a function: expensive set-up once per executor, then one cheap ``run`` per request.

Deploy and call it:

    cbctl deploy examples/model.py
    cbctl call model 4
    # -> {"prediction": 12, "executor": "executor-0", "instance": "3f9c2a1b", "served": 1}
    cbctl call model 5
    # -> {"prediction": 15, ..., "served": 2} when it lands on the same executor: same instance, no new set-up

The executor constructs ``Model(3)`` (``init_args``) once, when it first needs it, and keeps the
instance: ``served`` counts the requests that instance answered, and every construction is recorded in
the store under ``model/instances/EXECUTOR/INSTANCE`` (``cbctl get`` one, or ``Client.list_keys``), so
there is at most one key per executor however many calls were made. A re-deploy constructs afresh.
"""

import time
import uuid

import cbctl

#: Seconds the constructor pretends to spend loading weights.
LOAD_SECONDS = 0.2


@cbctl.function(name="model", init_args=(3,))
class Model:
    def __init__(self, scale: int) -> None:
        time.sleep(LOAD_SECONDS)  # stands in for loading a model from disk
        self.scale = scale
        self.instance = uuid.uuid4().hex[:8]
        self.served = 0

    def run(self, cb, x):
        if self.served == 0:
            # __init__ has no cb; the first request records the construction in the store
            cb.put(f"model/instances/{cb.getid()}/{self.instance}", time.time())
        self.served += 1
        return {"prediction": x * self.scale, "executor": cb.getid(), "instance": self.instance,
                "served": self.served}
