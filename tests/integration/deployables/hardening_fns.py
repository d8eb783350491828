"""Functions tests/integration/test_hardening.py deploys: each shows one way a value goes wrong."""

import cbctl


def _refuse_to_load():
    raise RuntimeError("this object cannot be rebuilt in the caller")


class Unloadable:
    """Pickles fine on the executor; its unpickling in the caller raises."""

    def __reduce__(self):
        return (_refuse_to_load, ())


@cbctl.function
def hd_unloadable(cb):
    return Unloadable()


@cbctl.function
def hd_fine_after(cb, x):
    return x + 1


class Opaque:
    """An object with no JSON form."""


@cbctl.function
def hd_an_object(cb):
    return Opaque()


@cbctl.function
def hd_loop_step(cb, key, value):
    """Writes under its own trigger's prefix: a loop only the chain limit stops."""
    cb.put(f"hd-loop/{value + 1}", value + 1)


@cbctl.function
def hd_send_everywhere(cb, count, message):
    """Sends ``message`` to executor-0 .. executor-(count-1) (itself included) and returns without waiting."""
    for i in range(count):
        cb.send(f"executor-{i}", message)
    return cb.getid()


@cbctl.function
def hd_recv_now(cb, *_ignored):
    return [cb.getid(), cb.recv(timeout=0.2)]


@cbctl.function
def hd_inbox_start(cb, size, wait_s):
    import uuid

    return {"id_key": f"hd-inbox/{uuid.uuid4().hex}", "size": size, "wait_s": wait_s}


@cbctl.function
def hd_inbox_listener(cb, plan):
    """Publishes its id, keeps serving (cb.get) without reading its messages until the sender is done."""
    import time

    cb.put(plan["id_key"], cb.getid())
    deadline = time.monotonic() + 60
    while cb.get(plan["id_key"] + "/done", None) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return [len(m) for _, m in cb.recv(timeout=0)]


@cbctl.function
def hd_inbox_sender(cb, plan):
    import time

    deadline = time.monotonic() + 60
    target = cb.get(plan["id_key"], None)
    while target is None and time.monotonic() < deadline:
        time.sleep(0.005)
        target = cb.get(plan["id_key"], None)
    outcome = "all accepted"
    try:
        for _ in range(3):
            cb.send(target, b"x" * plan["size"])
        until = time.monotonic() + plan["wait_s"]
        while time.monotonic() < until:
            cb.recv(timeout=0.05)  # a refusal comes back asynchronously
    except cbctl.InboxFull as exc:
        outcome = f"InboxFull: {exc}"
    cb.put(plan["id_key"] + "/done", True)
    return outcome


@cbctl.function
def hd_inbox_report(cb, heard, outcome):
    return {"heard": heard, "outcome": outcome}


cbctl.dag("hd_inbox", functions=[hd_inbox_start, hd_inbox_listener, hd_inbox_sender, hd_inbox_report],
          edges=[(hd_inbox_start, hd_inbox_listener), (hd_inbox_start, hd_inbox_sender),
                 (hd_inbox_listener, hd_inbox_report), (hd_inbox_sender, hd_inbox_report)])


_LEAKED: list = []


@cbctl.function
def hd_leak(cb, mib):
    """Keeps ``mib`` MiB more in a module global on every call: a leak, as a cache that never evicts is."""
    _LEAKED.append(bytearray(mib << 20))
    return [cb.getid(), len(_LEAKED)]
