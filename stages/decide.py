"""The ``decide`` night stage: tonight's keep/prune decisions, protected strata, the prune
queue's next step and the coverage of what is kept.

It needs nothing, reads whatever tonight's taggers and stages wrote (list it after ``dedup``,
``novelty`` and ``surprise`` in ``[run].stages``), and gathers:

1. the columns the rule's terms read (``curation.rules``; an absent one is skipped and noted);
2. protected strata (``curation.protect``) for tonight's documents and for documents already
   in the queue, so a document that became protected is restored before it is applied;
3. the rule's decisions, then the queue's lifecycle (``curation.prune``) and coverage.

Everything goes out as ``TableWrite`` rows committed with the run (``decisions``,
``prune_queue``, ``prune_events``, ``protected``, ``coverage``) plus the per-document output
``decision`` (joined into ``v_documents``): a crash leaves nothing half-done.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from glia.core.context import RunContext
from glia.curation import prune as pr
from glia.curation.protect import (
    TAG_RARITY,
    ClusterModel, Protect, cluster_strata, embedding_matrix, empty_strata, explicit_id_strata, explicit_where_strata,
    fit_clusters, rarity_strata, sample_mask, sample_predicate, strata_lists,
)
from glia.curation.rules import DECISION_SCHEMA, DEFAULT_KEEP, DEFAULT_PRUNE, MissingTagError, Report, Rules, decide
from glia.stages.base import NightStage, StageInputs, StageOutput
from glia.storage.catalog import TableWrite
from glia.storage.sql import identifier, parquet_scan

DECISION = "decision"
READS_FROM = ("dedup", "novelty", "surprise", "semantic_dedup")  # stages whose outputs the terms read
_RULE_KEYS = ("keep_if_any", "prune_if_any", "terms", "missing", "cap", "requeue_restored")


@dataclass
class DecideState:
    """What the stage reads from the catalog before tagging starts (read-only)."""

    queue: pa.Table  # prune_queue rows + the document's source, label, shard_id (null if gone)
    night_runs: np.ndarray  # runs that count as nights (completed, nothing_new), before tonight
    population: pa.Table  # shard_id, source, label, n: active documents by metadata
    embedding_files: list[tuple[str, str, int]] = field(default_factory=list)  # (shard_id, path, rows)
    queue_where: pa.Table = field(default_factory=empty_strata)  # user SQL strata hits among queued docs
    tag_population: dict[str, pa.Table] = field(default_factory=dict)  # rarity tag column -> shard_id, <col>, n


class DecideStage(NightStage):
    """Keep or prune each of tonight's documents; see the module docstring and the commented
    ``[stages.decide]`` block in ``examples/glia.toml`` for every key."""

    name = "decide"
    version = "1"
    needs = ()
    reads = READS_FROM
    migrations = pr.MIGRATIONS

    @dataclass(frozen=True)
    class Params:
        """The top level of ``[stages.decide]``; the rule (``curation.rules``), the protected
        strata (``curation.protect``) and the queue's lifecycle (``curation.prune``) check their
        own tables, naming the key the same way."""

        keep_if_any: tuple[str, ...] = DEFAULT_KEEP
        prune_if_any: tuple[str, ...] = DEFAULT_PRUNE
        terms: dict[str, dict[str, Any]] = field(default_factory=dict)
        missing: Literal["skip", "error"] = "skip"
        cap: dict[str, float] = field(default_factory=dict)
        requeue_restored: bool = False
        protect: dict[str, Any] | None = None
        lifecycle: dict[str, Any] = field(default_factory=dict)

    def __init__(self, **params: Any) -> None:
        p = self.configure(params)
        self.rules = Rules.from_config({k: getattr(p, k) for k in _RULE_KEYS})
        self.protect = Protect.from_config(p.protect)
        self.lifecycle = pr.Lifecycle.from_config(p.lifecycle)

    def outputs(self) -> dict[str, pa.Schema]:
        return {DECISION: DECISION_SCHEMA}

    def config(self) -> dict[str, Any]:
        p = self.protect
        return {
            "rules": self.rules.to_dict(),
            "lifecycle": asdict(self.lifecycle),
            "protect": {
                "rarity": {"columns": list(p.rarity.columns), "max_share": p.rarity.max_share,
                           "share_below": p.rarity.share_below.to_config()},
                "clusters": asdict(p.clusters),
                "explicit": {e.name: {"ids": len(e.ids), "ids_file": e.ids_file, "where": e.where} for e in p.explicit},
            },
        }

    # -- catalog state ----------------------------------------------------------------------

    def load(self, con: duckdb.DuckDBPyConnection, ctx: RunContext) -> DecideState:
        queue = con.sql(
            "SELECT q.doc_id, q.run_id, q.reasons, q.priority, q.status, q.changed_run, q.changed_at, q.note, "
            "CAST(d.source AS VARCHAR) AS source, CAST(d.label AS VARCHAR) AS label, d.shard_id "
            "FROM prune_queue q LEFT JOIN documents d USING (doc_id) ORDER BY q.doc_id").to_arrow_table()
        runs = con.sql("SELECT run_id FROM runs WHERE status IN ('completed', 'nothing_new') ORDER BY run_id").fetchnumpy()
        population = con.sql("SELECT shard_id, CAST(source AS VARCHAR) AS source, CAST(label AS VARCHAR) AS label, "
                             "count(*) AS n FROM documents GROUP BY ALL").to_arrow_table()
        files: list[tuple[str, str, int]] = []
        c = self.protect.clusters
        if c.enabled:
            files = [tuple(r) for r in con.execute(
                "SELECT f.shard_id, f.path, f.n_rows FROM tag_files f JOIN shards s USING (shard_id) "
                "WHERE f.tagger = ? AND s.status = 'active' "
                "QUALIFY row_number() OVER (PARTITION BY f.shard_id ORDER BY f.run_id DESC, f.version DESC) = 1 "
                "ORDER BY f.shard_id", [c.output]).fetchall()]
        where = empty_strata()
        if self.protect.predicates and queue.num_rows:
            where = explicit_where_strata(
                con, "v_documents", self.protect.predicates,
                doc_filter="doc_id IN (SELECT doc_id FROM prune_queue WHERE status IN ('queued', 'quarantined', 'applied'))")
        tag_pop = {}
        view_cols = {r[0] for r in con.sql("SELECT column_name FROM information_schema.columns "
                                           "WHERE table_name = 'v_documents'").fetchall()}
        for col in self.protect.rarity.columns:
            if col in TAG_RARITY and col in view_cols:  # earlier nights' values of a rarity tag column
                tag_pop[col] = con.sql(f"SELECT shard_id, CAST({identifier(col)} AS VARCHAR) AS {identifier(col)}, "
                                       "count(*) AS n FROM v_documents GROUP BY ALL").to_arrow_table()
        return DecideState(queue, np.asarray(runs["run_id"], np.int64), population, files, where, tag_pop)

    # -- tonight ----------------------------------------------------------------------------

    def run(self, ctx: RunContext, state: DecideState, inputs: StageInputs) -> StageOutput:
        run_id = ctx.run_id
        tags = self._tonight_tags(inputs)
        ids = tags["doc_id"].combine_chunks()
        queue = state.queue
        population = _population(state.population, inputs.history_active, tags, state.tag_population)
        notes: list[str] = []
        tonight_strata, queue_strata, emb = self._strata(inputs, state, tags, population, notes)
        tags = tags.append_column("strata", strata_lists(ids, tonight_strata))
        tags = tags.append_column("restored", _restored_kinds(queue, ids))
        try:
            decided = decide(tags, self.rules)
        except MissingTagError as exc:
            raise ValueError(f"[stages.decide] {exc}") from None
        dec, rep = decided.table, decided.report
        change = pr.advance(queue, dec, _protected_now(queue_strata), state.night_runs, self.lifecycle, run_id,
                            ctx.started_at)
        after = pr.queue_after(queue, change)
        prot_rows = _protected_rows(tonight_strata, queue_strata, change, run_id)
        cov = self._coverage(run_id, rep, change, after, population, tags, queue, emb, notes)
        decisions = dec.select(DECISION_SCHEMA.names).cast(DECISION_SCHEMA)
        return StageOutput(
            tags={DECISION: decisions.append_column("shard_id", tags["shard_id"])},
            writes=[
                TableWrite("decisions", decisions.add_column(0, "run_id", pa.array(np.full(dec.num_rows, run_id, np.int32)))),
                TableWrite("prune_queue", change.rows, key=("doc_id",)),
                TableWrite("prune_events", change.events),
                TableWrite("protected", prot_rows.select(["run_id", "doc_id", "stratum", "reason"])),
                TableWrite("coverage", pa.Table.from_pylist([cov])),
            ],
            counts=_counts(rep, change, cov),
        )

    def _tonight_tags(self, inputs: StageInputs) -> pa.Table:
        """Tonight's documents with their metadata, the columns the rule's terms read and the
        tag columns rarity strata are drawn from."""
        docs = inputs.documents
        ids = docs["doc_id"].combine_chunks().cast(pa.string())
        tags = pa.table({"doc_id": ids, "source": docs["source"].cast(pa.string()),
                         "label": docs["label"].cast(pa.string()), "shard_id": docs["shard_id"]})
        for term in self.rules.terms.values():
            col = _read_column(inputs, term.output, term.column, ids)
            if col is not None and term.column not in tags.column_names:
                tags = tags.append_column(term.column, col)
        for col in self.protect.rarity.columns:
            if col in TAG_RARITY and col not in tags.column_names:
                val = _read_column(inputs, TAG_RARITY[col], col, ids)
                if val is not None:
                    tags = tags.append_column(col, val.cast(pa.string()))
        return tags

    def _strata(self, inputs: StageInputs, state: DecideState, tags: pa.Table,
                population: Mapping[str, Mapping[str, int]], notes: list[str]) -> tuple[pa.Table, pa.Table, _Embeddings]:
        """Protected strata (doc_id, stratum, reason) of tonight's documents and of documents
        already in the queue, and the embeddings the clusters were fitted on. A queued document's
        protection is re-checked tonight: all strata before it is applied; only the user's
        explicit strata once applied (rarity shifts night to night)."""
        ids = tags["doc_id"].combine_chunks()
        queue = state.queue
        active = pc.is_in(queue["status"], value_set=pa.array(pr.ACTIVE))
        pending = pc.is_in(queue["status"], value_set=pa.array([pr.QUEUED, pr.QUARANTINED]))
        not_tonight = pc.invert(pc.is_in(queue["doc_id"], value_set=ids))
        recheck = queue.filter(pc.and_(active, not_tonight))
        recheck_pending = queue.filter(pc.and_(pending, not_tonight))
        # One pass over the id lists (an id file is read once a night) for tonight and the queue.
        by_id = explicit_id_strata(pa.concat_arrays([ids, recheck["doc_id"].combine_chunks().cast(pa.string())]),
                                   self.protect.explicit)
        is_tonight = pc.is_in(by_id["doc_id"], value_set=ids)
        t_rows = [rarity_strata(tags, population, self.protect.rarity), by_id.filter(is_tonight)]
        q_rows = [rarity_strata(recheck_pending, population, self.protect.rarity),
                  by_id.filter(pc.invert(is_tonight)), state.queue_where]
        if self.protect.predicates:
            t_rows.append(_tonight_where(inputs, tags, self.protect))
        emb = _Embeddings.gather(inputs, state, self.protect, ids, recheck_pending["doc_id"], notes)
        if emb.model is not None:
            t_rows.append(cluster_strata(emb.model, emb.tonight_ids, emb.tonight, self.protect.clusters))
            q_rows.append(cluster_strata(emb.model, emb.queue_ids, emb.queue, self.protect.clusters))
        return _merge_strata(t_rows), _merge_strata(q_rows), emb

    def _coverage(self, run_id: int, rep: Report, change: pr.QueueChange, after: pa.Table,
                  population: Mapping[str, Mapping[str, int]], tags: pa.Table, queue: pa.Table, emb: _Embeddings,
                  notes: list[str]) -> dict[str, Any]:
        """Tonight's row of ``coverage``: compression (how much is pruned) against coverage
        (which sources, labels and embedding clusters still have kept documents)."""
        status = after["status"]
        pruned_ids = after.filter(pc.is_in(status, value_set=pa.array(pr.ACTIVE)))["doc_id"].combine_chunks()
        n_status = {s: int(pc.sum(pc.equal(status, s)).as_py() or 0) for s in (pr.QUEUED, pr.QUARANTINED, pr.APPLIED)}
        meta = _metadata(tags, queue)
        pruned_meta = meta.filter(pc.is_in(meta["doc_id"], value_set=pruned_ids))
        n_pruned_active = int(pruned_meta.filter(pc.is_valid(pruned_meta["shard_id"])).num_rows)
        n_applied_active = int(pruned_meta.filter(pc.and_(pc.is_valid(pruned_meta["shard_id"]), pc.is_in(
            pruned_meta["doc_id"], value_set=after.filter(pc.equal(status, pr.APPLIED))["doc_id"].combine_chunks()))).num_rows)
        active_docs = int(sum(population["source"].values()))
        pruned_by = {col: _value_counts(pruned_meta.filter(pc.is_valid(pruned_meta["shard_id"])), col)
                     for col in ("source", "label")}
        s_total, s_cov = pr.metadata_coverage(population["source"], pruned_by["source"])
        l_total, l_cov = pr.metadata_coverage(population["label"], pruned_by["label"])
        return {
            "run_id": run_id, "n_docs": rep.n_docs, "n_candidates": rep.n_candidates, "n_pruned": rep.n_pruned,
            "n_protected": rep.n_protected, "n_overridden": rep.n_overridden, "n_held_night": rep.n_held_night,
            "n_held_source": rep.n_held_source, "n_suppressed": rep.n_suppressed,
            "n_quarantined": change.counts["quarantined"], "n_applied": change.counts["applied"],
            "n_restored": change.counts["restored"], "queue_queued": n_status[pr.QUEUED],
            "queue_quarantined": n_status[pr.QUARANTINED], "queue_applied": n_status[pr.APPLIED],
            "active_docs": active_docs,
            "pruned_share": n_pruned_active / active_docs if active_docs else None,
            "applied_share": n_applied_active / active_docs if active_docs else None,
            "sources_total": s_total, "sources_covered": s_cov, "labels_total": l_total, "labels_covered": l_cov,
            **emb.coverage(pruned_ids),
            "thresholds": json.dumps({k: (v if not isinstance(v, float) or np.isfinite(v) else None)
                                      for k, v in rep.thresholds.items()}),
            "notes": [f"no_{t}_tag" for t in rep.skipped] + notes,
        }


# -- helpers ------------------------------------------------------------------------------------


def _protected_now(queue_strata: pa.Table) -> pa.Table:
    """doc_id and its strata (comma-joined, sorted) for queued documents protected tonight."""
    qs = queue_strata.sort_by([("doc_id", "ascending"), ("stratum", "ascending")]) \
        .group_by("doc_id", use_threads=False).aggregate([("stratum", "list")])
    return pa.table({"doc_id": qs["doc_id"], "strata": pc.binary_join(qs["stratum_list"], ",")})


def _protected_rows(tonight_strata: pa.Table, queue_strata: pa.Table, change: pr.QueueChange, run_id: int) -> pa.Table:
    """Rows for ``protected``: tonight's strata, and those of queued documents they restored."""
    restored_by_protection = change.rows.filter(pc.match_substring(pc.fill_null(change.rows["note"], ""), "protected:"))
    prot_rows = pa.concat_tables([
        tonight_strata,
        queue_strata.filter(pc.is_in(queue_strata["doc_id"], value_set=restored_by_protection["doc_id"].combine_chunks())),
    ])
    return prot_rows.append_column("run_id", pa.array(np.full(prot_rows.num_rows, run_id, np.int32)))


