"""One run per database: the run lock and the DuckDB file lock, seen from the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import NIGHTS, glia, query, run_night
from glia.engine.config import GliaConfig
from glia.engine.pipeline import NightParts, view_sources
from glia.storage.catalog import Catalog
from glia.storage.lock import RunInProgressError, RunLock

HOLD_RUN_LOCK = """
import sys, time
from pathlib import Path
from glia.storage.lock import RunLock
lock = RunLock(Path(sys.argv[1]))
lock.acquire(run_id=41)
print("ready", flush=True)
time.sleep(600)
"""

HOLD_DUCKDB = """
import sys, time
import duckdb
con = duckdb.connect(sys.argv[1])
con.execute("SELECT count(*) FROM runs").fetchall()
print("ready", flush=True)
time.sleep(600)
"""


@contextmanager
def holder(script: str, db: Path, cwd: Path) -> Iterator[subprocess.Popen]:
    """Another process that holds something on ``db`` until it is SIGKILLed."""
    proc = subprocess.Popen([sys.executable, "-c", script, str(db)], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # EOF (not a hang) if the child dies
        assert line.strip() == "ready", proc.stderr.read() if proc.poll() is not None else line
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()


def test_run_lock_held_by_another_process(tmp_path: Path) -> None:
    db = tmp_path / "glia.duckdb"
    with holder(HOLD_RUN_LOCK, db, tmp_path) as proc:
        # in-process: the lock says who holds it
        with pytest.raises(RunInProgressError, match=rf"run 41 \(pid {proc.pid} on "):
            RunLock(db).acquire()
        # the CLI: exit 2, a clear message, and nothing written
        res = glia(["run", str(NIGHTS[1]), "--db", str(db)], tmp_path)
        out = res.stdout + res.stderr
        assert res.returncode == 2, out
        assert "another run is in progress" in out
        assert f"pid {proc.pid}" in out
        assert not db.exists()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    # The killed holder's lock file is still there, still naming it: the kernel dropped the
    # flock with the process, so the next run goes ahead.
    lock_file = Path(f"{db}.lock")
    assert json.loads(lock_file.read_text())["pid"] == proc.pid
    outcome = run_night(NIGHTS[1], db)
    assert outcome.status == "completed" and outcome.counts["docs"] == 1500
    assert query(db, "SELECT run_id, status FROM runs") == [(1, "completed")]
    assert json.loads(lock_file.read_text())["pid"] == os.getpid()


def test_database_open_in_another_process(tmp_path: Path) -> None:
    db = tmp_path / "glia.duckdb"
    with Catalog(db) as cat:  # an existing (empty) Glia database
        cat.migrate(view_sources(NightParts.build(GliaConfig())))
    with holder(HOLD_DUCKDB, db, tmp_path):
        res = glia(["run", str(NIGHTS[1]), "--db", str(db)], tmp_path)
        out = res.stdout + res.stderr
        assert res.returncode == 2, out
        assert f"cannot open {db} for writing: another process has it open" in out
        sql = glia(["sql", "SELECT count(*) FROM runs", "--db", str(db)], tmp_path)
        assert sql.returncode == 2, sql.stdout + sql.stderr
        assert f"cannot open {db} for reading: another process has it open" in sql.stdout
    # nothing was recorded, and the run lock was released
    assert query(db, "SELECT count(*) FROM runs") == [(0,)]
    with RunLock(db):
        pass
