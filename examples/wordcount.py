"""Word count with its state in the store: each word's running total lives under its own key.

Deploy and call it:

    cbctl deploy examples/wordcount.py
    cbctl call wordcount "the cat saw the dog"    # -> {"the": 2, "cat": 1, "saw": 1, "dog": 1}
    cbctl call wordcount "the end"                # -> {"the": 3, "end": 1}   (totals so far)
    cbctl get wordcount/the                       # -> 3

From Python: ``cbctl.connect().call("wordcount", "the cat saw the dog")`` returns the same dict.

Each call reads every word's total with ``cb.get`` and writes it back with ``cb.put``. The store is
last-writer-wins, so two calls counting the same word at the same moment can lose one increment:
call it from one caller at a time (a counter lattice would make concurrent increments merge).
"""

import cbctl

KEY_PREFIX = "wordcount/"


@cbctl.function
def wordcount(cb, text):
    counts: dict[str, int] = {}
    for word in text.lower().split():
        word = word.strip(".,;:!?\"'()")
        if word:
            counts[word] = counts.get(word, 0) + 1
    totals = {}
    for word, n in counts.items():
        key = KEY_PREFIX + word
        totals[word] = cb.get(key, 0) + n
        cb.put(key, totals[word])
    return totals