def _counts(rep: Report, change: pr.QueueChange, cov: Mapping[str, Any]) -> dict[str, int | float]:
    """The stage's counts for run_metrics (decide.<count>)."""
    counts: dict[str, int | float] = {
        "decided": rep.n_docs, "candidates": rep.n_candidates, "pruned": rep.n_pruned, "protected": rep.n_protected,
        "overridden": rep.n_overridden, "held_by_cap": rep.n_held, "held_by_cap_night": rep.n_held_night,
        "held_by_cap_source": rep.n_held_source, "requeue_suppressed": rep.n_suppressed,
        "quarantined": change.counts["quarantined"], "applied": change.counts["applied"],
        "restored": change.counts["restored"], "skipped_terms": len(rep.skipped),
    }
    counts.update({f"fired.{t}": n for t, n in rep.fired.items()})
    counts.update({f"threshold.{t}": float(v) for t, v in rep.thresholds.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)})
    for key in ("pruned_share", "cluster_coverage", "mean_pruned_to_kept"):
        if cov.get(key) is not None:
            counts[key] = float(cov[key])
    return counts


def _read_column(inputs: StageInputs, output: str, column: str, ids: pa.Array) -> pa.Array | None:
    """Tonight's ``column`` of tagger/stage output ``output``, aligned to ``ids`` (null where a
    document has no row); None if the output did not run tonight or lacks the column."""
    if column not in inputs.columns(output):
        return None
    return _read_columns(inputs, output, [column], ids)[column]


