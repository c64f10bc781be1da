"""The DuckDB catalog: schema migrations, the run's single write transaction, and views.

This is the only module that writes the database. Everything a run produces is written
in :meth:`Catalog.commit_run`, one transaction: either the whole night is visible or none
of it is.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pyarrow as pa

from glia.core import faults
from glia.storage.migrations import LATEST_VERSION, MIGRATIONS, StageMigration
from glia.storage.records import Segment, ShardRow, TableWrite, TagFile
from glia.storage.sql import identifier, registered, relations
from glia.storage.views import ViewSource, build_views

__all__ = ["Catalog", "DatabaseBusyError", "InspectionRefusedError", "RunRecord", "SchemaTooNewError", "Segment",
           "ShardRow", "TableWrite", "TagFile", "query_rolled_back"]


class DatabaseBusyError(RuntimeError):
    """Another process has the DuckDB file open, so it cannot be opened for writing."""


class SchemaTooNewError(RuntimeError):
    """The database was written by a newer Glia than this one."""


class InspectionRefusedError(PermissionError):
    """A statement that a sandboxed inspection connection does not run, because it can write files."""


@dataclass
class RunRecord:
    """Everything one run writes, committed together."""

    run_id: int
    started_at: datetime
    status: str
    shards_root: str
    config_hash: str
    code_version: str
    config: dict[str, object]
    counts: dict[str, int] = field(default_factory=dict)
    new_shards: list[ShardRow] = field(default_factory=list)
    status_changes: dict[str, str] = field(default_factory=dict)  # shard_id -> new status
    mtime_updates: dict[str, int] = field(default_factory=dict)  # shard_id -> mtime_ns
    tag_files: list[TagFile] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    skipped: pa.Table | None = None  # columns of the ``skipped`` table minus run_id
    view_sources: list[ViewSource] = field(default_factory=list)
    writes: list[TableWrite] = field(default_factory=list)
    # doc_id -> the earlier run it was first seen in, for tonight's documents seen before.
    first_seen: dict[str, int] = field(default_factory=dict)
    # Everything else worth keeping about the run: per-stage counts and seconds per step.
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None


SKIPPED_SCHEMA = pa.schema(
    [
        ("shard_id", pa.string()),
        ("path", pa.string()),
        ("row", pa.int64()),
        ("doc_id", pa.string()),
        ("reason", pa.string()),
    ]
)


def _connect(db_path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    try:
        return duckdb.connect(str(db_path), read_only=read_only)
    except duckdb.IOException as exc:
        if "lock" in str(exc).lower():
            raise DatabaseBusyError(
                f"cannot open {db_path} {'for reading' if read_only else 'for writing'}: another process "
                "has it open (a running glia, a dashboard, or a duckdb shell). Close it and rerun; "
                f"work already done is cached and will not be redone. DuckDB said: {exc}"
            ) from exc
        raise


# -- inspection: read-only SQL that cannot reach other files ------------------------------------

# DuckDB lets every connection of one process share a database instance, and the
# file-access settings belong to the instance; the lock makes "check, then restrict" one
# step for threads opening the same file at once (the dashboard's page loads).
_SANDBOX_LOCK = threading.Lock()

# Statements an inspection runs. DuckDB's allowed folders are writable as well as readable,
# so COPY, EXPORT, ATTACH, and PREPARE/EXECUTE (which can hide a COPY) are refused here;
# everything listed only reads, or changes this connection (the configuration is locked and
# the database read-only, so SET and CREATE reach no file).
_INSPECTION_STATEMENTS = frozenset(
    getattr(duckdb.StatementType, name)
    for name in ("SELECT", "PRAGMA", "CALL", "SET", "VARIABLE_SET", "TRANSACTION", "CREATE", "DROP")
)
_SPACE = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*", re.S)
_EXPLAIN = re.compile(r"EXPLAIN\b(?:\s*\([^)]*\)|\s+ANALY[SZ]E\b)?", re.I)


def inspection_folders(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The folders an inspection may read: those holding the catalog's registered files (tag
    files and index segments in the state folder, and the shards that views and the
    dashboard's document page read). Only absolute paths and URLs: a relative folder would
    depend on where the reader happens to run."""
    have = relations(con)
    parts = [f"SELECT path FROM {t}" for t in ("shards", "tag_files", "index_segments") if t in have]
    if not parts:
        return []
    rows = con.execute(
        f"SELECT DISTINCT regexp_replace(path, '[^/\\\\]*$', '') AS folder FROM ({' UNION ALL '.join(parts)}) "
        "ORDER BY folder").fetchall()
    return [f for (f,) in rows if f and (Path(f).is_absolute() or "://" in f)]


