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
