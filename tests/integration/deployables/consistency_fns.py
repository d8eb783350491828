"""Functions the cache and consistency tests deploy: each reports which executor it ran on and what it read."""

import time

import cbctl

#: Seconds the middle step of ``rr_chain`` sleeps, giving a test time to overwrite the key mid-call.
MIDDLE_SLEEP_S = 0.6


@cbctl.function
def read_key(cb, key):
    """[executor id, the key's value or None]."""
    return [cb.getid(), cb.get(key, None)]


@cbctl.function
def read_keys(cb, keys):
    """Read every key (warming or churning the cache); returns how many had a value."""
    return sum(cb.get(key, None) is not None for key in keys)


@cbctl.function
def write_key(cb, key, value):
    cb.put(key, value)
    return cb.getid()


@cbctl.function
def resolve(cb, key):
    """Causal: merge the key's concurrent values into one, sorted and joined with '+'."""
    merged = "+".join(sorted(cb.get(key)))
    cb.put(key, merged)
    return merged


# --- repeatable read: three steps read one key while the middle one sleeps ----------------------------------


@cbctl.function
def rr_first(cb, key, marker):
    return {"key": key, "marker": marker, "seen": [[cb.getid(), cb.get(key)]]}


@cbctl.function
def rr_middle(cb, state):
    state["seen"].append([cb.getid(), cb.get(state["key"])])
    cb.put(state["marker"], 1)  # tells the test to overwrite the key now
    time.sleep(MIDDLE_SLEEP_S)
    return state


@cbctl.function
def rr_last(cb, state):
    return state["seen"] + [[cb.getid(), cb.get(state["key"])]]


cbctl.dag("rr_chain", [rr_first, rr_middle, rr_last])


# --- causal: messages and their replies -----------------------------------------------------------------------


@cbctl.function
def post(cb, thread, i):
    cb.put(f"msg-{thread}", f"m{i}")


@cbctl.function
def answer(cb, thread, i):
    """Read the thread's message, then reply to it (under causal the reply depends on what was read)."""
    cb.get(f"msg-{thread}")
    cb.put(f"reply-{thread}", f"re:m{i}")


@cbctl.function
def check(cb, thread):
    """Read the reply first, then the message: [executor id, reply, message] (None for no value)."""
    reply = cb.get(f"reply-{thread}", None)
    return [cb.getid(), reply, cb.get(f"msg-{thread}", None)]
