"""A helper module that usability_cross.py imports: its functions must be deployable through it."""

import cbctl


def shout(text):
    return text.upper() + "!"


@cbctl.function
def ux_loud(cb, text):
    return shout(text)
