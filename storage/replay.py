"""The replay tables, and what a replay build reads from the catalog.

The sampling math is :mod:`curation.replay`; this module holds the tables it fills
(``replay_sets``, ``replay_items``, ``replay_state`` and the view ``v_replay``, created by
:data:`DDL` as the replay stage's migrations) and the read-only queries that gather a build's
pool (the documents that may be replayed, with their term columns), the retention state, the
set counts and the user's importance query.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from glia.storage.catalog import query_rolled_back
from glia.storage.sql import identifier, registered, relation_columns, relations

PRUNED_STATUSES = ("queued", "quarantined", "applied")

POOL_SCHEMA = pa.schema([
    ("doc_id", pa.string()),
    ("shard_id", pa.string()),
    ("first_seen_run", pa.int64()),
    ("surprise", pa.float64()),
    ("utility", pa.float64()),
    ("novelty", pa.float64()),
    ("importance", pa.float64()),
    ("protected", pa.bool_()),
    ("strata", pa.list_(pa.string())),
])

STATE_SCHEMA = pa.schema([
    ("doc_id", pa.string()),
    ("last_replayed_run", pa.int32()),
    ("last_salient_run", pa.int32()),
    ("times_replayed", pa.int64()),
])

ITEMS_SCHEMA = pa.schema([
    ("set_id", pa.int32()),
    ("doc_id", pa.string()),
    ("is_new", pa.bool_()),
    ("score", pa.float64()),
    ("retention", pa.float64()),
    ("priority", pa.float64()),
    ("probability", pa.float64()),
    ("weight", pa.float64()),
    ("count", pa.int64()),
])

DDL = """
CREATE TABLE IF NOT EXISTS replay_sets (
    set_id        INTEGER PRIMARY KEY,
    run_id        INTEGER NOT NULL,      -- the night the set belongs to (retention counts from it)
    created_at    TIMESTAMPTZ NOT NULL,
    origin        VARCHAR NOT NULL,      -- flow (the replay stage) | cli (glia replay build) | api
    seed          BIGINT NOT NULL,
    size          BIGINT NOT NULL,       -- draws
    alpha         DOUBLE NOT NULL,
    beta          DOUBLE NOT NULL,       -- after annealing
    new_fraction  DOUBLE NOT NULL,
    n_pool        BIGINT NOT NULL,       -- eligible documents
    n_pool_new    BIGINT NOT NULL,
    n_items       BIGINT NOT NULL,       -- distinct documents drawn
    n_new_draws   BIGINT NOT NULL,
    n_unscored    BIGINT NOT NULL,       -- pool documents no term scored (given the top score)
    n_excluded    BIGINT NOT NULL,       -- pruned or duplicate documents left out
    terms         VARCHAR[],             -- priority terms that had data
    terms_missing VARCHAR[],             -- weighted terms without data (contributed nothing)
    rarity_source VARCHAR,               -- metadata columns (+strata: decide's protected strata) | NULL
    text_column   VARCHAR,
    id_column     VARCHAR,
    params        JSON
);
CREATE TABLE IF NOT EXISTS replay_items (
    set_id       INTEGER NOT NULL,
    doc_id       VARCHAR NOT NULL,
    is_new       BOOLEAN NOT NULL,       -- first seen in the set's run
    score        DOUBLE,                 -- s_i, the weighted term mean in (0, 1]
    retention    DOUBLE,                 -- R_i
    priority     DOUBLE NOT NULL,        -- p_i = (eps + s_i) * R_i
    probability  DOUBLE NOT NULL,        -- P(i) of one draw
    weight       DOUBLE NOT NULL,        -- importance-sampling weight, max over the pool = 1
    "count"      BIGINT NOT NULL,        -- draws of this document
    PRIMARY KEY (set_id, doc_id)
);
CREATE TABLE IF NOT EXISTS replay_state (
    doc_id             VARCHAR PRIMARY KEY,
    last_replayed_run  INTEGER,
    last_salient_run   INTEGER,
    times_replayed     BIGINT NOT NULL DEFAULT 0
);
CREATE OR REPLACE VIEW v_replay AS
    SELECT i.doc_id, i.set_id, s.run_id, i.weight, i."count", i.priority, i.probability, i.is_new,
           i.score, i.retention, d.source, d.shard_path, d."row", d.shard_id,
           s.set_id = (SELECT max(set_id) FROM replay_sets) AS latest
    FROM replay_items i JOIN replay_sets s USING (set_id) LEFT JOIN documents d USING (doc_id);
"""

# The schema of these tables (see storage.migrations.StageMigration); add a migration to change it.
MIGRATIONS: tuple[tuple[int, str, str], ...] = ((1, "replay_sets, replay_items, replay_state; v_replay", DDL),)


class PoolQuery(Protocol):
    """What the pool read depends on (``curation.replay.ReplayParams`` has these fields)."""

    @property
    def importance_column(self) -> str: ...

    @property
    def importance_sql(self) -> str: ...

    @property
    def rarity_columns(self) -> tuple[str, ...]: ...

    @property
    def exclude_duplicates(self) -> bool: ...


@dataclass
class ReplayCatalog:
    """What a replay build reads from the catalog (read-only): the earlier documents with their
    term columns, the retention state, how many sets exist, and the user's importance query."""

    pool: pa.Table  # POOL_SCHEMA: the active documents that may be replayed
    n_excluded: int  # active documents left out: pruned or duplicates
    rarity_source: str | None  # what the strata came from (rarity_label)
    state: pa.Table  # STATE_SCHEMA
    n_sets: int
    next_set_id: int
    importance: pa.Table | None  # doc_id, importance from importance_sql
    pruned_ids: pa.Array  # ids the prune queue holds (excluded wherever they show up)


def read_replay_catalog(con: duckdb.DuckDBPyConnection, query: PoolQuery) -> ReplayCatalog:
    """Read everything a build needs."""
    rels = relations(con)
    importance = run_importance_sql(con, query.importance_sql) if query.importance_sql else None
    pruned = _pruned_ids(con, rels)
    pool, n_excluded, rarity_source = read_pool(con, query, rels, pruned)
    state = STATE_SCHEMA.empty_table()
    n_sets, next_id = 0, 1
    if "replay_state" in rels:
        state = con.sql(
            "SELECT doc_id, last_replayed_run, last_salient_run, times_replayed FROM replay_state"
        ).to_arrow_table().cast(STATE_SCHEMA)
    if "replay_sets" in rels:
        n_sets, next_id = con.execute("SELECT count(*), coalesce(max(set_id), 0) + 1 FROM replay_sets").fetchall()[0]
    return ReplayCatalog(pool, n_excluded, rarity_source, state, int(n_sets), int(next_id), importance, pruned)


def _pruned_ids(con: duckdb.DuckDBPyConnection, rels: set[str]) -> pa.Array:
    """The ids the prune queue holds as queued, quarantined or applied."""
    if "prune_queue" in rels and {"doc_id", "status"} <= set(relation_columns(con, "prune_queue")):
        return con.sql(
            "SELECT DISTINCT CAST(doc_id AS VARCHAR) AS doc_id FROM prune_queue WHERE status IN (SELECT unnest(?))",
            params=[list(PRUNED_STATUSES)]).to_arrow_table().column("doc_id").combine_chunks()
    return pa.array([], pa.string())


def run_importance_sql(con: duckdb.DuckDBPyConnection, sql: str) -> pa.Table:
    """Run the user's importance query inside a transaction that is rolled back, so it can
    read anything and change nothing. It must return ``doc_id`` and ``importance``."""
    try:
        table = query_rolled_back(con, sql)
    except duckdb.Error as exc:
        raise ValueError(f"replay importance_sql failed: {exc}; it must be a SELECT returning doc_id, importance") from exc
    if table is None:
        raise ValueError("replay importance_sql returned no rows: it must be a SELECT returning doc_id, importance")
    rel = table
    if not {"doc_id", "importance"} <= set(rel.column_names):
        raise ValueError(f"replay importance_sql returned columns {rel.column_names}; it must return doc_id and importance")
    return pa.table({"doc_id": pc.cast(rel["doc_id"], pa.string()), "importance": pc.cast(rel["importance"], pa.float64())})


def read_pool(con: duckdb.DuckDBPyConnection, query: PoolQuery, rels: set[str],
              pruned: pa.Array) -> tuple[pa.Table, int, str | None]:
    """The active documents in the catalog that may be replayed, with their term columns
    (from ``v_documents``: every tag column joined by name); how many were left out; and what
    their strata came from."""
    if "v_documents" not in rels:
        return POOL_SCHEMA.empty_table(), 0, None
    present = set(relation_columns(con, "v_documents"))
    sel = ["CAST(doc_id AS VARCHAR) AS doc_id", "shard_id", "CAST(first_seen_run AS BIGINT) AS first_seen_run"]
    for term in ("surprise", "utility", "novelty"):
        sel.append(f"CAST({term} AS DOUBLE) AS {term}" if term in present else f"CAST(NULL AS DOUBLE) AS {term}")
    col = query.importance_column
    sel.append(f"CAST({identifier(col)} AS DOUBLE) AS importance" if col and col in present else "CAST(NULL AS DOUBLE) AS importance")
    sel.append("CAST(protected AS BOOLEAN) AS protected" if "protected" in present else "CAST(NULL AS BOOLEAN) AS protected")
    strata, rarity_source = strata_sql(query.rarity_columns, present)
    sel.append(f"{strata} AS strata")
    where = ["true"]
    if query.exclude_duplicates:
        where += [f"{c} IS NULL" for c in ("exact_dup_of", "near_dup_of") if c in present]
    if "prune_queue" not in rels and "action" in present:
        where.append("action IS DISTINCT FROM 'prune'")
    total = con.execute("SELECT count(*) FROM v_documents").fetchall()[0][0]
    where.append("doc_id NOT IN (SELECT doc_id FROM _replay_pruned)")
    with registered(con, "_replay_pruned", pa.table({"doc_id": pruned})):
        table = con.sql(f"SELECT {', '.join(sel)} FROM v_documents WHERE {' AND '.join(where)}").to_arrow_table()
    table = table.cast(POOL_SCHEMA)
    return table, int(total) - table.num_rows, rarity_source


def strata_sql(cols: Sequence[str], present: set[str]) -> tuple[str, str | None]:
    """SQL for each document's strata: its metadata ``col=value`` (as ``curation.replay.metadata_strata``)
    plus the decide stage's protected ``strata`` when that column exists."""
    use = [c for c in cols if c in present]
    parts = ", ".join(f"CASE WHEN {identifier(c)} IS NULL THEN NULL ELSE '{c}=' || CAST({identifier(c)} AS VARCHAR) END" for c in use)
    meta = f"list_filter([{parts}], lambda x: x IS NOT NULL)" if use else "CAST([] AS VARCHAR[])"
    source = rarity_label(use, "strata" in present)
    if "strata" in present:
        return f"list_concat({meta}, coalesce(CAST(strata AS VARCHAR[]), CAST([] AS VARCHAR[])))", source
    return (meta if use else "CAST(NULL AS VARCHAR[])"), source


def rarity_label(metadata_columns: Sequence[str], decide_strata: bool) -> str | None:
    """What the rarity term's strata came from, e.g. ``label+strata``."""
    parts = [*metadata_columns, *(["strata"] if decide_strata else [])]
    return "+".join(parts) or None


# -- outside the night: glia replay build / export (engine.replay) -------------------------------


def latest_run(con: duckdb.DuckDBPyConnection) -> int:
    """The latest run that completed (a replay set outside the night belongs to it)."""
    row = con.execute("SELECT max(run_id) FROM runs WHERE status IN ('completed', 'nothing_new')").fetchall()[0]
    if row is None or row[0] is None:
        raise ValueError("no completed run in this database: run `glia run SHARDS --db ...` first")
    return int(row[0])


def run_columns(con: duckdb.DuckDBPyConnection, run_id: int) -> tuple[str, str]:
    """The shard id and text column names the run read (from its stored config)."""
    row = con.execute("SELECT config FROM runs WHERE run_id = ?", [run_id]).fetchall()[0]
    try:
        cols = json.loads(row[0]).get("columns", {}) if row and row[0] else {}
    except ValueError:
        cols = {}
    return str(cols.get("text", "text")), str(cols.get("id", "id"))


def replay_set_row(con: duckdb.DuckDBPyConnection, db_path: Path | str, set_id: int | None,
                   if_none: str) -> dict[str, Any]:
    """The ``replay_sets`` row of ``set_id`` (default: the latest). Raises ``ValueError`` when
    there is none: "``db_path`` has no replay set" followed by ``if_none`` (what to do)."""
    try:
        sid = set_id if set_id is not None else con.execute("SELECT max(set_id) FROM replay_sets").fetchall()[0][0]
    except duckdb.CatalogException:
        sid = None
    if sid is None:
        raise ValueError(f"{db_path} has no replay set{if_none}")
    meta = con.sql("SELECT * FROM replay_sets WHERE set_id = ?", params=[sid]).to_arrow_table()
    if meta.num_rows == 0:
        raise ValueError(f"no replay set {sid} in {db_path}; see SELECT set_id, run_id FROM replay_sets")
    return meta.to_pylist()[0]
