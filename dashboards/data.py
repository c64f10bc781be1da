"""The dashboard's reads: read-only, one connection per query, every user input a parameter.

The connections can read only the folders of the catalog's tag files, index segments and
registered shards (``storage.catalog.restrict_file_access``), so no page can be made to read any
other file, and the pages' own SQL writes none. ``glia dashboard --allow-files`` lifts that.

DuckDB lets one process write a file and, while it does, no other process read it. So the
dashboard never holds the file open: each query opens it read-only, reads, and closes, and the
nightly run can take its write lock between two page loads. A query that meets the lock retries
for a few seconds, then raises :class:`DatabaseBusy`, which the pages show as a message.

Which parts of the catalog exist depends on the configured stages (``decide`` makes
``v_prune_queue``, ``v_protected`` and ``coverage``; ``replay`` makes ``replay_sets``), so pages
ask :meth:`Db.has` (``information_schema``) and say "not configured" instead of failing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from glia.curation.dataloader import ShardTextReader
from glia.curation.summary import RunSummary, read_summary
from glia.storage.catalog import Catalog, DatabaseBusyError
from glia.storage.sql import identifier, relation_columns, relations


class DatabaseBusy(RuntimeError):
    """The nightly run holds the database's write lock; try again when it has committed."""


@dataclass(frozen=True)
class Db:
    """A Glia catalog opened read-only, per query, able to read only the catalog's own files
    (``Catalog.open_inspection``) unless ``allow_files``."""

    path: Path
    wait_s: float = 3.0
    allow_files: bool = False

    def _open(self) -> Catalog:
        try:
            return Catalog.open_inspection(self.path, allow_files=self.allow_files, wait_s=self.wait_s, poll_s=0.25)
        except DatabaseBusyError:
            raise DatabaseBusy(
                f"{self.path} is being written by a nightly run (DuckDB allows no readers meanwhile). "
                "The data will be back when the run commits; reload the page then.") from None

    def df(self, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        """Run ``sql`` with bound ``params`` and return a DataFrame."""
        return self._with(lambda con: con.execute(sql, list(params)).df())

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self._with(lambda con: con.execute(sql, list(params)).fetchall())

    def relations(self) -> set[str]:
        """Tables and views of the catalog."""
        return self._with(relations)

    def has(self, *names: str) -> bool:
        return set(names) <= self.relations()

    def columns(self, relation: str) -> dict[str, str]:
        """Column name -> DuckDB type of a table or view."""
        return self._with(relation_columns, relation)

    def summary(self, run_id: int | None = None) -> RunSummary | None:
        return self._with(read_summary, run_id)

    def latest_completed(self) -> tuple[int | None, int]:
        """The latest completed run, and how many ``nothing_new`` reruns came after it."""
        row = self.rows("SELECT max(run_id) FILTER (WHERE status = 'completed') AS night, count(*) FILTER "
                        "(WHERE status = 'nothing_new' AND run_id > (SELECT coalesce(max(run_id), 0) FROM runs "
                        "WHERE status = 'completed')) FROM runs")[0]
        return (None if row[0] is None else int(row[0])), int(row[1] or 0)

    def _with(self, fn: Any, *args: Any) -> Any:
        """``fn(con, *args)`` on a connection opened for this call only."""
        cat = self._open()
        try:
            return fn(cat.con, *args)
        finally:
            cat.close()


# -- the pages' queries ------------------------------------------------------------------------


def runs(db: Db) -> pd.DataFrame:
    return db.df("SELECT run_id, status, started_at, seconds, n_shards_new, n_shards_changed, n_docs, n_exact_dups, "
                 "n_near_dups, n_skipped_rows FROM v_runs ORDER BY run_id")


def trend(db: Db) -> pd.DataFrame:
    """Per completed night: documents, pruned (queued tonight), protected, replayed (documents in
    tonight's replay set). A column is null where its stage is not configured. A ``nothing_new``
    rerun changed nothing, so it is no night of its own here."""
    have = db.relations()
    parts = ["SELECT r.run_id, r.n_docs AS docs"]
    joins = []
    if "coverage" in have:
        parts.append("c.n_pruned AS pruned, c.n_protected AS protected")
        joins.append("LEFT JOIN (SELECT run_id, sum(n_pruned) AS n_pruned, sum(n_protected) AS n_protected "
                     "FROM coverage GROUP BY run_id) c USING (run_id)")
    else:
        parts.append("CAST(NULL AS BIGINT) AS pruned, CAST(NULL AS BIGINT) AS protected")
    if "replay_sets" in have:
        parts.append("s.n_items AS replayed")
        joins.append("LEFT JOIN (SELECT run_id, sum(n_items) AS n_items FROM replay_sets GROUP BY run_id) s USING (run_id)")
    else:
        parts.append("CAST(NULL AS BIGINT) AS replayed")
    return db.df(f"{', '.join(parts)} FROM runs r {' '.join(joins)} "
                 "WHERE r.status = 'completed' ORDER BY r.run_id")


def docs_per_source(db: Db) -> pd.DataFrame:
    """Active documents per source, with how many are duplicates (when dedup ran)."""
    if db.has("v_duplicates"):
        return db.df("SELECT coalesce(CAST(d.source AS VARCHAR), '(none)') AS source, count(*) AS documents, "
                     "count(x.doc_id) AS duplicates FROM documents d LEFT JOIN v_duplicates x USING (doc_id) "
                     "GROUP BY 1 ORDER BY 1")
    return db.df("SELECT coalesce(CAST(source AS VARCHAR), '(none)') AS source, count(*) AS documents "
                 "FROM documents GROUP BY 1 ORDER BY 1")


NUMERIC = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "FLOAT", "DOUBLE", "REAL", "UTINYINT", "USMALLINT",
           "UINTEGER")
