"""SQL views over the attribute files: what people query.

Tag tables are views over the Parquet attribute files of *active* shards only, listed
explicitly (never a glob), so files of a crashed run or of a superseded shard version
never show up. Views are rebuilt inside the run's commit transaction.

Human-facing views, all keyed by ``doc_id``:

- ``documents``    one row per accepted document: shard, row, metadata, first run seen.
- ``tags_<name>``  one per tagger / dedup stage: its raw tag columns.
- ``v_documents``  ``documents`` joined with every tag (columns starting with ``_`` left out).
- ``v_duplicates`` one row per duplicate: kind, survivor, Jaccard, matched id, cluster size.
- ``v_runs``, ``v_shards``, ``v_skipped``: run history, shard registry, skipped rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from glia.storage.records import TagFile
from glia.storage.sql import identifier, literal, parquet_scan


DOCUMENTS = "documents"
# Version of the per-shard documents index (tags/documents@<version>/<shard>.parquet), written at ingest.
DOCUMENTS_VERSION = "1"


@dataclass(frozen=True)
class ViewSource:
    """A family of attribute files (``tagger@version``) exposed as the view ``tags_<tagger>``
    (or ``documents`` for the ingest index)."""

    tagger: str
    version: str
    schema: pa.Schema

    @property
    def view(self) -> str:
        return DOCUMENTS if self.tagger == DOCUMENTS else f"tags_{self.tagger}"

    @property
    def public_columns(self) -> list[str]:
        return [c for c in self.schema.names if c != "doc_id" and not c.startswith("_")]


def _empty_select(con: duckdb.DuckDBPyConnection, schema: pa.Schema) -> str:
    rel = con.from_arrow(schema.empty_table())
    cols = ", ".join(f"CAST(NULL AS {t}) AS {identifier(n)}" for n, t in zip(rel.columns, rel.types))
    return f"SELECT {cols} WHERE false"


def _source_select(con: duckdb.DuckDBPyConnection, src: ViewSource, paths: list[str]) -> str:
    if src.tagger == DOCUMENTS:
        if not paths:
            extra = pa.schema(
                [("shard_id", pa.string()), ("first_seen_run", pa.int32()), ("shard_path", pa.string())]
            )
            return _empty_select(con, pa.schema(list(src.schema) + list(extra)))
        return (
            # A document first seen before its shard's version arrived keeps that earlier run.
            "SELECT d.* EXCLUDE (filename), f.shard_id, least(f.run_id, fs.run_id)::INTEGER AS first_seen_run, "
            "s.path AS shard_path "
            # by name: shards may carry different extra columns, or change their types between nights
            f"FROM {parquet_scan(paths, filename='true', union_by_name='true')} d "
            f"JOIN tag_files f ON f.path = d.filename AND f.tagger = {literal(DOCUMENTS)} "
            "JOIN shards s ON s.shard_id = f.shard_id "
            "LEFT JOIN first_seen fs ON fs.doc_id = d.doc_id"
        )
    if not paths:
        return _empty_select(con, src.schema)
    return f"SELECT * FROM {parquet_scan(paths)}"


_STATIC_VIEWS = {
    "v_runs": """
        SELECT run_id, status, started_at, finished_at, round(seconds, 2) AS seconds, shards_root,
               n_shards_seen, n_shards_new, n_shards_changed, n_shards_unchanged, n_shards_rejected,
               n_shards_missing, n_docs, n_exact_dups, n_near_dups, n_skipped_rows,
               config_hash, code_version, error
        FROM runs ORDER BY run_id""",
    "v_shards": """
        SELECT path, status, n_rows, n_docs, first_run, last_run, size, shard_id, error
        FROM shards ORDER BY path, first_run""",
    "v_skipped": """
        SELECT s.run_id, s.path, s."row", s.doc_id, s.reason FROM skipped s
        ORDER BY s.run_id, s.path, s."row" NULLS FIRST""",
}


def _duplicates_view(names: set[str]) -> str | None:
    if not {"tags_exact_dup", "tags_near_dup"} <= names:
        return None
    return """
        SELECT n.doc_id,
               CASE WHEN e.exact_dup_of IS NOT NULL THEN 'exact' ELSE 'near' END AS kind,
               coalesce(e.exact_dup_of, n.near_dup_of)                      AS survivor_id,
               CASE WHEN e.exact_dup_of IS NOT NULL THEN 1.0
                    ELSE n.near_dup_jaccard END                             AS jaccard,
               n.near_dup_match                                             AS matched_id,
               n.near_dup_match_jaccard                                     AS matched_jaccard,
               n.near_dup_cluster                                           AS cluster_id,
               n.near_dup_cluster_size                                      AS cluster_size,
               d.shard_path, d.first_seen_run,
               sv.shard_path AS survivor_shard_path, sv.first_seen_run AS survivor_first_seen_run
        FROM tags_near_dup n
        LEFT JOIN tags_exact_dup e USING (doc_id)
        JOIN documents d USING (doc_id)
        LEFT JOIN documents sv ON sv.doc_id = coalesce(e.exact_dup_of, n.near_dup_of)
        WHERE n.near_dup_of IS NOT NULL OR e.exact_dup_of IS NOT NULL
        ORDER BY d.first_seen_run, n.doc_id"""


def build_views(
    con: duckdb.DuckDBPyConnection, sources: Sequence[ViewSource], files: Sequence[TagFile]
) -> None:
    """(Re)create every view over ``files`` (the tag files of active shards)."""
    for name, sql in _STATIC_VIEWS.items():
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {sql}")
    if not sources:
        return
    by_key: dict[tuple[str, str], list[str]] = {}
    for f in files:
        by_key.setdefault((f.tagger, f.version), []).append(f.path)
    names: set[str] = set()
    for src in sources:
        paths = sorted(by_key.get((src.tagger, src.version), []))
        con.execute(f"CREATE OR REPLACE VIEW {identifier(src.view)} AS {_source_select(con, src, paths)}")
        names.add(src.view)
    if DOCUMENTS not in names:
        return
    select = ["d.*"]
    joins = []
    for i, src in enumerate(s for s in sources if s.tagger != DOCUMENTS):
        alias = f"t{i}"
        select += [f"{alias}.{identifier(c)}" for c in src.public_columns]
        joins.append(f"LEFT JOIN {identifier(src.view)} {alias} USING (doc_id)")
    con.execute(
        f"CREATE OR REPLACE VIEW v_documents AS SELECT {', '.join(select)} FROM documents d {' '.join(joins)}"
    )
    dup = _duplicates_view(names)
    if dup:
        con.execute(f"CREATE OR REPLACE VIEW v_duplicates AS {dup}")
