"""Non-destructive pruning: the prune queue's lifecycle, undo, the clean manifest, coverage.

A document the rule prunes is *queued*, never deleted::

    queued --(quarantine_after nights)--> quarantined --(apply_after nights)--> applied
       \\______________________ restored (glia undo, or protected / kept later) ___/

``prune_queue`` holds one row per document (its current state); ``prune_events`` logs every
transition. Nights are runs that completed (``completed`` or ``nothing_new``) after the
queuing run, tonight included; transitions happen in the ``decide`` stage, inside the run's
commit, so they are atomic with the night (a night with no new shards runs no stages, so
the queue waits for the next night with data).

Applying never touches a source shard: ``v_manifest`` lists the active documents that are not
``applied`` (shard path + row, what a trainer reads), and ``glia manifest export`` writes it
to Parquet. ``glia undo`` restores by run, by id or by reason kind, under the run lock and in
one transaction; a restored document keeps its row (status ``restored``) so later nights do not
queue it again for reasons of the same kind (see ``curation.rules``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from glia.curation.rules import RuleError, check_keys

QUEUED, QUARANTINED, APPLIED, RESTORED = "queued", "quarantined", "applied", "restored"
ACTIVE = (QUEUED, QUARANTINED, APPLIED)  # statuses that count as pruned (planned or done)
_RANK = {QUEUED: 0, QUARANTINED: 1, APPLIED: 2}

DDL = """
CREATE TABLE IF NOT EXISTS decisions (
    run_id     INTEGER NOT NULL,
    doc_id     VARCHAR NOT NULL,
    action     VARCHAR NOT NULL,          -- keep | prune
    reasons    VARCHAR[],                 -- every reason that fired, overrides, cap holds
    protected  BOOLEAN NOT NULL,
    strata     VARCHAR[],
    priority   FLOAT                      -- higher = more worth keeping
);
-- One row per document ever queued: its current state.
CREATE TABLE IF NOT EXISTS prune_queue (
    doc_id       VARCHAR NOT NULL,
    run_id       INTEGER NOT NULL,        -- the run that queued it
    reasons      VARCHAR[],
    priority     FLOAT,
    status       VARCHAR NOT NULL,        -- queued | quarantined | applied | restored
    changed_run  INTEGER,                 -- the run of the last change (NULL: glia undo)
    changed_at   TIMESTAMPTZ,
    note         VARCHAR
);
CREATE TABLE IF NOT EXISTS prune_events (
    run_id       INTEGER,                 -- NULL for glia undo
    doc_id       VARCHAR NOT NULL,
    from_status  VARCHAR,                 -- NULL when first queued
    to_status    VARCHAR NOT NULL,
    event_at     TIMESTAMPTZ NOT NULL,
    note         VARCHAR
);
CREATE TABLE IF NOT EXISTS protected (
    run_id   INTEGER NOT NULL,
    doc_id   VARCHAR NOT NULL,
    stratum  VARCHAR NOT NULL,            -- rare_source:<s>, rare_label:<l>, rare_cluster:<i>, or a user stratum
    reason   VARCHAR
);
CREATE TABLE IF NOT EXISTS coverage (
    run_id             INTEGER NOT NULL,
    n_docs             BIGINT,            -- decided tonight
    n_candidates       BIGINT,
    n_pruned           BIGINT,            -- queued tonight
    n_protected        BIGINT,
    n_overridden       BIGINT,            -- protected documents that had a prune reason
    n_held_night       BIGINT,            -- candidates kept by the per-night cap
    n_held_source      BIGINT,            -- candidates kept by the per-source cap
    n_suppressed       BIGINT,            -- candidates only by reasons the user restored before
    n_quarantined      BIGINT,            -- transitions tonight
    n_applied          BIGINT,
    n_restored         BIGINT,
    queue_queued       BIGINT,            -- queue after tonight
    queue_quarantined  BIGINT,
    queue_applied      BIGINT,
    active_docs        BIGINT,            -- the corpus: documents of active shards, tonight included
    pruned_share       DOUBLE,            -- queued + quarantined + applied, over active_docs
    applied_share      DOUBLE,
    sources_total      BIGINT,
    sources_covered    BIGINT,            -- sources with at least one document not pruned
    labels_total       BIGINT,
    labels_covered     BIGINT,
    clusters_total     BIGINT,            -- embedding clusters with documents (NULL without embeddings)
    clusters_covered   BIGINT,            -- ... that still have a kept document
    cluster_coverage   DOUBLE,
    mean_pruned_to_kept DOUBLE,           -- mean cosine distance from a pruned document to its nearest kept one
    coverage_sample    BIGINT,            -- documents the embedding metrics were computed on
    thresholds         JSON,              -- tonight's resolved rule thresholds
    notes              VARCHAR[]          -- terms skipped (no_<term>_tag), clustering notes
);
CREATE OR REPLACE VIEW v_prune_queue AS
    SELECT q.doc_id, q.status, q.reasons, q.run_id AS queued_run, q.changed_run, q.changed_at, q.note, q.priority,
           d.shard_path, d."row", d.source, d.label
    FROM prune_queue q LEFT JOIN documents d USING (doc_id)
    ORDER BY q.run_id, q.doc_id;