def restrict_file_access(con: duckdb.DuckDBPyConnection) -> None:
    """Limit ``con``'s database instance to reading the catalog's own files.

    Sets DuckDB's ``allowed_directories`` to :func:`inspection_folders`, then
    ``enable_external_access = false`` (which DuckDB refuses to turn back on while the database
    is open, and after which it refuses to change the allowed folders), then
    ``lock_configuration = true`` so no other setting can point a file DuckDB writes (a
    profile, a query log) into an allowed folder. The order matters: the allowed folders can
    only be set while external access is still on.

    DuckDB lets a connection write where it may read, so this alone does not stop a COPY into
    the state folder: :meth:`Catalog.inspect` refuses the statements that write files.

    The settings hold for every connection of this process to the same file until all of
    them are closed; a second call on a shared instance finds it restricted and leaves it.
    """
    with _SANDBOX_LOCK:
        external, locked = con.execute(
            "SELECT current_setting('enable_external_access'), current_setting('lock_configuration')").fetchone()
        if external:
            con.execute("SET allowed_directories = ?", [inspection_folders(con)])
            con.execute("SET enable_external_access = false")
        if not locked:
            con.execute("SET lock_configuration = true")


def _explained(con: duckdb.DuckDBPyConnection, statement: str) -> str | None:
    """The statement inside ``EXPLAIN [ANALYZE | (options)] ...``, or None if it cannot be told."""
    m = _EXPLAIN.match(statement, _SPACE.match(statement).end())
    if m is None:
        return None
    try:
        con.extract_statements(statement[m.end():])
    except duckdb.ParserException:  # e.g. a comment between EXPLAIN and ANALYZE
        return None
    return statement[m.end():]


def check_inspection_sql(con: duckdb.DuckDBPyConnection, query: str) -> None:
    """Raise :class:`InspectionRefusedError` if any statement of ``query`` is one an inspection
    does not run (see ``_INSPECTION_STATEMENTS``). ``EXPLAIN ANALYZE`` runs its statement, so
    the statement inside an ``EXPLAIN`` is checked too (and one that cannot be told is refused)."""
    for st in con.extract_statements(query):
        if st.type == duckdb.StatementType.EXPLAIN:
            inner = _explained(con, st.query)
            if inner is not None:
                check_inspection_sql(con, inner)
                continue
        elif st.type in _INSPECTION_STATEMENTS:
            continue
        text = " ".join(st.query.split())
        raise InspectionRefusedError(
            f"refused {st.type.name} statement ({text[:80]}{'...' if len(text) > 80 else ''}): inspection of "
            "the catalog reads only; statements that can write files (COPY, EXPORT, ATTACH, INSTALL, "
            "PREPARE/EXECUTE) are not run. Rewrite it as a SELECT, or open the catalog with file access")


