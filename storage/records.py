"""The rows the catalog registers: shards, tag files, history segments and table writes.

Plain frozen dataclasses with no behaviour, so every layer can build them and only
``storage.catalog`` writes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa


@dataclass(frozen=True)
class ShardRow:
    """A row of the ``shards`` table."""

    shard_id: str
    path: str
    size: int
    mtime_ns: int | None
    footer_hash: str | None
    n_rows: int | None
    n_docs: int | None
    status: str
    first_run: int
    last_run: int
    error: str | None = None


@dataclass(frozen=True)
class TagFile:
    """An attribute file to register: ``tagger@version`` tags for one shard."""

    tagger: str
    version: str
    shard_id: str
    path: str
    n_rows: int
    # What producing the file counted and took, as sorted (name, value) pairs (the tagger's
    # ``stats`` plus ``docs`` and ``seconds``); empty for a file reused from an earlier attempt.
    # Recorded in ``run_metrics`` as ``<tagger>.<name>``, never in ``tag_files``.
    stats: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Segment:
    """A history index segment written by a run."""

    kind: str
    path: str
    n_rows: int
    params: dict[str, object]


@dataclass(frozen=True)
class TableWrite:
    """Rows for a catalog table, applied inside the run's transaction.

    With ``key`` the rows are upserted: rows of ``table`` whose key columns match an incoming
    row are deleted first. Without it they are appended. Column names must match the table's;
    missing columns take their defaults.
    """

    table: str
    rows: pa.Table
    key: tuple[str, ...] = ()
