"""Transparent huge pages off while a night runs, and back as they were after.

A night allocates and frees hundreds of megabytes of short-lived buffers (Arrow's mimalloc and
numpy both ask the kernel for transparent huge pages on large allocations). Each fresh huge
page is zeroed whole on its first touch, 2 MB at a time, however little of it is then used; on
the 2-core benchmark VM a quarter of the dedup night's CPU went to that zeroing
(``docs/benchmarks-dedup.md``). With the process opted out (``prctl(PR_SET_THP_DISABLE)``,
Linux 3.15+) pages are 4 KB and only touched ones are zeroed. Outputs never change: this is
only where memory comes from.
"""

from __future__ import annotations

import ctypes
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

MODES = ("off", "system")
_PR_SET_THP_DISABLE = 41
_PR_GET_THP_DISABLE = 42

# Nights may overlap in one process (two catalogs, two threads): the flag is per process, so
# it is set by the first night in and restored by the last one out.
_lock = threading.Lock()
_holders = 0
_restore: int | None = None


def check_mode(mode: object, where: str = "") -> None:
    """Refuse a ``huge_pages`` setting other than ``off`` or ``system``."""
    if mode not in MODES:
        raise ValueError(f"{where}huge_pages must be 'off' (the night opts its process out of "
                         f"transparent huge pages) or 'system' (leave the kernel's setting), got {mode!r}")


def _prctl() -> ctypes._CFuncPtr | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def disabled() -> bool | None:
    """Whether this process is opted out of transparent huge pages (None where unknown)."""
    prctl = _prctl()
    if prctl is None:
        return None
    state = prctl(_PR_GET_THP_DISABLE, 0, 0, 0, 0)
    return None if state < 0 else bool(state)


@contextmanager
def huge_pages(mode: str) -> Iterator[None]:
    """Within the block the process allocates without transparent huge pages when ``mode`` is
    ``off`` (a no-op where the kernel has no such switch); ``system`` changes nothing."""
    check_mode(mode)
    if mode == "system" or not _enter():
        yield
        return
    try:
        yield
    finally:
        _leave()


def _enter() -> bool:
    global _holders, _restore
    prctl = _prctl()
    if prctl is None:
        return False
    with _lock:
        if _holders == 0:
            before = prctl(_PR_GET_THP_DISABLE, 0, 0, 0, 0)
            if before < 0 or prctl(_PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0:
                return False
            _restore = before
        _holders += 1
    return True


def _leave() -> None:
    global _holders, _restore
    prctl = _prctl()
    with _lock:
        _holders -= 1
        if _holders == 0 and prctl is not None and _restore == 0:
            prctl(_PR_SET_THP_DISABLE, 0, 0, 0, 0)
            _restore = None
