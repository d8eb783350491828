"""``python -m cbctl.compat.cloudburst [--override] SCRIPT.py [ARGS]``: run a Cloudburst client script on cbctl.

Installs the compat layer (``install()``), then runs SCRIPT.py as ``__main__`` with ``sys.argv`` set to
``[SCRIPT.py, *ARGS]`` and its directory first on ``sys.path``, as ``python SCRIPT.py ARGS`` would.
"""

from __future__ import annotations

import os
import runpy
import sys
import warnings

USAGE = """usage: python -m cbctl.compat.cloudburst [--override] SCRIPT.py [ARGS...]

Run a Cloudburst client program on the cbctl cluster in $CBCTL_HOME, unmodified: its imports of
cloudburst.client.client, cloudburst.shared.* and anna.lattices get cbctl's compat layer.
  --override   use cbctl even if a real Cloudburst (or Anna client) is installed here

example: cbctl up && python -m cbctl.compat.cloudburst my_cloudburst_app.py --requests 10"""


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    override = False
    if args and args[0] == "--override":
        override = True
        args.pop(0)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    script = args[0]
    if not os.path.isfile(script):
        print(f"error: {script} is not a file: pass the path of the Cloudburst script to run", file=sys.stderr)
        return 2
    from cbctl.compat.cloudburst import install, real_packages

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # said below, in the runner's words
        if not install(override=override):
            print(f"error: a real {' and '.join(real_packages())} is installed here; pass --override to run "
                  f"{script} on cbctl anyway", file=sys.stderr)
            return 2
    sys.argv = [script, *args[1:]]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
