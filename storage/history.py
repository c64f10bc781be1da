"""The cross-night dedup history: per-run Parquet segments, queried on disk with DuckDB.

Four segment kinds, one file each per run under ``<state>/index/<kind>/run-<id>.parquet``:

- ``exact``       text_hash, doc_id, shard_id, run_id             (every document)
- ``signatures``  doc_id, shard_id, run_id, cluster_id, cluster_run, sig   (documents with words)
- ``lsh``         band, key, doc_id, shard_id   (banded MinHash keys; exact copies left out)
- ``merges``      cluster_id, merged_into, merged_run   (clusters joined by a later night)

Nothing is held in RAM between runs and nothing is rewritten: a run appends its own
segments and the catalog lists them in the run's commit, so a crashed run's files are never
read. Queries scan only segments of *active* shards (a superseded or missing shard drops
out). DuckDB spills joins to ``tmp_dir`` when they do not fit in memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import duckdb
import pyarrow as pa

from glia.storage.catalog import Segment
from glia.storage.parquet_io import FileWrite, write_all
from glia.storage.sql import literal, parquet_scan, registered

KINDS = ("exact", "signatures", "lsh", "merges")


def segment_path(state_dir: Path, kind: str, run_id: int) -> Path:
    return state_dir / "index" / kind / f"run-{run_id:06d}.parquet"


class History:
    """Read access to the committed segments, restricted to active shards."""

    def __init__(
        self,
        segments: Sequence[Segment],
        active_shards: Sequence[str],
        tmp_dir: Path | None = None,
        memory_limit: str | None = None,
    ) -> None:
        self.paths = {k: [s.path for s in segments if s.kind == k] for k in KINDS}
        self.con = duckdb.connect()
        if tmp_dir is not None:
            tmp_dir.mkdir(parents=True, exist_ok=True)
            self.con.execute(f"SET temp_directory = {literal(str(tmp_dir))}")
        if memory_limit:
            self.con.execute(f"SET memory_limit = {literal(memory_limit)}")
        self.con.register("active", pa.table({"shard_id": pa.array(list(active_shards), pa.string())}))

    def close(self) -> None:
        self.con.close()

    def _scan(self, kind: str) -> str | None:
        paths = self.paths[kind]
        if not paths:
            return None
        return parquet_scan(paths)

    def exact_matches(self, hashes: pa.Table) -> pa.Table:
        """For each ``text_hash`` in ``hashes`` seen before: the earliest (run, doc_id) and how
        many active documents have it."""
        empty = pa.table(
            {"text_hash": pa.array([], pa.uint64()), "first_run": pa.array([], pa.int32()),
             "first_doc": pa.array([], pa.string()), "n": pa.array([], pa.int64())}
        )
        scan = self._scan("exact")
        if scan is None or hashes.num_rows == 0:
            return empty
        with registered(self.con, "q_hashes", hashes.select(["text_hash"])):
            out = self.con.sql(
                f"""SELECT e.text_hash, min(e.run_id)::INTEGER AS first_run,
                           arg_min(e.doc_id, (e.run_id, e.doc_id)) AS first_doc, count(*) AS n
                    FROM {scan} e JOIN active USING (shard_id)
                    WHERE e.text_hash IN (SELECT text_hash FROM q_hashes)
                    GROUP BY e.text_hash"""
            ).to_arrow_table()
        return out

    def lsh_candidates(self, bands: pa.Table, limit: int) -> pa.Table:
        """History documents sharing a band key with each query row (``band``, ``key``, ``idx``):
        the ``limit`` sharing the most bands per ``idx`` (ties by doc_id)."""
        scan = self._scan("lsh")
        if scan is None or bands.num_rows == 0:
            return pa.table({"idx": pa.array([], pa.int64()), "doc_id": pa.array([], pa.string()),
                             "shared": pa.array([], pa.int64())})
        with registered(self.con, "q_bands", bands):
            out = self.con.sql(
                f"""SELECT q.idx, h.doc_id, count(*) AS shared
                    FROM q_bands q
                    JOIN {scan} h ON h.band = q.band AND h.key = q.key
                    JOIN active a ON a.shard_id = h.shard_id
                    GROUP BY q.idx, h.doc_id
                    QUALIFY row_number() OVER (PARTITION BY q.idx ORDER BY count(*) DESC, h.doc_id) <= {int(limit)}
                    ORDER BY q.idx, h.doc_id"""
            ).to_arrow_table()
        return out

    def documents(self, doc_ids: Sequence[str]) -> pa.Table:
        """Signature rows (doc_id, run_id, cluster_id, cluster_run, sig) of active documents."""
        scan = self._scan("signatures")
        if scan is None or not doc_ids:
            return pa.table({"doc_id": pa.array([], pa.string()), "run_id": pa.array([], pa.int32()),
                             "cluster_id": pa.array([], pa.string()), "cluster_run": pa.array([], pa.int32()),
                             "sig": pa.array([], pa.list_(pa.uint32()))})
        with registered(self.con, "q_ids", pa.table({"doc_id": pa.array(sorted(set(doc_ids)), pa.string())})):
            out = self.con.sql(
                f"""SELECT s.doc_id, s.run_id, s.cluster_id, s.cluster_run, s.sig
                    FROM {scan} s JOIN active USING (shard_id) SEMI JOIN q_ids USING (doc_id)
                    ORDER BY s.doc_id"""
            ).to_arrow_table()
        return out

    def cluster_counts(self, cluster_ids: Sequence[str]) -> dict[str, int]:
        """Number of active history documents stored under each raw cluster id."""
        scan = self._scan("signatures")
        if scan is None or not cluster_ids:
            return {}
        with registered(self.con, "q_c", pa.table({"cluster_id": pa.array(sorted(set(cluster_ids)), pa.string())})):
            rows = self.con.execute(
                f"""SELECT s.cluster_id, count(*) FROM {scan} s JOIN active USING (shard_id)
                    SEMI JOIN q_c USING (cluster_id) GROUP BY 1"""
            ).fetchall()
        return dict(rows)

    def first_runs(self, doc_ids: pa.Table) -> dict[str, int]:
        """The run each of ``doc_ids`` (a ``doc_id`` column) was first seen in, for those seen
        before. Deliberately over *every* shard version, active or not: a rewritten, moved or
        returning shard's documents keep the rank they had."""
        scan = self._scan("exact")
        if scan is None or doc_ids.num_rows == 0:
            return {}
        with registered(self.con, "q_first", doc_ids.select(["doc_id"])):
            rows = self.con.execute(
                f"SELECT doc_id, min(run_id) FROM {scan} SEMI JOIN q_first USING (doc_id) GROUP BY 1"
            ).fetchall()
        return dict(rows)

    def merges(self) -> dict[str, tuple[str, int]]:
        """cluster_id -> (cluster it was merged into, that cluster's run)."""
        scan = self._scan("merges")
        if scan is None:
            return {}
        rows = self.con.execute(f"SELECT cluster_id, merged_into, merged_run FROM {scan}").fetchall()
        return {c: (m, r) for c, m, r in rows}


def write_segments(state_dir: Path, run_id: int, tables: Mapping[str, pa.Table], params: dict[str, object]) -> list[Segment]:
    """Write one run's segments (kind -> table) atomically, side by side, and describe them
    for the catalog, in kind order."""
    paths = {k: segment_path(state_dir, k, run_id) for k in sorted(tables)}
    write_all([FileWrite(p, tables[k], tables[k].schema, {"kind": k, "run_id": run_id, **params})
               for k, p in paths.items()])
    return [Segment(kind=k, path=str(p), n_rows=tables[k].num_rows, params=params) for k, p in paths.items()]
