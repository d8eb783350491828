"""``python -m cbctl.runtime.supervisor --home HOME --spec JSON``: the supervisor process, as ``cbctl up`` and
``cbctl.local()`` start it.

Its first act is to start the forkserver (see forkserver.py), before it imports the supervisor: the
forkserver's interpreter then imports every role's module while this one imports its own, side by side on
two cores instead of one after the other. Only the standard library and two light modules come before it.
"""

import os
import time

from cbctl.runtime.defaults import PRIVATE_UMASK
from cbctl.runtime.supervisor.forkserver import start_forkserver


def main() -> None:
    entered = time.time()
    os.umask(PRIVATE_UMASK)  # before the forkserver exists: it, and every child forked from it, inherit it
    start_forkserver()
    forkserver_started = time.time()
    from cbctl.runtime.supervisor import supervisor

    supervisor.main(startup={"supervisor_entered": entered, "forkserver_started": forkserver_started,
                             "supervisor_imported": time.time()})


if __name__ == "__main__":
    main()
