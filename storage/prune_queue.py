"""The prune queue's writes outside a night: ``glia undo``, and its reads for people and trainers
(``glia prune status``, ``glia manifest export``).

The queue's lifecycle (queued -> quarantined -> applied, restored) is decided in
``curation.prune`` and committed with each night; these are the only other writes to
``prune_queue`` and ``prune_events``, under the run lock and in one transaction.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa

from glia.storage.catalog import Catalog
from glia.storage.lock import RunLock
from glia.storage.sql import literal, relations


class NothingToUndoError(LookupError):
    """No active queue entry matched the undo selector."""


@dataclass
class UndoResult:
    restored: list[str]
    by_status: dict[str, int]


def undo(db_path: Path | str, run_id: int | None = None, doc_ids: Sequence[str] = (), reason: str | None = None,
         now: datetime | None = None) -> UndoResult:
    """Restore queued, quarantined and applied documents chosen by the run that queued them,
    by id, or by reason (a reason's text or its kind: ``near_dup_of``, ``risk``, ``low_novelty``).

    Takes the run lock (raises ``RunInProgressError`` while a night runs) and writes in one
    transaction. Raises ``ValueError`` for a bad selector, ``NothingToUndoError`` if none matched.
    """
    given = [run_id is not None, bool(doc_ids), reason is not None]
    if sum(given) != 1:
        raise ValueError("undo needs exactly one of: a RUN_ID, --doc ID (repeatable), --reason R")
    if not Path(db_path).exists():
        raise FileNotFoundError(f"no Glia database at {db_path}")
    now = now or datetime.now(timezone.utc)
    if run_id is not None:
        cond, params, note = "run_id = ?", [run_id], f"undo run {run_id}"
    elif doc_ids:
        cond, params, note = "doc_id IN (SELECT unnest(?::VARCHAR[]))", [list(doc_ids)], "undo by id"
    else:
        cond = "len(list_filter(reasons, lambda r: r = ? OR regexp_extract(r, '^[A-Za-z0-9_]+') = ?)) > 0"
        params, note = [reason, reason], f"undo reason {reason}"
    lock = RunLock(Path(db_path))
    lock.acquire()
    try:
        with Catalog(db_path) as cat:
            _require(cat.con, db_path, "prune_queue", "prune queue")
            with cat.transaction() as con:
                sel = f"status IN ('queued', 'quarantined', 'applied') AND {cond}"
                hit = con.execute(f"SELECT doc_id, status FROM prune_queue WHERE {sel} ORDER BY doc_id", params).fetchall()
                if not hit:
                    raise NothingToUndoError(f"nothing to undo: no queued, quarantined or applied document matches ({note})")
                con.execute(
                    "INSERT INTO prune_events SELECT NULL, doc_id, status, 'restored', ?, ? FROM prune_queue "
                    f"WHERE {sel}", [now, note, *params])
                con.execute(f"UPDATE prune_queue SET status = 'restored', changed_run = NULL, changed_at = ?, note = ? "
                            f"WHERE {sel}", [now, note, *params])
    finally:
        lock.release()
    by_status: dict[str, int] = {}
    for _, s in hit:
        by_status[s] = by_status.get(s, 0) + 1
    return UndoResult([d for d, _ in hit], by_status)


STATUS_SQL = """
    SELECT status, count(DISTINCT doc_id) AS documents, min(queued_run) AS first_run, max(queued_run) AS last_run,
           list(DISTINCT regexp_extract(r, '^[A-Za-z0-9_]+') ORDER BY regexp_extract(r, '^[A-Za-z0-9_]+')) AS reason_kinds
    FROM v_prune_queue LEFT JOIN LATERAL unnest(reasons) AS t(r) ON true
    GROUP BY status ORDER BY status"""


def export_manifest(db_path: Path | str, out: Path | str, redact_pii: str | None = None, text_column: str = "text",
                    exclude_strata: Sequence[str] = ()) -> int:
    """Write ``v_manifest`` (the documents trainers should read: shard path and row of every
    active document not pruned-applied) to a Parquet file, atomically. Returns the row count.

    ``redact_pii``: a placeholder (``"<{kind}>"``); the export then also holds each document's
    ``text`` (read from ``text_column`` of its shard) with PII replaced (``storage.redact``).
    ``exclude_strata``: protected strata whose documents are left out (e.g. ``eval_set``: an
    evaluation set kept in the corpus must not reach training)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    where = ""
    with Catalog(db_path, read_only=True) as cat:
        _require(cat.con, db_path, "v_manifest", "v_manifest")
        if exclude_strata:
            names = ", ".join(literal(s) for s in exclude_strata)
            where = f" WHERE doc_id NOT IN (SELECT doc_id FROM v_protected WHERE stratum IN ({names}))"
        if redact_pii is None:
            n = int(cat.con.execute(f"SELECT count(*) FROM v_manifest{where}").fetchall()[0][0])
            cat.con.execute(f"COPY (SELECT * FROM v_manifest{where}) TO {literal(str(tmp))} "
                            "(FORMAT parquet, COMPRESSION zstd)")
        else:
            rows = cat.con.sql(f"SELECT * FROM v_manifest{where}").to_arrow_table()
    if redact_pii is not None:
        import pyarrow.parquet as pq

        from glia.storage.redact import with_redacted_text

        rows = with_redacted_text(rows, text_column, redact_pii)
        pq.write_table(rows, tmp, compression="zstd")
        n = rows.num_rows
    os.replace(tmp, out)
    return n


def _require(con: Any, db_path: Path | str, relation: str, what: str) -> None:
    """Refuse a catalog where the decide stage never ran (it creates ``relation``)."""
    if relation not in relations(con):
        raise ValueError(f"{db_path} has no {what}: add \"decide\" to [run].stages and run a night first")


def status_table(db_path: Path | str) -> pa.Table:
    """Documents per prune status with their reason kinds (``glia prune status``)."""
    with Catalog(db_path, read_only=True) as cat:
        _require(cat.con, db_path, "prune_queue", "prune queue")
        return cat.con.sql(STATUS_SQL).to_arrow_table()