def _read_columns(inputs: StageInputs, output: str, columns: list[str], ids: pa.Array) -> dict[str, pa.Array]:
    """Like :func:`_read_column` for several columns the output has, read in one pass."""
    if not columns:
        return {}
    t = inputs.read(output, columns)
    idx = pc.index_in(ids, value_set=t["doc_id"].combine_chunks().cast(pa.string()))
    return {c: t[c].combine_chunks().take(idx) for c in columns}


def _value_counts(t: pa.Table, col: str) -> dict[str, int]:
    if t.num_rows == 0:
        return {}
    g = t.group_by(col).aggregate([([], "count_all")])
    return {k: int(n) for k, n in zip(g[col].to_pylist(), g["count_all"].to_pylist()) if k is not None}


def _population(pop: pa.Table, history_active: list[str], tags: pa.Table,
                tag_pop: Mapping[str, pa.Table] | None = None) -> dict[str, dict[str, int]]:
    """Documents per source and per label (and per rarity tag column, e.g. ``lang``) over the
    corpus tonight: earlier documents of shards still active (not replaced tonight) plus tonight's."""
    active = pa.array(history_active, pa.string())
    out: dict[str, dict[str, int]] = {}
    for col in ("source", "label", *(c for c in (tag_pop or {}) if c in tags.column_names)):
        table = pop if col in ("source", "label") else tag_pop[col]
        hist = table.filter(pc.is_in(table["shard_id"], value_set=active))
        counts = _value_counts(tags, col)
        if hist.num_rows:
            g = hist.group_by(col).aggregate([("n", "sum")])
            for k, n in zip(g[col].to_pylist(), g["n_sum"].to_pylist()):
                if k is not None:
                    counts[k] = counts.get(k, 0) + int(n)
        out[col] = counts
    return out


