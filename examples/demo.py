"""The README's demo: bring up a cluster in a temporary home, deploy the examples, call them, tear down.

Run it with `python examples/demo.py`. Every step is a real `cbctl` command, printed before it runs,
so the output doubles as a tour of the CLI. The cluster is always stopped, even if a step fails.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent

STEPS: list[list[str]] = [
    ["up", "--executors", "2"],
    ["status"],
    ["put", "greeting", '"hello, cbctl"'],
    ["get", "greeting"],
    ["deploy", str(EXAMPLES / "pipeline.py")],
    ["call", "pipeline", "3"],
    ["call", "diamond", "5"],
    ["deploy", str(EXAMPLES / "wordcount.py")],
    ["call", "wordcount", "the cat saw the dog"],
    ["get", "wordcount/the"],
    ["deploy", str(EXAMPLES / "messaging.py")],
    ["call", "messaging", "hello"],
    ["deploy", str(EXAMPLES / "model.py")],
    ["call", "model", "4"],
    ["ls"],
]


def run(home: Path, args: list[str]) -> None:
    print(f"$ cbctl {' '.join(shlex.quote(a) for a in args)}", flush=True)
    env = {**os.environ, "CBCTL_HOME": str(home)}
    result = subprocess.run([sys.executable, "-m", "cbctl.cli", *args], env=env, text=True, capture_output=True)
    output = (result.stdout + result.stderr).rstrip()
    if output:
        print(output)
    if result.returncode != 0:
        raise SystemExit(f"demo step failed: cbctl {' '.join(args)}")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="cbctl-demo-") as tmp:
        home = Path(tmp)
        try:
            for args in STEPS:
                run(home, args)
        finally:
            run(home, ["down"])
    print("demo finished: every step above ran against a real local cluster")


if __name__ == "__main__":
    main()
