"""A DAG whose first function, and a plain helper, come from a sibling file (usability_helpers.py)."""

from usability_helpers import shout, ux_loud

import cbctl


@cbctl.function
def ux_echo_loud(cb, text):
    return text + " " + shout("again")


cbctl.dag("ux_cross", [ux_loud, ux_echo_loud])
