"""One nightly run per database at a time.

An advisory ``flock`` on ``<db>.lock`` is held for the whole run. The kernel drops it when
the process dies however it dies (even SIGKILL), so a stale lock from a killed run clears
itself; the file's JSON body only tells the next caller who holds it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType


class RunInProgressError(RuntimeError):
    """Another ``glia run`` holds this database."""


class RunLock:
    """Context manager around the per-database run lock."""

    def __init__(self, db_path: Path) -> None:
        self.path = Path(f"{db_path}.lock")
        self._fh: int | None = None

    def holder(self) -> dict[str, object]:
        """What the lock file says about its holder (may be stale if nobody holds the lock)."""
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self, run_id: int | None = None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            h = self.holder()
            raise RunInProgressError(
                f"another run is in progress on this database: run {h.get('run_id', '?')} "
                f"(pid {h.get('pid', '?')} on {h.get('host', '?')}, started {h.get('started', '?')}); "
                f"wait for it to finish or stop it (lock file: {self.path})"
            ) from None
        self._fh = fd
        self.update(run_id)

    def update(self, run_id: int | None) -> None:
        """Record the run id once it is known."""
        assert self._fh is not None, "lock not held"
        body = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "run_id": run_id,
        }
        os.ftruncate(self._fh, 0)
        os.pwrite(self._fh, json.dumps(body).encode(), 0)

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            os.close(self._fh)
            self._fh = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
