"""Shared fixtures for Glia's test suite.

Everything runs on real components: the example corpus under ``examples/commons``, real
Parquet files and a real DuckDB catalog in a temporary folder, the real night: the engine
``glia run`` uses (``engine.night``), or the real Prefect flow where a test asks for it
(``run_night(..., orchestrator="prefect")``; Prefect's embedded server takes several seconds
to start the first time a flow runs in a process). The three-night run is a session fixture
shared by the test modules that only inspect its results.
"""

from __future__ import annotations

import atexit
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# -- environment, before anything imports Prefect ------------------------------------------
# flows/env.py derives PREFECT_HOME from GLIA_HOME; keep Prefect's state out of the repo
# and out of the developer's home, and keep it offline.
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="glia-tests-"))
atexit.register(shutil.rmtree, _SESSION_HOME, True)
os.environ["GLIA_HOME"] = str(_SESSION_HOME / "glia-home")
os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "glia-home" / "prefect")
# Prefect creates its home without parents, and a test module may import Prefect first.
(_SESSION_HOME / "glia-home" / "prefect").mkdir(parents=True)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import duckdb  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
COMMONS = REPO / "examples" / "commons"
NIGHTS = {n: COMMONS / f"night{n}" for n in (1, 2, 3)}
PLANTED_CSV = COMMONS / "planted.csv"

# Tables a nothing-new rerun must leave exactly as they were (everything but ``runs``).
STATE_QUERIES = {
    "shards": "SELECT * FROM shards ORDER BY ALL",
    "tag_files": "SELECT * FROM tag_files ORDER BY ALL",
    "index_segments": "SELECT * FROM index_segments ORDER BY ALL",
    "skipped": "SELECT * FROM skipped ORDER BY ALL",
    "v_documents": "SELECT * FROM v_documents ORDER BY ALL",
    "v_duplicates": "SELECT * FROM v_duplicates ORDER BY ALL",
}


# -- helpers -------------------------------------------------------------------------------


@contextmanager
def open_db(db: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection that is always closed (the flow reopens the file for writing
    in this same process, which DuckDB refuses while another configuration has it open)."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        yield con
    finally:
        con.close()


def query(db: Path, sql: str, params: list[Any] | None = None) -> list[tuple]:
    with open_db(db) as con:
        return con.execute(sql, params or []).fetchall()


def run_night(shards_root: Path, db: Path, rules: Path | None = None, state_dir: Path | None = None,
              orchestrator: str = "plain"):
    """Run one night in this process and return its NightOutcome: through the engine as
    ``glia run`` does by default (``plain``), or through the real Prefect flow (``prefect``)."""
    rules_path = str(rules) if rules else None
    if orchestrator == "prefect":
        from glia.flows.nightly import nightly_hygiene

        return nightly_hygiene(shards_root=str(shards_root), db_path=str(db), rules_path=rules_path,
                               state_dir=str(state_dir) if state_dir else None)
    assert orchestrator == "plain", orchestrator
    from glia.engine.config import load_config
    from glia.engine.night import run_night as engine_night

    return engine_night(str(shards_root), db, load_config(rules_path), state_dir)


def snapshot(db: Path) -> dict[str, list[tuple]]:
    with open_db(db) as con:
        return {name: con.execute(sql).fetchall() for name, sql in STATE_QUERIES.items()}


def file_mtimes(folder: Path) -> dict[str, int]:
    """``relative path -> mtime_ns`` of every file under ``folder``."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def cli_env() -> dict[str, str]:
    """Environment for a ``glia`` subprocess: its own Prefect home (the in-process Prefect
    server of this test session keeps its SQLite database busy) and a wide console so rich
    does not wrap the messages the tests look for."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["GLIA_HOME"] = str(_SESSION_HOME / "cli-home")
    env["PREFECT_HOME"] = str(_SESSION_HOME / "cli-home" / "prefect")
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env["COLUMNS"] = "1000"
    env["NO_COLOR"] = "1"
    env["TERM"] = "dumb"
    return env


def glia(args: list[str], tmp: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess (``python -m cli.main``)."""
    return subprocess.run(
        [sys.executable, "-m", "glia.cli.main", *args], cwd=tmp, env=cli_env(),
        capture_output=True, text=True, timeout=timeout,
    )


def run_quick_bench(script: str, out: Path, *args: str, timeout: float) -> tuple[dict, str]:
    """``bench/<script> --quick --out <out> <args>`` as ``make`` runs the full benchmark (a
    subprocess, one torch thread); the result JSON it wrote and its stdout."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / script), "--quick", "--out", str(out), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float, what: str) -> None:
    """Poll ``url`` until it answers 200; fail with the tail of ``log`` if ``proc`` exits first
    or ``timeout`` seconds pass."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{what} did not start: {log.read_text()[-2000:]}")
        time.sleep(0.3)


# -- ground truth ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PlantedPair:
    doc_id: str
    duplicate_of: str
    kind: str
    night_of_doc: int
    night_of_original: int
    jaccard: float
    origin: str


@pytest.fixture(scope="session")
def planted() -> list[PlantedPair]:
    with PLANTED_CSV.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows, "planted.csv is empty"
    return [
        PlantedPair(r["doc_id"], r["duplicate_of"], r["kind"], int(r["night_of_doc"]),
                    int(r["night_of_original"]), float(r["jaccard"]), r["origin"])
        for r in rows
    ]


@pytest.fixture(scope="session")
def corpus_texts() -> dict[str, str]:
    """doc id -> text over all three nights."""
    out: dict[str, str] = {}
    for folder in NIGHTS.values():
        for f in sorted(folder.glob("*.parquet")):
            t = pq.read_table(f, columns=["id", "text"])
            out.update(zip(t["id"].to_pylist(), t["text"].to_pylist()))
    return out


@pytest.fixture(scope="session")
def night_of_id() -> dict[str, int]:
    out: dict[str, int] = {}
    for n, folder in NIGHTS.items():
        for f in sorted(folder.glob("*.parquet")):
            out.update((i, n) for i in pq.read_table(f, columns=["id"])["id"].to_pylist())
    return out


# -- the three nights, run once --------------------------------------------------------------


@dataclass
class ThreeNights:
    root: Path
    db: Path
    state: Path
    outcomes: dict[int, Any] = field(default_factory=dict)  # night -> NightOutcome; 4 = rerun of night 3
    state_after: dict[int, dict[str, list[tuple]]] = field(default_factory=dict)
    mtimes_after: dict[int, dict[str, int]] = field(default_factory=dict)


@pytest.fixture(scope="session")
def three_nights(tmp_path_factory: pytest.TempPathFactory) -> ThreeNights:
    """Nights 1, 2, 3 delivered into one growing shard folder and run into one database,
    then night 3 run again with nothing new. Snapshots of the catalog and of the state
    folder's files are taken after each run."""
    base = tmp_path_factory.mktemp("three-nights")
    root = base / "shards"
    root.mkdir()
    db = base / "glia.duckdb"
    state = base / "glia_data"  # the default state dir beside the db
    tn = ThreeNights(root, db, state)
    for n in (1, 2, 3):
        shutil.copytree(NIGHTS[n], root / f"night{n}")
        tn.outcomes[n] = run_night(root, db)
        tn.state_after[n] = snapshot(db)
        tn.mtimes_after[n] = file_mtimes(state)
    tn.outcomes[4] = run_night(root, db)
    tn.state_after[4] = snapshot(db)
    tn.mtimes_after[4] = file_mtimes(state)
    return tn
