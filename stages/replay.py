"""The ``replay`` night stage: tonight's TMR replay set (see :mod:`curation.replay`).

It needs nothing and should run last, so that it sees every tag tonight's taggers and stages
wrote (surprise, utility, novelty, decisions). The pool is the earlier documents, read from
the catalog before tagging starts, plus tonight's documents and their tags; the set, its
items and the retention state are committed with the run (``TableWrite``), so a crashed
night leaves no half-written set. A night whose pool is empty (everything pruned) writes no set.
"""

from __future__ import annotations

from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from glia.core.context import RunContext
from glia.curation.replay import (
    Pool, ReplayParams, attach, build_set, combine_pools, concat_lists, metadata_strata, pool_from_catalog,
)
from glia.storage.replay import MIGRATIONS, POOL_SCHEMA, ReplayCatalog, rarity_label, read_replay_catalog
from glia.storage.views import DOCUMENTS, DOCUMENTS_VERSION
from glia.stages.base import NightStage, StageInputs, StageOutput

TAG_COLUMNS = ("surprise", "utility", "novelty", "protected", "strata")
EXCLUDE_COLUMNS = ("exact_dup_of", "near_dup_of", "action")


class ReplayStage(NightStage):
    """Builds tonight's replay set; parameters are :class:`~curation.replay.ReplayParams` fields."""

    name = "replay"
    version = "1"
    needs = ()
    reads = ("dedup", "novelty", "surprise", "decide")
    migrations = MIGRATIONS

    Params = ReplayParams

    def __init__(self, **params: Any) -> None:
        self.configure(params)

    def config(self) -> dict[str, Any]:
        return self.params.to_dict()

    def load(self, con: duckdb.DuckDBPyConnection, ctx: RunContext) -> ReplayCatalog:
        return read_replay_catalog(con, self.params)

    def run(self, ctx: RunContext, state: ReplayCatalog, inputs: StageInputs) -> StageOutput:
        # The catalog's pool already leaves out the ids queued on earlier nights (state.pruned_ids);
        # tonight's prunes are read from the decide stage's `action` column (tonight_pool).
        old = pool_from_catalog(state, ctx.run_id)
        # Earlier documents count only while their shard is still active tonight.
        in_history = pc.is_in(old.table["shard_id"], value_set=pa.array(inputs.history_active, pa.string()))
        old = Pool(old.table.filter(in_history), ctx.run_id, old.n_excluded, old.rarity_source)
        new = tonight_pool(ctx, inputs, self.params, state.importance, state.pruned_ids)
        pool = combine_pools(old, new)
        if pool.table.num_rows == 0:
            return StageOutput(counts={"pool": 0, "excluded": pool.n_excluded})
        cols = ctx.columns
        rs = build_set(pool, state.state, self.params, state.next_set_id, state.n_sets, "flow", cols.text, cols.id)
        row = rs.set_row
        return StageOutput(writes=rs.writes(), counts={
            "set_id": row["set_id"], "pool": row["n_pool"], "pool_new": row["n_pool_new"], "items": row["n_items"],
            "draws": row["size"], "new_draws": row["n_new_draws"], "excluded": row["n_excluded"],
            "unscored": row["n_unscored"], "terms": len(row["terms"]), "beta": row["beta"],
        })


def _outputs(inputs: StageInputs, wanted: set[str]) -> list[pa.Table]:
    """Tonight's tagger and stage outputs that carry any ``wanted`` column, read with only those."""
    out = []
    for name in sorted(inputs.files):
        cols = [c for c in inputs.columns(name) if c in wanted]
        if cols:
            out.append(inputs.read(name, cols))
    return out