class Catalog:
    """A connection to the Glia catalog database."""

    def __init__(self, db_path: Path | str, read_only: bool = False) -> None:
        self.path = Path(db_path)
        self.read_only = read_only
        if read_only and not self.path.exists():
            raise FileNotFoundError(f"no Glia database at {self.path}; run `glia run` first")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.con = _connect(self.path, read_only)
        self.sandboxed = False  # set by open_inspection

    @classmethod
    def open_when_free(cls, db_path: Path | str, wait_s: float = 30.0, read_only: bool = False,
                       poll_s: float = 1.0) -> Catalog:
        """Open (for writing unless ``read_only``), retrying every ``poll_s`` seconds for
        ``wait_s`` seconds while another process holds the file."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return cls(db_path, read_only=read_only)
            except DatabaseBusyError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(poll_s)

    @classmethod
    def open_inspection(cls, db_path: Path | str, allow_files: bool = False, wait_s: float = 0.0,
                        poll_s: float = 1.0) -> Catalog:
        """Open read-only for people's SQL (``glia sql``, the dashboard): file access limited to
        the catalog's own files (:func:`restrict_file_access`), and :meth:`inspect` refuses
        statements that write files. ``allow_files`` gives the plain read-only connection,
        which reads and writes any file the process can. Waits like :meth:`open_when_free`."""
        cat = cls.open_when_free(db_path, wait_s, read_only=True, poll_s=poll_s)
        cat.sandboxed = not allow_files
        if cat.sandboxed:
            try:
                restrict_file_access(cat.con)
            except BaseException:
                cat.close()
                raise
        return cat

    def inspect(self, query: str) -> duckdb.DuckDBPyRelation | None:
        """Run ``query`` (one or more statements) and return the last one's relation, checking
        first, on a sandboxed connection, that no statement writes files."""
        if self.sandboxed:
            check_inspection_sql(self.con, query)
        return self.con.sql(query)

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield self.con
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    # -- schema ---------------------------------------------------------------------------

    def schema_version(self) -> int:
        if "schema_version" not in relations(self.con):
            return 0
        return int(self.con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0])

    def migrate(self, view_sources: Sequence[ViewSource] = (),
                stage_migrations: Mapping[str, Sequence[StageMigration]] | None = None) -> list[int]:
        """Apply pending catalog migrations, then each named stage's pending migrations (its own
        tables, recorded per stage in ``stage_schema``); return the catalog versions applied. A
        new database also gets its views (empty), so every documented view can be queried
        before the first run, and a stage's tables exist before the stage first runs."""
        current = self.schema_version()
        if current > LATEST_VERSION:
            raise SchemaTooNewError(
                f"{self.path} has schema version {current}, newer than this Glia knows "
                f"({LATEST_VERSION}); upgrade Glia"
            )
        applied = []
        for version, description, sql in MIGRATIONS:
            if version <= current:
                continue
            with self.transaction() as con:
                if version == 1:
                    con.execute(
                        "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, "
                        "applied_at TIMESTAMPTZ NOT NULL, description VARCHAR)"
                    )
                con.execute(sql)
                con.execute(
                    "INSERT INTO schema_version VALUES (?, ?, ?)",
                    [version, datetime.now(timezone.utc), description],
                )
                if version == 1:
                    build_views(con, view_sources, [])
            applied.append(version)
        for stage, steps in (stage_migrations or {}).items():
            self._migrate_stage(stage, steps)
        return applied

    def stage_versions(self) -> dict[str, int]:
        """The schema version of each stage's own tables (``stage_schema``)."""
        rows = self.con.execute("SELECT stage, max(version) FROM stage_schema GROUP BY stage").fetchall()
        return {str(s): int(v) for s, v in rows}

    def _migrate_stage(self, stage: str, steps: Sequence[StageMigration]) -> None:
        known = max((v for v, _, _ in steps), default=0)
        current = self.stage_versions().get(stage, 0)
        if current > known:
            raise SchemaTooNewError(
                f"{self.path}: the tables of stage {stage!r} have schema version {current}, newer than this "
                f"Glia knows ({known}); upgrade Glia"
            )
        for version, description, sql in sorted(steps):
            if version <= current:
                continue
            with self.transaction() as con:
                con.execute(sql)
                con.execute("INSERT INTO stage_schema VALUES (?, ?, ?, ?)",
                            [stage, version, datetime.now(timezone.utc), description])

    def apply_writes(self, writes: Sequence[TableWrite]) -> None:
        """Write rows to catalog tables in one transaction (upserts by each write's key): the
        door for writes outside a night, such as ``glia replay build``."""
        with self.transaction() as con:
            for w in writes:
                Catalog._apply_write(con, w)

    # -- reads used to plan a run ---------------------------------------------------------

    def next_run_id(self) -> int:
        return int(self.con.execute("SELECT coalesce(max(run_id), 0) + 1 FROM runs").fetchone()[0])

    def shards(self) -> list[ShardRow]:
        rows = self.con.execute(
            "SELECT shard_id, path, size, mtime_ns, footer_hash, n_rows, n_docs, status, first_run, "
            "last_run, error FROM shards ORDER BY path, first_run"
        ).fetchall()
        return [ShardRow(*r) for r in rows]

    def tag_files(self, shard_ids: Sequence[str] | None = None) -> list[TagFile]:
        rows = self.con.execute(
            "SELECT tagger, version, shard_id, path, n_rows FROM tag_files ORDER BY tagger, shard_id"
        ).fetchall()
        files = [TagFile(*r) for r in rows]
        if shard_ids is not None:
            wanted = set(shard_ids)
            files = [f for f in files if f.shard_id in wanted]
        return files

    def segments(self) -> list[Segment]:
        return self.segments_of(self.con)

    @staticmethod
    def segments_of(con: duckdb.DuckDBPyConnection) -> list[Segment]:
        rows = con.execute(
            "SELECT kind, path, n_rows, params FROM index_segments ORDER BY kind, run_id"
        ).fetchall()
        return [Segment(k, p, n, json.loads(params) if params else {}) for k, p, n, params in rows]

    # -- the one write --------------------------------------------------------------------

    def commit_run(self, rec: RunRecord) -> None:
        """Write a whole run in one transaction and rebuild the views over the new state."""
        finished = datetime.now(timezone.utc)
        c = rec.counts
        with self.transaction() as con:
            con.execute("DELETE FROM runs WHERE run_id = ?", [rec.run_id])
            con.execute(
                """INSERT INTO runs (run_id, started_at, finished_at, status, shards_root, config_hash,
                    code_version, n_shards_seen, n_shards_new, n_shards_changed, n_shards_unchanged,
                    n_shards_rejected, n_shards_missing, n_docs, n_exact_dups, n_near_dups,
                    n_skipped_rows, seconds, error, config)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                [
                    rec.run_id, rec.started_at, finished, rec.status, rec.shards_root, rec.config_hash,
                    rec.code_version, c.get("shards_seen", 0), c.get("shards_new", 0),
                    c.get("shards_changed", 0), c.get("shards_unchanged", 0), c.get("shards_rejected", 0),
                    c.get("shards_missing", 0), c.get("docs", 0), c.get("exact_dups", 0),
                    c.get("near_dups", 0), c.get("skipped_rows", 0),
                    (finished - rec.started_at).total_seconds(), rec.error, json.dumps(rec.config),
                ],
            )
            _upsert(con, "shards", SHARD_COLUMNS, 1, [
                (s.shard_id, s.path, s.size, s.mtime_ns, s.footer_hash, s.n_rows, s.n_docs,
                 s.status, s.first_run, s.last_run, s.error) for s in rec.new_shards])
            for shard_id, status in rec.status_changes.items():
                con.execute(
                    "UPDATE shards SET status = ?, last_run = ? WHERE shard_id = ?",
                    [status, rec.run_id, shard_id],
                )
            for shard_id, mtime in rec.mtime_updates.items():
                con.execute("UPDATE shards SET mtime_ns = ? WHERE shard_id = ?", [mtime, shard_id])
            _upsert(con, "tag_files", TAG_FILE_COLUMNS, 3,
                    [(f.tagger, f.version, f.shard_id, f.path, f.n_rows, rec.run_id) for f in rec.tag_files])
            faults.point("commit.mid")  # crash-test hook: half the statements of the transaction ran
            _upsert(con, "index_segments", SEGMENT_COLUMNS, 2,
                    [(seg.kind, rec.run_id, seg.path, seg.n_rows, json.dumps(seg.params)) for seg in rec.segments])
            if rec.skipped is not None and rec.skipped.num_rows:
                skipped = rec.skipped.select(SKIPPED_SCHEMA.names).cast(SKIPPED_SCHEMA)
                with registered(con, "_skipped_in", skipped):
                    con.execute(
                        'INSERT INTO skipped SELECT ?, shard_id, path, "row", doc_id, reason FROM _skipped_in',
                        [rec.run_id],
                    )
            if rec.first_seen:
                first_seen = pa.table({"doc_id": pa.array(list(rec.first_seen), pa.string()),
                                       "run_id": pa.array(list(rec.first_seen.values()), pa.int32())})
                with registered(con, "_first_seen_in", first_seen):
                    con.execute("INSERT INTO first_seen SELECT doc_id, run_id FROM _first_seen_in "
                                "ON CONFLICT (doc_id) DO UPDATE SET run_id = least(first_seen.run_id, excluded.run_id)")
            for w in rec.writes:
                self._apply_write(con, w)
            if rec.metrics:
                con.execute("DELETE FROM run_metrics WHERE run_id = ?", [rec.run_id])
                con.executemany("INSERT INTO run_metrics VALUES (?, ?, ?)",
                                [[rec.run_id, k, float(v)] for k, v in sorted(rec.metrics.items())])
            if rec.view_sources:
                active = [
                    r[0] for r in con.execute("SELECT shard_id FROM shards WHERE status = 'active'").fetchall()
                ]
                files = [
                    TagFile(*r)
                    for r in con.execute(
                        "SELECT tagger, version, shard_id, path, n_rows FROM tag_files"
                    ).fetchall()
                ]
                wanted = set(active)
                build_views(con, rec.view_sources, [f for f in files if f.shard_id in wanted])
            faults.point("commit.end")  # crash-test hook: everything written, COMMIT not yet run

    @staticmethod
    def _apply_write(con: duckdb.DuckDBPyConnection, w: TableWrite) -> None:
        if w.rows.num_rows == 0:
            return
        table = identifier(w.table)
        cols = ", ".join(identifier(c) for c in w.rows.column_names)
        with registered(con, "_write_in", w.rows):
            if w.key:
                match = " AND ".join(f"t.{identifier(k)} IS NOT DISTINCT FROM i.{identifier(k)}" for k in w.key)
                con.execute(f"DELETE FROM {table} t WHERE EXISTS (SELECT 1 FROM _write_in i WHERE {match})")
            con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _write_in")


def query_rolled_back(con: duckdb.DuckDBPyConnection, sql: str) -> pa.Table | None:
    """Run a user's query inside a transaction that is rolled back, so it can read anything and
    change nothing (a replay importance query); None if the statement returns no relation."""
    con.execute("BEGIN TRANSACTION")
    try:
        rel = con.sql(sql)
        return rel.to_arrow_table() if rel is not None else None
    finally:
        con.execute("ROLLBACK")


SHARD_COLUMNS = ("shard_id", "path", "size", "mtime_ns", "footer_hash", "n_rows", "n_docs", "status",
                 "first_run", "last_run", "error")
TAG_FILE_COLUMNS = ("tagger", "version", "shard_id", "path", "n_rows", "run_id")
SEGMENT_COLUMNS = ("kind", "run_id", "path", "n_rows", "params")


def _upsert(con: duckdb.DuckDBPyConnection, table: str, columns: Sequence[str], n_key: int,
            rows: Sequence[Sequence[object]]) -> None:
    """Upsert many rows with two statements (a statement per row costs ~2 ms in DuckDB).
    ``rows`` are keyed by their first ``n_key`` values; of rows with the same key the last
    wins, as it would with one statement per row."""
    latest = {tuple(r[:n_key]): r for r in rows}
    data = pa.table({c: [r[i] for r in latest.values()] for i, c in enumerate(columns)})
    Catalog._apply_write(con, TableWrite(table, data, key=tuple(columns[:n_key])))
