"""``glia replay build`` and ``glia replay export``: replay sets outside the night.

Beside :mod:`engine.reindex`, the other operations that write outside a night. A build takes
the run lock (no night runs meanwhile), reads the catalog (``storage.replay``), draws a set
(``curation.replay``) and writes the set, its items and the retention state in one transaction.
An export reads one set and writes it to a Parquet file.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from glia.curation.replay import ReplayParams, build_set, pool_from_catalog
from glia.storage.catalog import Catalog
from glia.storage.lock import RunLock
from glia.storage.replay import MIGRATIONS, latest_run, read_replay_catalog, replay_set_row, run_columns


def build_from_catalog(db_path: Path | str, params: ReplayParams, origin: str = "cli") -> dict[str, Any]:
    """Build a replay set from a database outside the nightly flow (``glia replay build``).

    Takes the run lock (so no night runs meanwhile), reads the catalog, and writes the set,
    its items and the retention state in one transaction. Returns the ``replay_sets`` row.
    Raises ``RunInProgressError`` / ``DatabaseBusyError`` when another process holds the database.
    """
    db = Path(db_path)
    if not db.exists():
        raise FileNotFoundError(f"no Glia database at {db}; run `glia run SHARDS --db {db}` first")
    with RunLock(db):
        with Catalog(db) as cat:
            cat.migrate((), {"replay": MIGRATIONS})
            run_id = latest_run(cat.con)
            text_col, id_col = run_columns(cat.con, run_id)
            read = read_replay_catalog(cat.con, params)
            rs = build_set(pool_from_catalog(read, run_id), read.state, params, read.next_set_id, read.n_sets, origin,
                           text_col, id_col)
            cat.apply_writes(rs.writes())
    return rs.set_row


def export_set(db_path: Path | str, out: Path | str, set_id: int | None = None,
               redact_pii: str | None = None) -> tuple[int, int]:
    """Write one set (default: the latest) from ``v_replay`` to Parquet, with the set's row as
    file metadata (``glia.replay_set``). Opens the database read-only. Returns ``(set_id, rows)``.
    ``redact_pii``: a placeholder (``"<{kind}>"``); the export then also holds each document's
    ``text`` from its shard (the set's recorded text column) with PII replaced (``storage.redact``)."""
    with Catalog(db_path, read_only=True) as cat:
        meta = replay_set_row(cat.con, db_path, set_id, f" yet: run `glia replay build --db {db_path}` first")
        sid = meta["set_id"]
        rows = cat.con.sql("SELECT * FROM v_replay WHERE set_id = ? ORDER BY doc_id", params=[sid]).to_arrow_table()
    if redact_pii is not None:
        from glia.storage.redact import with_redacted_text

        rows = with_redacted_text(rows, meta.get("text_column") or "text", redact_pii)
    row = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in meta.items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    md = dict(rows.schema.metadata or {})
    md[b"glia.replay_set"] = json.dumps(row, default=str).encode()
    pq.write_table(rows.replace_schema_metadata(md), out)
    return int(sid), rows.num_rows
