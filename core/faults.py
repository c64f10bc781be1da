"""Fault injection: kill the process for real at a named step, to prove a rerun recovers.

Code marks its step boundaries with :func:`point`. Normally a point is a no-op (one
comparison). With the environment variable ``GLIA_FAULT`` set to a point's name, the
process sends itself ``SIGKILL`` when it reaches that point: no ``finally`` block, no
``atexit``, no flush, no transaction rollback runs, exactly as if the machine lost power
or the OOM killer struck. ``GLIA_FAULT=name@N`` kills at the Nth time ``name`` is reached
in this process (counted across threads), e.g. ``write_atomic.batch@3``.

``GLIA_FAULT_TRACE=<file>`` appends every point reached (its name, one a line) to that file,
so a test can list the points a run passes through and then kill at each in turn.

The environment is read once, on first use: set it before the process starts (the tests run
``glia run`` as a subprocess).
"""

from __future__ import annotations

import os
import signal
import threading

_lock = threading.Lock()
_loaded = False
_target: str | None = None
_nth = 1
_trace: str | None = None
_counts: dict[str, int] = {}


def _load() -> None:
    global _loaded, _target, _nth, _trace
    spec = os.environ.get("GLIA_FAULT", "").strip()
    if spec:
        name, _, nth = spec.partition("@")
        _target = name
        try:
            _nth = int(nth) if nth else 1
        except ValueError:
            raise ValueError(f"GLIA_FAULT={spec!r}: expected NAME or NAME@N with N a positive integer") from None
        if _nth < 1:
            raise ValueError(f"GLIA_FAULT={spec!r}: N must be >= 1")
    _trace = os.environ.get("GLIA_FAULT_TRACE") or None
    _loaded = True


def point(name: str) -> None:
    """Mark a step boundary called ``name``; kill this process here if ``GLIA_FAULT`` says so."""
    if not _loaded:
        with _lock:
            if not _loaded:
                _load()
    if _target is None and _trace is None:
        return
    with _lock:
        if _trace is not None:
            # O_APPEND keeps lines from threads whole; the file is closed before any kill.
            fd = os.open(_trace, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, f"{name}\n".encode())
            finally:
                os.close(fd)
        if name != _target:
            return
        _counts[name] = _counts.get(name, 0) + 1
        if _counts[name] == _nth:
            os.kill(os.getpid(), signal.SIGKILL)

