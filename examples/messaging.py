"""Direct messages between two running functions: ``cb.send(executor_id, message)`` / ``cb.recv()``.

Deploy and call it (on a cluster with at least 2 executors):

    cbctl deploy examples/messaging.py
    cbctl call messaging hello
    # -> {"listener": "executor-1", "talker": "executor-0", "heard": ["executor-0", "hello"]}

The DAG is ``start -> (listener, talker) -> report``. The scheduler puts the two parallel branches on
different executors, so both run at the same time. How the talker learns the listener's id: ``start``
makes a fresh key for this call; ``listener`` publishes ``cb.getid()`` under it and waits in
``cb.recv(timeout=...)``; ``talker`` polls the store until the id appears, then sends the message to that
executor. ``report`` returns who talked to whom and what the listener heard (``[sender, message]``).
"""

import time
import uuid

import cbctl

#: Seconds either branch waits for the other before giving up (the call then fails with a clear error).
WAIT_S = 5.0


@cbctl.function
def start(cb, message):
    return {"key": f"messaging/{uuid.uuid4().hex}", "message": message}


@cbctl.function
def listener(cb, plan):
    cb.put(plan["key"], cb.getid())
    heard = cb.recv(timeout=WAIT_S)
    if not heard:
        raise TimeoutError(f"listener on {cb.getid()} heard nothing within {WAIT_S} s")
    return {"listener": cb.getid(), "heard": list(heard[0])}


@cbctl.function
def talker(cb, plan):
    deadline = time.monotonic() + WAIT_S
    listener_id = cb.get(plan["key"], None)
    while listener_id is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no listener published its id under {plan['key']} within {WAIT_S} s")
        time.sleep(0.002)
        listener_id = cb.get(plan["key"], None)
    cb.send(listener_id, plan["message"])
    return cb.getid()


@cbctl.function
def report(cb, heard, talker_id):
    return {"listener": heard["listener"], "talker": talker_id, "heard": heard["heard"]}


cbctl.dag("messaging", functions=[start, listener, talker, report],
          edges=[(start, listener), (start, talker), (listener, report), (talker, report)])
