"""Stage tables are versioned like the catalog (``stage_schema``), and a database made before
they were upgrades in place: the next night adopts its stage tables and runs on."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pytest

from conftest import NIGHTS, open_db, query, run_night
from glia.stages.decide import DecideStage
from glia.stages.replay import ReplayStage
from glia.storage.catalog import Catalog, SchemaTooNewError
from glia.storage.migrations import LATEST_VERSION

RULES = '[run]\nstages = ["dedup", "decide", "replay"]\n[stages.replay]\nsize = 200\nseed = 1\n'
# The stage tables and what two databases must agree on after the same nights.
COMPARED = {
    "decisions": "SELECT * FROM decisions ORDER BY ALL",
    "prune_queue": "SELECT * EXCLUDE (changed_at) FROM prune_queue ORDER BY ALL",
    "protected": "SELECT * FROM protected ORDER BY ALL",
    "replay_items": "SELECT * FROM replay_items ORDER BY ALL",
    "replay_state": "SELECT * FROM replay_state ORDER BY ALL",
    "v_manifest": "SELECT * EXCLUDE (shard_path) FROM v_manifest ORDER BY ALL",
}


def _as_before_stage_schema(db: Path) -> None:
    """Turn ``db`` into what the Glia before versioned stage tables wrote: the same tables and
    rows, schema version 3, no ``stage_schema``."""
    con = duckdb.connect(str(db))
    try:
        con.execute("DROP TABLE stage_schema")
        con.execute("DELETE FROM schema_version WHERE version > 3")
    finally:
        con.close()


def _tables(db: Path) -> dict[str, list[tuple]]:
    with open_db(db) as con:
        return {name: con.execute(sql).fetchall() for name, sql in COMPARED.items()}


def test_a_database_from_before_stage_migrations_upgrades_and_runs_on(tmp_path: Path) -> None:
    rules = tmp_path / "glia.toml"
    rules.write_text(RULES)
    old, fresh = tmp_path / "old" / "glia.duckdb", tmp_path / "fresh" / "glia.duckdb"
    root = tmp_path / "shards"
    shutil.copytree(NIGHTS[1], root / "night1")
    for db in (old, fresh):
        assert run_night(root, db, rules).status == "completed"
    _as_before_stage_schema(old)
    assert query(old, "SELECT max(version) FROM schema_version") == [(3,)]
    assert "stage_schema" not in {r[0] for r in query(old, "SELECT table_name FROM duckdb_tables()")}

    shutil.copytree(NIGHTS[2], root / "night2")
    for db in (old, fresh):
        assert run_night(root, db, rules).status == "completed"
    assert query(old, "SELECT max(version) FROM schema_version") == [(LATEST_VERSION,)]
    assert query(old, "SELECT stage, max(version) FROM stage_schema GROUP BY stage ORDER BY stage") == \
        [("decide", len(DecideStage.migrations)), ("replay", len(ReplayStage.migrations))]
    got, want = _tables(old), _tables(fresh)
    assert want["decisions"] and want["replay_items"]  # not a vacuous comparison
    for name in COMPARED:
        assert got[name] == want[name], f"{name} differs after upgrading"


def test_stage_migrations_apply_once_in_order_and_refuse_a_newer_database(tmp_path: Path) -> None:
    db = tmp_path / "glia.duckdb"
    steps = ((1, "a table", "CREATE TABLE IF NOT EXISTS t (a INTEGER)"),
             (2, "a column", "ALTER TABLE t ADD COLUMN b VARCHAR"))
    with Catalog(db) as cat:
        cat.migrate((), {"demo": steps[:1]})
        cat.con.execute("INSERT INTO t VALUES (1)")
        cat.migrate((), {"demo": steps})
        cat.migrate((), {"demo": steps})  # nothing left to apply: ALTER would fail if it ran twice
        assert cat.stage_versions() == {"demo": 2}
        assert cat.con.execute("SELECT a, b FROM t").fetchall() == [(1, None)]
    with Catalog(db) as cat, pytest.raises(SchemaTooNewError, match="stage 'demo'.*version 2.*knows \\(1\\)"):
        cat.migrate((), {"demo": steps[:1]})