DOC_COLUMNS = {"doc_id", "row", "source", "timestamp", "label", "shard_id", "first_seen_run", "shard_path"}


def tag_columns(db: Db) -> dict[str, str]:
    """The tag columns of ``v_documents`` that a distribution can be drawn for: numeric, boolean,
    or string (categories and ids), with their kind."""
    out = {}
    for name, typ in db.columns("v_documents").items():
        if name in DOC_COLUMNS:
            continue
        if typ == "BOOLEAN":
            out[name] = "boolean"
        elif typ in NUMERIC or typ.startswith("DECIMAL"):
            out[name] = "numeric"
        elif typ == "VARCHAR":
            out[name] = "string"
        elif typ == "VARCHAR[]":
            out[name] = "list"
    return out


def tag_distribution(db: Db, column: str, columns: Mapping[str, str]) -> pd.DataFrame:
    """Per source, by the column's kind in ``columns`` (from :func:`tag_columns`): numeric ->
    quantiles and mean; boolean -> share true; string -> documents with a value; list ->
    documents per leading word of the items (reason kinds)."""
    if column not in columns:
        raise KeyError(f"no tag column {column!r} in v_documents")
    kind = columns[column]
    c, src = identifier(column), "coalesce(CAST(source AS VARCHAR), '(none)')"
    if kind == "numeric":
        return db.df(f"SELECT {src} AS source, count({c}) AS documents, avg({c}) AS mean, quantile_cont({c}, 0.1) AS p10, "
                     f"quantile_cont({c}, 0.5) AS median, quantile_cont({c}, 0.9) AS p90 FROM v_documents GROUP BY 1 ORDER BY 1")
    if kind == "boolean":
        return db.df(f"SELECT {src} AS source, count(*) AS documents, count_if({c}) AS true_count, "
                     f"round(avg(CAST({c} AS INTEGER)), 4) AS share_true FROM v_documents GROUP BY 1 ORDER BY 1")
    if kind == "list":
        return db.df(f"SELECT {src} AS source, regexp_extract(x.k, '^[A-Za-z_]+') AS item, count(DISTINCT doc_id) AS documents "
                     f"FROM v_documents, unnest({c}) AS x(k) GROUP BY ALL ORDER BY 1, 3 DESC")
    return db.df(f"SELECT {src} AS source, count(*) AS documents, count({c}) AS with_value, "
                 f"count(DISTINCT {c}) AS distinct_values FROM v_documents GROUP BY 1 ORDER BY 1")


def prune_queue(db: Db, statuses: Sequence[str] = (), sources: Sequence[str] = (), reason: str = "",
                doc_id: str = "", limit: int = 500) -> pd.DataFrame:
    """Rows of ``v_prune_queue`` filtered by status, source, a reason substring and a doc id
    substring (all bound parameters; an empty filter matches everything)."""
    return db.df(
        "SELECT doc_id, status, array_to_string(reasons, '; ') AS reasons, priority, source, label, queued_run, "
        "changed_run, shard_path, \"row\" FROM v_prune_queue "
        "WHERE (len(?::VARCHAR[]) = 0 OR status IN (SELECT unnest(?::VARCHAR[]))) "
        "AND (len(?::VARCHAR[]) = 0 OR CAST(source AS VARCHAR) IN (SELECT unnest(?::VARCHAR[]))) "
        "AND (? = '' OR array_to_string(reasons, ' ') ILIKE '%' || ? || '%') "
        "AND (? = '' OR doc_id ILIKE '%' || ? || '%') "
        "ORDER BY queued_run DESC, priority, doc_id LIMIT ?",
        [list(statuses), list(statuses), list(sources), list(sources), reason, reason, doc_id, doc_id, int(limit)])