CREATE OR REPLACE VIEW v_protected AS
    SELECT p.doc_id, p.stratum, p.reason, p.run_id, d.shard_path, d.source, d.label
    FROM (SELECT *, row_number() OVER (PARTITION BY doc_id, stratum ORDER BY run_id DESC) AS rn FROM protected) p
    LEFT JOIN documents d USING (doc_id)
    WHERE p.rn = 1
    ORDER BY p.doc_id, p.stratum;
CREATE OR REPLACE VIEW v_manifest AS
    SELECT d.doc_id, d.shard_path, d."row", d.shard_id, d.source, d.label, d."timestamp"
    FROM documents d
    WHERE d.doc_id NOT IN (SELECT doc_id FROM prune_queue WHERE status = 'applied')
    ORDER BY d.shard_path, d."row";
"""

# The schema of these tables (see storage.migrations.StageMigration); add a migration to change it.
MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (1, "decisions, prune_queue, prune_events, protected, coverage; v_prune_queue, v_protected, v_manifest", DDL),
    # Evaluation text must not reach a trainer: documents protected as the eval_set stratum stay
    # in the catalog (never pruned) but leave the manifest of what to train on.
    (2, "v_manifest leaves out documents protected as eval_set", """
CREATE OR REPLACE VIEW v_manifest AS
    SELECT d.doc_id, d.shard_path, d."row", d.shard_id, d.source, d.label, d."timestamp"
    FROM documents d
    WHERE d.doc_id NOT IN (SELECT doc_id FROM prune_queue WHERE status = 'applied')
      AND d.doc_id NOT IN (SELECT doc_id FROM protected WHERE stratum = 'eval_set')
    ORDER BY d.shard_path, d."row";
"""),
)

QUEUE_SCHEMA = pa.schema([
    ("doc_id", pa.string()), ("run_id", pa.int32()), ("reasons", pa.list_(pa.string())), ("priority", pa.float32()),
    ("status", pa.string()), ("changed_run", pa.int32()), ("changed_at", pa.timestamp("us", tz="UTC")),
    ("note", pa.string()),
])
EVENT_SCHEMA = pa.schema([
    ("run_id", pa.int32()), ("doc_id", pa.string()), ("from_status", pa.string()), ("to_status", pa.string()),
    ("event_at", pa.timestamp("us", tz="UTC")), ("note", pa.string()),
])


@dataclass(frozen=True)
class Lifecycle:
    """How many nights after queuing a document is quarantined, then applied."""

    quarantine_after: int = 1
    apply_after: int = 3

    @classmethod
    def from_config(cls, raw: Mapping[str, Any], where: str = "[stages.decide.lifecycle]") -> Lifecycle:
        check_keys(raw, ("quarantine_after", "apply_after"), where)
        vals = {}
        for key in ("quarantine_after", "apply_after"):
            v = raw.get(key, getattr(cls(), key))
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise RuleError(f"{where}.{key}: expected a number of nights >= 0, got {v!r}")
            vals[key] = v
        if vals["quarantine_after"] > vals["apply_after"]:
            raise RuleError(f"{where}: quarantine_after ({vals['quarantine_after']}) must not exceed apply_after "
                            f"({vals['apply_after']})")
        return cls(**vals)

    def status_for(self, nights: np.ndarray) -> np.ndarray:
        """The status a queue entry reaches after ``nights`` nights."""
        return np.where(nights >= self.apply_after, APPLIED,
                        np.where(nights >= self.quarantine_after, QUARANTINED, QUEUED)).astype(object)


def _rank(status: np.ndarray) -> np.ndarray:
    """queued 0, quarantined 1, applied 2, anything else -1: statuses only move up."""
    return np.select([status == s for s in _RANK], list(_RANK.values()), -1) if len(status) else np.zeros(0, int)


def nights_since(queued_run: np.ndarray, night_runs: np.ndarray) -> np.ndarray:
    """Nights after each queuing run, tonight included: completed runs later than it, plus one."""
    runs = np.sort(np.asarray(night_runs, np.int64))
    return len(runs) - np.searchsorted(runs, np.asarray(queued_run, np.int64), side="right") + 1


@dataclass
class QueueChange:
    """Tonight's writes to ``prune_queue`` (upserts by doc_id) and ``prune_events``."""

    rows: pa.Table
    events: pa.Table
    counts: dict[str, int]