def _metadata(tags: pa.Table, queue: pa.Table) -> pa.Table:
    """doc_id, source, label, shard_id for tonight's documents and for earlier queued ones."""
    cols = ["doc_id", "source", "label", "shard_id"]
    t = tags.select(cols)
    q = queue.select(cols).cast(t.schema)
    q = q.filter(pc.invert(pc.is_in(q["doc_id"], value_set=t["doc_id"].combine_chunks())))
    return pa.concat_tables([t, q])


def _merge_strata(parts: list[pa.Table]) -> pa.Table:
    """One row per (document, stratum) of several stratum sources, with the first reason."""
    return pa.concat_tables(parts).group_by(["doc_id", "stratum"]).aggregate([("reason", "min")]) \
        .rename_columns(["doc_id", "stratum", "reason"])


def _restored_kinds(queue: pa.Table, ids: pa.Array) -> pa.ListArray:
    """Per tonight's document: the kinds of the reasons it was restored from (empty if never)."""
    r = queue.filter(pc.and_(pc.equal(queue["status"], pr.RESTORED), pc.is_in(queue["doc_id"], value_set=ids)))
    empty = pa.ListArray.from_arrays(pa.array(np.zeros(len(ids) + 1, np.int32)), pa.array([], pa.string()))
    if r.num_rows == 0:
        return empty
    reasons = pc.fill_null(r["reasons"].combine_chunks(), pa.scalar(["*"], pa.list_(pa.string())))
    flat = pc.list_flatten(reasons)
    kinds = pc.struct_field(pc.extract_regex(flat, r"^(?P<k>[A-Za-z0-9_]*)"), "k")
    lists = pa.ListArray.from_arrays(reasons.offsets, pc.if_else(pc.equal(flat, "*"), "*", kinds))
    idx = pc.index_in(ids, value_set=r["doc_id"].combine_chunks())
    out = lists.take(idx)
    return pc.fill_null(out, pa.scalar([], pa.list_(pa.string())))