def prune_reasons(db: Db) -> pd.DataFrame:
    """Queued documents per reason kind and status."""
    return db.df("SELECT regexp_extract(x.r, '^[A-Za-z_]+') AS reason, status, count(DISTINCT doc_id) AS documents "
                 "FROM v_prune_queue, unnest(reasons) AS x(r) GROUP BY ALL ORDER BY 3 DESC")


def protected_strata(db: Db) -> pd.DataFrame:
    return db.df("SELECT stratum, count(DISTINCT doc_id) AS documents, any_value(reason) AS reason "
                 "FROM v_protected GROUP BY 1 ORDER BY 2 DESC, 1")


def coverage(db: Db) -> pd.DataFrame:
    """Per night: compression (share of the corpus pruned or queued) against coverage (share
    of sources, labels and embedding clusters that keep at least one document)."""
    return db.df("SELECT run_id, pruned_share AS compression, "
                 "sources_covered::DOUBLE / nullif(sources_total, 0) AS source_coverage, "
                 "labels_covered::DOUBLE / nullif(labels_total, 0) AS label_coverage, cluster_coverage, "
                 "active_docs, n_pruned, n_protected, queue_queued, queue_quarantined, queue_applied "
                 "FROM coverage ORDER BY run_id")


@dataclass
class DocumentView:
    """Everything known about one document."""

    row: dict[str, Any]
    text: str | None
    text_error: str | None
    decision: dict[str, Any] | None
    queue: dict[str, Any] | None
    protected: list[dict[str, Any]]
    duplicate: dict[str, Any] | None
    replay: pd.DataFrame | None


def _one(df: pd.DataFrame) -> dict[str, Any] | None:
    return None if df.empty else df.iloc[0].to_dict()


def _latest_config(db: Db) -> dict[str, Any]:
    row = db.rows("SELECT config FROM runs WHERE config IS NOT NULL ORDER BY run_id DESC LIMIT 1")
    return json.loads(row[0][0]) if row and row[0][0] else {}


def text_reader(db: Db) -> ShardTextReader:
    """A reader for documents' texts with the latest run's columns and ``[run].storage_options``:
    the same reader the trainer's dataloader uses, so a shard in an object store reads as a local
    one does, and a row that no longer holds its id fails loudly."""
    cfg = _latest_config(db)
    cols = cfg.get("columns", {})
    return ShardTextReader(str(cols.get("text", "text")), str(cols.get("id", "id")), cache_groups=2,
                           storage_options=cfg.get("run", {}).get("storage_options") or {})


def document(db: Db, doc_id: str) -> DocumentView | None:
    """The document ``doc_id`` (exact id), or None if the catalog has no such document."""
    row = _one(db.df("SELECT * FROM v_documents WHERE doc_id = ?", [doc_id]))
    if row is None:
        return None
    text, err = None, None
    try:
        # Read by pyarrow/fsspec, not DuckDB: inspection connections may not open files outside
        # the catalog's folders, nor load the extension an object store would need.
        text = text_reader(db).read(pa.array([row["shard_path"]]), np.array([int(row["row"])]), pa.array([doc_id]))[0]
        if text is None:
            err = f"row {row['row']} of {row['shard_path']} has no text"
    except (ValueError, OSError) as exc:
        err = f"cannot read {row['shard_path']}: {exc}"
    have = db.relations()
    decision = _one(db.df("SELECT run_id, action, reasons, protected, strata, priority FROM decisions "
                          "WHERE doc_id = ? ORDER BY run_id DESC LIMIT 1", [doc_id])) if "decisions" in have else None
    queue = _one(db.df("SELECT status, reasons, priority, queued_run, changed_run, changed_at, note FROM v_prune_queue "
                       "WHERE doc_id = ?", [doc_id])) if "v_prune_queue" in have else None
    prot = db.df("SELECT stratum, reason, run_id FROM v_protected WHERE doc_id = ?", [doc_id]).to_dict("records") \
        if "v_protected" in have else []
    dup = _one(db.df("SELECT kind, survivor_id, jaccard, matched_id, cluster_size FROM v_duplicates WHERE doc_id = ?",
                     [doc_id])) if "v_duplicates" in have else None
    replay = db.df("SELECT set_id, run_id, count, weight, priority, is_new FROM v_replay WHERE doc_id = ? ORDER BY set_id",
                   [doc_id]) if "v_replay" in have else None
    return DocumentView(row, text, err, decision, queue, prot, dup, replay)