def advance(queue: pa.Table, tonight: pa.Table, protected_now: pa.Table, night_runs: Sequence[int],
            lifecycle: Lifecycle, run_id: int, now: datetime | None = None) -> QueueChange:
    """Move the queue on by one night.

    ``queue``: current ``prune_queue`` rows (QUEUE_SCHEMA columns). ``tonight``: tonight's
    decisions (``doc_id``, ``action``, ``prune_reasons``, ``priority``). ``protected_now``:
    (``doc_id``, ``strata`` as text) for queued documents that are protected tonight: they are
    restored. ``night_runs``: ids of the runs that count as nights, before tonight.

    - an active entry whose document tonight's rule keeps (a rewritten shard) is restored;
    - an active entry protected tonight is restored;
    - other active entries advance by the nights since they were queued (never backwards);
    - tonight's prunes without an active entry are queued (replacing a restored row).
    """
    now = now or datetime.now(timezone.utc)
    q = queue.select(QUEUE_SCHEMA.names).cast(QUEUE_SCHEMA)
    status = q["status"].to_numpy(zero_copy_only=False).astype(object)
    active = np.isin(status, ACTIVE)
    tonight_keep = tonight.filter(pc.equal(tonight["action"], "keep"))["doc_id"]
    tonight_prune = tonight.filter(pc.equal(tonight["action"], "prune"))
    qids = q["doc_id"]
    kept_again = pc.is_in(qids, value_set=tonight_keep.combine_chunks()).to_numpy(zero_copy_only=False) & active
    prot_idx = pc.fill_null(pc.index_in(qids, value_set=protected_now["doc_id"].combine_chunks()), -1)
    prot_idx = prot_idx.to_numpy(zero_copy_only=False).astype(np.int64)
    protected = (prot_idx >= 0) & active & ~kept_again
    nights = nights_since(q["run_id"].to_numpy(zero_copy_only=False), np.asarray(night_runs, np.int64))
    reached = lifecycle.status_for(nights)
    rank_now, rank_new = _rank(status), _rank(reached)
    moves = active & ~kept_again & ~protected & (rank_new > rank_now)

    new_status = status.copy()
    notes = np.full(len(status), None, dtype=object)
    new_status[kept_again | protected] = RESTORED
    notes[kept_again] = f"kept by run {run_id}"
    if protected.any():
        strata = protected_now["strata"].combine_chunks().take(pa.array(prot_idx[protected]))
        notes[protected] = pc.binary_join_element_wise("protected:", strata, "").to_numpy(zero_copy_only=False)
    new_status[moves] = reached[moves]
    if moves.any():
        notes[moves] = pc.binary_join_element_wise(pa.array(reached[moves], pa.string()), " after ",
                                                   pc.cast(pa.array(nights[moves]), pa.string()), " night(s)", "") \
            .to_numpy(zero_copy_only=False)
    changed = kept_again | protected | moves
    ch = q.filter(pa.array(changed))
    ch_rows = _changed(ch, new_status[changed], notes[changed], run_id, now)

    # Tonight's prunes: new entries unless already active (a rewritten shard keeps its clock).
    still_active = q.filter(pa.array(active & ~changed | (changed & np.isin(new_status, ACTIVE))))["doc_id"]
    fresh = tonight_prune.filter(pc.invert(pc.is_in(tonight_prune["doc_id"], value_set=still_active.combine_chunks())))
    first = lifecycle.status_for(np.zeros(fresh.num_rows, np.int64))
    new_rows = _queued(fresh, first, run_id, now)
    rows = pa.concat_tables([ch_rows.cast(QUEUE_SCHEMA), new_rows])
    events = _events(ch, new_rows, rows, run_id)
    counts = {
        "queued": int(new_rows.num_rows),
        "quarantined": int((moves & (new_status == QUARANTINED)).sum()) + int((first == QUARANTINED).sum()),
        "applied": int((moves & (new_status == APPLIED)).sum()) + int((first == APPLIED).sum()),
        "restored": int((kept_again | protected).sum()),
        "restored_protected": int(protected.sum()),
    }
    return QueueChange(rows, events, counts)


