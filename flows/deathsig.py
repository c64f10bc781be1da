"""Start a command that dies with its parent: ``python -m flows.deathsig PARENT_PID CMD...``.

Prefect's embedded server is a uvicorn child of ``glia run``. If the run is killed (``kill
-9``, the OOM killer) the child would live on, holding a port and ~230 MB. Linux's
``PR_SET_PDEATHSIG`` sends it SIGTERM when its parent goes; the setting survives ``exec``, so
this small launcher sets it and then becomes the real command. Elsewhere it only execs.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> None:
    parent, cmd = int(argv[0]), argv[1:]
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the setting took hold
            sys.exit(0)
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main(sys.argv[1:])