def _document_metadata(ctx: RunContext, inputs: StageInputs, columns: list[str]) -> pa.Table:
    """``doc_id`` plus metadata ``columns`` of tonight's documents: the canonical ones from the
    stage inputs, extra ones from tonight's ``documents`` index files."""
    docs = inputs.documents
    out = docs.select(["doc_id", *[c for c in columns if c in docs.column_names]])
    extra = [c for c in columns if c not in docs.column_names]
    if not extra or docs.num_rows == 0:
        return out
    parts = []
    for shard_id in sorted(pc.unique(docs["shard_id"]).to_pylist()):
        path = ctx.tag_path(f"{DOCUMENTS}@{DOCUMENTS_VERSION}", shard_id)
        have = [c for c in extra if c in pq.read_schema(path).names]
        parts.append(pq.read_table(path, columns=["doc_id", *have]))
    meta = pa.concat_tables(parts, promote_options="default")
    idx = pc.index_in(out["doc_id"], value_set=meta["doc_id"])
    for c in extra:
        if c in meta.column_names:
            out = out.append_column(c, pc.take(meta[c], idx))
    return out


def tonight_pool(ctx: RunContext, inputs: StageInputs, params: ReplayParams, importance: pa.Table | None,
                 pruned: pa.Array) -> Pool:
    """Tonight's documents with their term columns, minus duplicates, prunes and queued ids."""
    docs = inputs.documents
    n = docs.num_rows
    ids = pc.cast(docs["doc_id"], pa.string())
    first_seen = inputs.first_seen
    first = np.full(n, ctx.run_id, dtype=np.int64)
    if first_seen:
        known = pa.table({"doc_id": list(first_seen), "run": list(first_seen.values())})
        idx = pc.index_in(ids, value_set=known["doc_id"])
        prior = pc.take(known["run"], idx).to_numpy(zero_copy_only=False)
        has = pc.is_valid(idx).to_numpy(zero_copy_only=False)
        first[has] = prior[has].astype(np.int64)
    table = pa.table({f.name: pa.nulls(n, f.type) for f in POOL_SCHEMA}, schema=POOL_SCHEMA)
    table = table.set_column(0, "doc_id", ids).set_column(1, "shard_id", pc.cast(docs["shard_id"], pa.string()))
    table = table.set_column(2, "first_seen_run", pa.array(first))

    imp_col = params.importance_column
    wanted = set(TAG_COLUMNS) | set(EXCLUDE_COLUMNS if params.exclude_duplicates else ("action",))
    if imp_col:
        wanted.add(imp_col)
    excluded = pc.is_in(ids, value_set=pruned).to_numpy(zero_copy_only=False)
    have_strata = False
    for out in _outputs(inputs, wanted):
        idx = pc.index_in(ids, value_set=pc.cast(out["doc_id"], pa.string()))
        for c in ("exact_dup_of", "near_dup_of"):
            if c in out.column_names and params.exclude_duplicates:
                excluded |= pc.is_valid(pc.take(out[c], idx)).to_numpy(zero_copy_only=False)
        if "action" in out.column_names:
            excluded |= pc.fill_null(pc.equal(pc.take(out["action"], idx), "prune"), False).to_numpy(zero_copy_only=False)
        have_strata |= "strata" in out.column_names
        if imp_col and imp_col in out.column_names and imp_col != "importance":
            out = out.append_column("importance", out[imp_col])
        table = attach(table, out, [c for c in POOL_SCHEMA.names[3:] if c in out.column_names])

    # Strata for rarity: the metadata columns, plus the decide stage's protected strata if it ran.
    meta = _document_metadata(ctx, inputs, list(dict.fromkeys([*params.rarity_columns, *([imp_col] if imp_col else [])])))
    if imp_col and imp_col in meta.column_names:
        table = attach(table, meta.append_column("importance", meta[imp_col]), ["importance"])
    strata, used = metadata_strata(meta, params.rarity_columns)
    rarity_source = rarity_label(used.split(",") if used else [], have_strata)
    if have_strata:
        strata = concat_lists(strata, table["strata"].combine_chunks())
    table = table.set_column(table.schema.get_field_index("strata"), "strata", strata)
    if importance is not None:
        table = attach(table, importance, ["importance"])
    keep = pa.array(~excluded)
    return Pool(table.filter(keep), ctx.run_id, int(excluded.sum()), rarity_source)
