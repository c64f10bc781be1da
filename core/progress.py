"""Progress reporting from tasks to whoever is watching (the CLI's progress bars).

Tasks call :func:`advance`; with no reporter installed (tests, remote workers) it does
nothing. Prefect runs tasks in threads of the same process by default, so one reporter
serves them all.
"""

from __future__ import annotations

import threading
from typing import Protocol


class Reporter(Protocol):
    def start(self, stage: str, total: int) -> None: ...
    def advance(self, stage: str, n: int = 1) -> None: ...


_lock = threading.Lock()
_reporter: Reporter | None = None


def install(reporter: Reporter | None) -> None:
    global _reporter
    _reporter = reporter


def start(stage: str, total: int) -> None:
    if _reporter is not None:
        with _lock:
            _reporter.start(stage, total)


def advance(stage: str, n: int = 1) -> None:
    if _reporter is not None:
        with _lock:
            _reporter.advance(stage, n)