def _tonight_where(inputs: StageInputs, tags: pa.Table, protect: Protect) -> pa.Table:
    """User SQL strata over tonight's documents: a ``v_documents``-like table (metadata plus
    every public column tonight's taggers and stages wrote) evaluated by DuckDB in memory."""
    table = inputs.documents
    ids = table["doc_id"].combine_chunks().cast(pa.string())
    for name in sorted(inputs.files):
        public = [c for c in inputs.columns(name)
                  if c not in ("doc_id", "shard_id") and not c.startswith("_") and c not in table.column_names]
        for col, got in _read_columns(inputs, name, public, ids).items():
            table = table.append_column(col, got)
    con = duckdb.connect()
    try:
        con.register("v_documents", table)
        return explicit_where_strata(con, "v_documents", protect.predicates)
    finally:
        con.close()


def _no_rows() -> np.ndarray:
    return np.zeros((0, 0), np.float32)


def _no_ids() -> pa.Array:
    return pa.array([], pa.string())


@dataclass
class _Embeddings:
    """Embeddings for clustering: a deterministic sample of the corpus to fit k-means on, and
    the rows of tonight's and queued documents to assign."""

    model: ClusterModel | None = None
    tonight_ids: pa.Array = field(default_factory=_no_ids)
    tonight: np.ndarray = field(default_factory=_no_rows)
    queue_ids: pa.Array = field(default_factory=_no_ids)
    queue: np.ndarray = field(default_factory=_no_rows)
    sample_ids: pa.Array = field(default_factory=_no_ids)
    sample: np.ndarray = field(default_factory=_no_rows)

    @classmethod
    def gather(cls, inputs: StageInputs, state: DecideState, protect: Protect, ids: pa.Array,
               queue_ids: pa.ChunkedArray | pa.Array, notes: list[str]) -> _Embeddings:
        cfg = protect.clusters
        if not cfg.enabled:
            return cls()
        col = _read_column(inputs, cfg.output, cfg.column, ids)
        if col is None:
            notes.append(f"no_{cfg.output}_tag: no embedding clusters")
            return cls()
        tonight, valid = embedding_matrix(col)
        t_ids = ids.filter(pa.array(valid))
        active = set(inputs.history_active)
        hist_files = [(s, p, n) for s, p, n in state.embedding_files if s in active]
        total = sum(n for _, _, n in hist_files) + len(t_ids)
        fraction = min(1.0, cfg.max_fit / max(total, 1))
        h_ids, h_emb, h_sample = _no_ids(), tonight[:0], np.zeros(0, bool)
        if hist_files:
            con = duckdb.connect()
            try:
                con.register("q", pa.table({"doc_id": pa.array(queue_ids, pa.string())}))
                in_sample = sample_predicate(fraction)  # the same sample as protect.sample_mask
                c = identifier(cfg.column)
                hist = con.sql(
                    f"SELECT CAST(doc_id AS VARCHAR) AS doc_id, {c} AS e, {in_sample} AS s "
                    f"FROM {parquet_scan([p for _, p, _ in hist_files])} "
                    f"WHERE {in_sample} OR doc_id IN (SELECT doc_id FROM q)").to_arrow_table()
            finally:
                con.close()
            h_emb, hv = embedding_matrix(hist["e"])
            h_ids = hist["doc_id"].combine_chunks().filter(pa.array(hv))
            h_sample = hist["s"].combine_chunks().filter(pa.array(hv)).to_numpy(zero_copy_only=False).astype(bool)
        t_sample = sample_mask(t_ids, fraction)
        s_ids = pa.concat_arrays([t_ids.filter(pa.array(t_sample)), h_ids.filter(pa.array(h_sample))])
        s_emb = np.concatenate([tonight[t_sample], h_emb[h_sample]]) if h_emb.size else tonight[t_sample]
        order = pc.sort_indices(s_ids)  # fit on rows in id order: the model does not depend on shard order
        s_ids, s_emb = s_ids.take(order), s_emb[order.to_numpy()]
        model = fit_clusters(s_emb, cfg.k, cfg.seed) if len(s_ids) else None
        if model is None:
            notes.append(f"too_few_embeddings: {len(s_ids)} < {2 * cfg.k} for k={cfg.k}")
        q_mask = pc.is_in(h_ids, value_set=pa.array(queue_ids, pa.string())).to_numpy(zero_copy_only=False).astype(bool)
        return cls(model, t_ids, tonight, h_ids.filter(pa.array(q_mask)), h_emb[q_mask] if h_emb.size else h_emb,
                   s_ids, s_emb)

    def coverage(self, pruned_ids: pa.Array) -> dict[str, Any]:
        """Embedding coverage: every pruned document against the kept documents of the sample."""
        out: dict[str, Any] = {"clusters_total": None, "clusters_covered": None, "cluster_coverage": None,
                               "mean_pruned_to_kept": None, "coverage_sample": 0}
        if not len(self.sample_ids) and not len(self.tonight_ids):
            return out
        all_ids = pa.concat_arrays([self.sample_ids, self.tonight_ids, self.queue_ids])
        emb = np.concatenate([b for b in (self.sample, self.tonight, self.queue) if b.size])
        first = pc.index_in(all_ids, value_set=all_ids).to_numpy(zero_copy_only=False) == np.arange(len(all_ids))
        pruned = pc.is_in(all_ids, value_set=pruned_ids).to_numpy(zero_copy_only=False).astype(bool)
        in_sample = pc.is_in(all_ids, value_set=self.sample_ids).to_numpy(zero_copy_only=False).astype(bool)
        rows = first & (in_sample | pruned)  # kept documents from the unbiased sample; every pruned one
        emb, pruned = emb[rows], pruned[rows]
        labels = self.model.assign(emb) if self.model is not None else np.zeros(len(emb), np.int64)
        out.update(pr.embedding_coverage(emb, labels, pruned))
        if self.model is None:
            out.update(clusters_total=None, clusters_covered=None, cluster_coverage=None)
        out["coverage_sample"] = int(rows.sum())
        return out
