"""Word count as map and reduce: ephemeral partial counts, and a join trigger that runs the reducer.

Run it against a running cluster (it deploys itself):

    cbctl up
    python examples/mapreduce.py          # counts examples/mapreduce_corpus/*.txt, prints the top words

How it runs:
- The client calls ``count_part`` once per corpus file (8 calls, in flight together). Each counts its file's
  words and writes the counts as an *ephemeral* value under ``wc/part-I``: ``cb.put(..., durable=False)`` keeps
  it in the store's memory only (never in the log or a snapshot) for ``ttl`` seconds.
- The join trigger ``wc_reduce`` names the 8 part keys. Once all 8 have been put, the store calls
  ``reduce_counts`` with their keys; it reads them (``cb.get``, from whichever executor it runs on), sums
  them, and writes the total *durably* under ``wc/total/RUN``. Only the result touches the log.
- The client waits for that key and checks it against a count made locally.

Trigger calls are at least once: ``reduce_counts`` writes the same total for the same run however often it
runs. Run one word count at a time: the join gathers whichever 8 parts arrive, and the reducer refuses parts
of different runs.
"""

from __future__ import annotations

import collections
import sys
import time
import uuid
from pathlib import Path

import cbctl

CORPUS = Path(__file__).resolve().parent / "mapreduce_corpus"
PARTS = 8
PART_KEYS = [f"wc/part-{i}" for i in range(PARTS)]
PART_TTL_S = 600  # a part left behind (a reducer that never ran) leaves the store's memory after 10 minutes


def words(text: str) -> list[str]:
    return [w for w in (raw.strip(".,;:!?\"'()").lower() for raw in text.split()) if w]


@cbctl.function
def count_part(cb, run: str, index: int, text: str) -> int:
    counts = collections.Counter(words(text))
    cb.put(PART_KEYS[index], {"run": run, "counts": dict(counts)}, durable=False, ttl=PART_TTL_S)
    return sum(counts.values())


@cbctl.function
def reduce_counts(cb, keys: list[str]) -> None:
    parts = [cb.get(key) for key in keys]
    runs = sorted({part["run"] for part in parts})
    if len(runs) != 1:
        raise ValueError(f"the parts come from different runs {runs}: run one word count at a time")
    total: collections.Counter[str] = collections.Counter()
    for part in parts:
        total.update(part["counts"])
    cb.put(f"wc/total/{runs[0]}", dict(total))  # durable: the one value of this workflow worth keeping


cbctl.trigger("wc_reduce", function=reduce_counts, join=PART_KEYS)


def main(timeout_s: float = 60.0) -> int:
    texts = [path.read_text() for path in sorted(CORPUS.glob("*.txt"))]
    if len(texts) != PARTS:
        print(f"error: expected {PARTS} text files in {CORPUS}, found {len(texts)}", file=sys.stderr)
        return 1
    with cbctl.connect() as client:
        client.deploy_file(__file__)
        run = uuid.uuid4().hex[:12]
        started = time.perf_counter()
        futures = [client.call_async("count_part", run, i, text) for i, text in enumerate(texts)]
        counted = sum(future.result() for future in futures)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                total = client.get(f"wc/total/{run}")
                break
            except cbctl.NoSuchKey:
                if time.monotonic() > deadline:
                    print(f"error: no total after {timeout_s:.0f} s: see `cbctl trigger ls`", file=sys.stderr)
                    return 1
                time.sleep(0.02)
        elapsed = time.perf_counter() - started
    expected = collections.Counter(w for text in texts for w in words(text))
    if total != dict(expected):
        print("error: the total differs from a local count", file=sys.stderr)
        return 1
    print(f"{counted} words in {PARTS} parts, {len(total)} distinct, reduced in {elapsed * 1000:.0f} ms (run {run})")
    for word, n in sorted(total.items(), key=lambda item: (-item[1], item[0]))[:10]:
        print(f"{n:4d}  {word}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