def _changed(ch: pa.Table, status: np.ndarray, notes: np.ndarray, run_id: int, now: datetime) -> pa.Table:
    """The queue rows ``ch`` with their new status and note, changed by run ``run_id`` at ``now``."""
    ch_rows = ch.set_column(ch.schema.get_field_index("status"), "status", pa.array(status.tolist(), pa.string()))
    ch_rows = ch_rows.set_column(ch_rows.schema.get_field_index("changed_run"), "changed_run",
                                 pa.array(np.full(ch.num_rows, run_id, np.int32)))
    ch_rows = ch_rows.set_column(ch_rows.schema.get_field_index("changed_at"), "changed_at",
                                 pa.array([now] * ch.num_rows, QUEUE_SCHEMA.field("changed_at").type))
    return ch_rows.set_column(ch_rows.schema.get_field_index("note"), "note", pa.array(notes.tolist(), pa.string()))


def _queued(fresh: pa.Table, first: np.ndarray, run_id: int, now: datetime) -> pa.Table:
    """New queue entries for tonight's prunes ``fresh``, each starting at status ``first``."""
    return pa.table({
        "doc_id": fresh["doc_id"].cast(pa.string()),
        "run_id": pa.array(np.full(fresh.num_rows, run_id, np.int32)),
        "reasons": fresh["prune_reasons"].cast(pa.list_(pa.string())),
        "priority": fresh["priority"].cast(pa.float32()),
        "status": pa.array(first.tolist(), pa.string()),
        "changed_run": pa.array(np.full(fresh.num_rows, run_id, np.int32)),
        "changed_at": pa.array([now] * fresh.num_rows, QUEUE_SCHEMA.field("changed_at").type),
        "note": pa.repeat(pa.scalar(f"queued by run {run_id}"), fresh.num_rows),
    }, schema=QUEUE_SCHEMA)


def _events(ch: pa.Table, new_rows: pa.Table, rows: pa.Table, run_id: int) -> pa.Table:
    """One ``prune_events`` row per changed or new entry: from its old status to its new one."""
    was = pa.concat_tables([
        pa.table({"doc_id": ch["doc_id"], "from_status": ch["status"]}),
        pa.table({"doc_id": new_rows["doc_id"], "from_status": pa.nulls(new_rows.num_rows, pa.string())}),
    ])
    return pa.table({
        "run_id": pa.array(np.full(rows.num_rows, run_id, np.int32)),
        "doc_id": rows["doc_id"], "from_status": was["from_status"], "to_status": rows["status"],
        "event_at": rows["changed_at"], "note": rows["note"],
    }, schema=EVENT_SCHEMA)


def queue_after(queue: pa.Table, change: QueueChange) -> pa.Table:
    """The queue as it will be after ``change`` is committed (for tonight's coverage)."""
    q = queue.select(QUEUE_SCHEMA.names).cast(QUEUE_SCHEMA)
    untouched = q.filter(pc.invert(pc.is_in(q["doc_id"], value_set=change.rows["doc_id"].combine_chunks())))
    return pa.concat_tables([untouched, change.rows])


# -- coverage ----------------------------------------------------------------------------------


def metadata_coverage(population: Mapping[str, int], pruned: Mapping[str, int]) -> tuple[int, int]:
    """(values with documents, values with at least one document not pruned)."""
    total = [k for k, n in population.items() if n > 0]
    covered = [k for k in total if population[k] - pruned.get(k, 0) > 0]
    return len(total), len(covered)


def embedding_coverage(emb: np.ndarray, labels: np.ndarray, pruned: np.ndarray) -> dict[str, float | int | None]:
    """Cluster coverage and mean cosine distance from each pruned row to its nearest kept row."""
    out: dict[str, float | int | None] = {"clusters_total": int(len(np.unique(labels))) if len(labels) else 0}
    kept = ~pruned
    out["clusters_covered"] = int(len(np.unique(labels[kept]))) if kept.any() else 0
    out["cluster_coverage"] = out["clusters_covered"] / out["clusters_total"] if out["clusters_total"] else None
    if not pruned.any() or not kept.any():
        out["mean_pruned_to_kept"] = None
        return out
    x = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    x = np.ascontiguousarray(x, dtype=np.float32)
    try:
        import faiss

        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x[kept])
        sims, _ = index.search(x[pruned], 1)
        best = sims[:, 0]
    except ImportError:  # faiss is an optional extra; numpy gives the same numbers, slower
        best = np.concatenate([(x[pruned][i:i + 4096] @ x[kept].T).max(axis=1)
                               for i in range(0, int(pruned.sum()), 4096)])
    out["mean_pruned_to_kept"] = float(np.mean(1.0 - np.clip(best, -1.0, 1.0)))
    return out
