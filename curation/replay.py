"""Targeted memory reactivation (TMR): prioritised replay sets over the tagged corpus.

A replay set tells a trainer which documents to rehearse tonight, how often, and with which
importance-sampling weight. It is drawn with replacement from the *pool*: every active
document that is neither pruned (``prune_queue`` status queued, quarantined or applied, or a
``prune`` decision tonight) nor a duplicate of a kept one.

Priority. Each available term is scaled to ``(0, 1]`` over the pool so that a loss z-score, a
gradient norm and a user's score weigh alike: ``surprise``, ``utility``, ``novelty`` and
``importance`` by percentile rank; ``rarity`` as the self-information ``log(N / n_s)`` of the
document's rarest stratum ``s``, divided by the pool's largest; ``protected`` as 1 or 0. Then

    s_i  = sum_k w_k t_ik / sum_k w_k        over the terms k that have a value for i
    p_i  = (eps + s_i) * R_i                 R_i: the retention factor below
    P(i) = f_g p_i^a / sum_{j in g} p_j^a    g: the old or the new documents; f_new = new_fraction
    w_i  = (N P(i))^-b / max_j (N P(j))^-b   N: pool size; max over the whole pool
                                             (1 for protected documents when protected_is_weight = false)

A document that no term scores (nothing has looked at it yet) gets the pool's highest ``s``,
as new transitions get the maximum priority in prioritized replay (Schaul et al. 2016), so
an unscored document is never starved. ``b`` anneals linearly from ``beta`` to ``beta_final``
over ``beta_anneal_sets`` sets; by default ``b = 0``, so every weight is 1 (the forgetting
benchmark's finding: the correction undoes the prioritisation that protects old memories). A term whose column does not exist contributes nothing; the
set records which terms it used.

Retention. A memory that is not reactivated fades: ``R_i = floor + (1 - floor) 2^(-d_i / h)``
with ``d_i`` the nights (runs) since the document was last replayed, last tagged salient, or
first seen, whichever is latest, and ``h`` the half-life in nights. A document is tagged
salient when its ``s_i`` is strictly above the pool's ``salient_quantile`` or it is protected.

Interleaving. ``new_fraction`` of the draws come from documents first seen tonight, the rest
from earlier nights (when one side is empty the other takes every draw).

Everything is a pure function of the pool, the stored state, the parameters and the seed
(the random stream is keyed by ``[seed, run_id]``), so a set can be rebuilt exactly.

Storage (created by :data:`DDL`): ``replay_sets`` (one row per set), ``replay_items`` (one row
per sampled document: priority, probability, weight, count), ``replay_state`` (per document:
last replayed / salient run, times replayed) and the view ``v_replay``. The night stage
(:mod:`stages.replay`) writes them in the run's transaction; :func:`build_from_catalog`
(``glia replay build``) takes the run lock and writes them in one transaction of its own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from glia.core.params import build_params
from glia.curation.rules import average_ranks
from glia.storage.catalog import TableWrite, query_rolled_back
from glia.storage.sql import identifier, registered, relation_columns, relations

# Priority terms, in the order they are reported. ``rarity`` and ``protected`` come from the
# ``decide`` stage (``strata``, ``protected``), rarity falls back to metadata columns.
TERMS = ("surprise", "utility", "novelty", "rarity", "importance", "protected")
RANKED_TERMS = ("surprise", "utility", "novelty", "importance")
DEFAULT_WEIGHTS: dict[str, float] = {
    "surprise": 1.0, "utility": 1.0, "novelty": 0.5, "rarity": 1.0, "importance": 1.0, "protected": 1.0,
}
PRUNED_STATUSES = ("queued", "quarantined", "applied")

POOL_SCHEMA = pa.schema([
    ("doc_id", pa.string()),
    ("shard_id", pa.string()),
    ("first_seen_run", pa.int64()),
    ("surprise", pa.float64()),
    ("utility", pa.float64()),
    ("novelty", pa.float64()),
    ("importance", pa.float64()),
    ("protected", pa.bool_()),
    ("strata", pa.list_(pa.string())),
])

STATE_SCHEMA = pa.schema([
    ("doc_id", pa.string()),
    ("last_replayed_run", pa.int32()),
    ("last_salient_run", pa.int32()),
    ("times_replayed", pa.int64()),
])

ITEMS_SCHEMA = pa.schema([
    ("set_id", pa.int32()),
    ("doc_id", pa.string()),
    ("is_new", pa.bool_()),
    ("score", pa.float64()),
    ("retention", pa.float64()),
    ("priority", pa.float64()),
    ("probability", pa.float64()),
    ("weight", pa.float64()),
    ("count", pa.int64()),
])

DDL = """
CREATE TABLE IF NOT EXISTS replay_sets (
    set_id        INTEGER PRIMARY KEY,
    run_id        INTEGER NOT NULL,      -- the night the set belongs to (retention counts from it)
    created_at    TIMESTAMPTZ NOT NULL,
    origin        VARCHAR NOT NULL,      -- flow (the replay stage) | cli (glia replay build) | api
    seed          BIGINT NOT NULL,
    size          BIGINT NOT NULL,       -- draws
    alpha         DOUBLE NOT NULL,
    beta          DOUBLE NOT NULL,       -- after annealing
    new_fraction  DOUBLE NOT NULL,
    n_pool        BIGINT NOT NULL,       -- eligible documents
    n_pool_new    BIGINT NOT NULL,
    n_items       BIGINT NOT NULL,       -- distinct documents drawn
    n_new_draws   BIGINT NOT NULL,
    n_unscored    BIGINT NOT NULL,       -- pool documents no term scored (given the top score)
    n_excluded    BIGINT NOT NULL,       -- pruned or duplicate documents left out
    terms         VARCHAR[],             -- priority terms that had data
    terms_missing VARCHAR[],             -- weighted terms without data (contributed nothing)
    rarity_source VARCHAR,               -- metadata columns (+strata: decide's protected strata) | NULL
    text_column   VARCHAR,
    id_column     VARCHAR,
    params        JSON
);
CREATE TABLE IF NOT EXISTS replay_items (
    set_id       INTEGER NOT NULL,
    doc_id       VARCHAR NOT NULL,
    is_new       BOOLEAN NOT NULL,       -- first seen in the set's run
    score        DOUBLE,                 -- s_i, the weighted term mean in (0, 1]
    retention    DOUBLE,                 -- R_i
    priority     DOUBLE NOT NULL,        -- p_i = (eps + s_i) * R_i
    probability  DOUBLE NOT NULL,        -- P(i) of one draw
    weight       DOUBLE NOT NULL,        -- importance-sampling weight, max over the pool = 1
    "count"      BIGINT NOT NULL,        -- draws of this document
    PRIMARY KEY (set_id, doc_id)
);
CREATE TABLE IF NOT EXISTS replay_state (
    doc_id             VARCHAR PRIMARY KEY,
    last_replayed_run  INTEGER,
    last_salient_run   INTEGER,
    times_replayed     BIGINT NOT NULL DEFAULT 0
);
CREATE OR REPLACE VIEW v_replay AS
    SELECT i.doc_id, i.set_id, s.run_id, i.weight, i."count", i.priority, i.probability, i.is_new,
           i.score, i.retention, d.source, d.shard_path, d."row", d.shard_id,
           s.set_id = (SELECT max(set_id) FROM replay_sets) AS latest
    FROM replay_items i JOIN replay_sets s USING (set_id) LEFT JOIN documents d USING (doc_id);
"""

# The schema of these tables (see storage.migrations.StageMigration); add a migration to change it.
MIGRATIONS: tuple[tuple[int, str, str], ...] = ((1, "replay_sets, replay_items, replay_state; v_replay", DDL),)


@dataclass(frozen=True)
class ReplayParams:
    """How a replay set is drawn (``[stages.replay]`` in the rules file; ``glia replay build`` flags).

    ``weights`` maps term -> weight (missing terms take :data:`DEFAULT_WEIGHTS`; 0 turns a term
    off; every weight 0 gives uniform replay). ``importance_column`` names a document or tag
    column, ``importance_sql`` a query returning ``doc_id, importance`` (run read-only).
    ``rarity_columns`` give the strata when the ``decide`` stage's ``strata`` are absent.
    ``record_state = false`` draws a what-if set that leaves retention state alone.
    """

    size: int = 1024
    alpha: float = 0.6
    # Importance-sampling exponent b, annealed linearly to ``beta_final`` (None: no annealing).
    # 0 (default) makes every weight 1: in bench/forgetting.py the IS correction, which pulls the
    # prioritised draws' gradient back towards uniform replay, cost forgetting on every night-1
    # stratum at equal budget (README, *Forgetting*). Schaul et al.'s 0.4 -> 1 gives an unbiased
    # loss over the pool instead, for a trainer that wants that.
    beta: float = 0.0
    beta_final: float | None = None
    beta_anneal_sets: int = 30
    eps: float = 0.01
    new_fraction: float = 0.5
    half_life_nights: float = 7.0
    retention_floor: float = 0.1
    salient_quantile: float = 0.9
    weights: Mapping[str, float] = field(default_factory=dict)
    importance_column: str = ""
    importance_sql: str = ""
    rarity_columns: tuple[str, ...] = ("label",)
    # Strata never replayed: evaluation text (the eval_set stratum) must not reach the trainer.
    exclude_strata: tuple[str, ...] = ("eval_set",)
    # False (default): protected documents keep weight 1 instead of (N P)^-b; as b -> 1 the IS
    # weight undoes the very upsampling that protects them (measured: bench/forgetting.py, README).
    protected_is_weight: bool = False
    exclude_duplicates: bool = True
    record_state: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.weights) - set(TERMS))
        if unknown:
            raise ValueError(f"replay weights: unknown term(s) {', '.join(unknown)}; terms are {', '.join(TERMS)}")
        if any(float(w) < 0 for w in self.weights.values()):
            raise ValueError("replay weights must be >= 0 (0 turns a term off)")
        if self.size < 1:
            raise ValueError(f"replay size must be >= 1 draw, got {self.size}")
        if not 0.0 <= self.alpha:
            raise ValueError(f"replay alpha must be >= 0 (0 = uniform), got {self.alpha}")
        if not (0.0 <= self.beta <= 1.0 and (self.beta_final is None or 0.0 <= self.beta_final <= 1.0)):
            raise ValueError("replay beta and beta_final must lie in [0, 1]")
        if not 0.0 <= self.new_fraction <= 1.0:
            raise ValueError(f"replay new_fraction must lie in [0, 1], got {self.new_fraction}")
        if self.eps <= 0 or self.half_life_nights <= 0 or not 0.0 <= self.retention_floor <= 1.0:
            raise ValueError("replay eps and half_life_nights must be > 0 and retention_floor in [0, 1]")
        if not 0.0 <= self.salient_quantile <= 1.0:
            raise ValueError("replay salient_quantile must lie in [0, 1]")
        if self.importance_column and self.importance_sql:
            raise ValueError("give either importance_column or importance_sql for replay, not both")
        if self.beta_anneal_sets < 1:
            raise ValueError("replay beta_anneal_sets must be >= 1")

    @classmethod
    def from_mapping(cls, params: Mapping[str, Any], where: str = "[stages.replay]") -> ReplayParams:
        """Build from a rules-file table (``core.params``: a ``ConfigError`` names a bad key)."""
        return build_params(cls, params, where)

    def weight_of(self, term: str) -> float:
        return float(self.weights.get(term, DEFAULT_WEIGHTS[term]))

    def beta_for(self, n_prior_sets: int) -> float:
        """``b`` for a set built after ``n_prior_sets`` others: linear from beta to beta_final."""
        if self.beta_final is None:
            return self.beta
        frac = min(1.0, n_prior_sets / self.beta_anneal_sets)
        return self.beta + (self.beta_final - self.beta) * frac

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["weights"] = {t: self.weight_of(t) for t in TERMS}
        d["rarity_columns"] = list(self.rarity_columns)
        return d


# -- the math (pure numpy) --------------------------------------------------------------------


def rank_scale(values: np.ndarray) -> np.ndarray:
    """Percentile rank in ``(0, 1]`` of each non-NaN value (ties share their mean rank); NaN stays NaN."""
    out = np.full(values.shape, np.nan)
    ok = ~np.isnan(values)
    if ok.any():
        out[ok] = average_ranks(values[ok]) / ok.sum()
    return out


def rarity_scores(strata: pa.Array) -> np.ndarray:
    """Self-information of each document's rarest stratum, ``log(N / n_s)``, divided by the
    largest in the pool (so in ``[0, 1]``); NaN for a document without strata. ``N`` counts the
    documents that have strata; a pool with a single stratum scores 0 everywhere."""
    n = len(strata)
    out = np.full(n, np.nan)
    if n == 0:
        return out
    lengths = pc.fill_null(pc.list_value_length(strata), 0).to_numpy(zero_copy_only=False)
    flat = pc.list_flatten(strata)
    if len(flat) == 0:
        return out
    parent = pc.list_parent_indices(strata).to_numpy()
    valid = pc.is_valid(flat).to_numpy(zero_copy_only=False)
    flat, parent = flat.filter(pa.array(valid)), parent[valid]
    # A stratum counts each document once, however often a list repeats it.
    pairs = pa.table({"p": parent, "s": flat}).group_by(["p", "s"]).aggregate([])
    counts = pairs.group_by("s").aggregate([("p", "count")])
    n_with = len(np.unique(pairs["p"].to_numpy()))
    freq = counts["p_count"].to_numpy()[pc.index_in(pairs["s"], value_set=counts["s"]).to_numpy()]
    info = np.log(n_with / freq)
    best = np.full(n, -np.inf)
    np.maximum.at(best, pairs["p"].to_numpy(), info)
    has = (lengths > 0) & np.isfinite(best)
    top = best[has].max() if has.any() else 0.0
    out[has] = best[has] / top if top > 0 else 0.0
    return out


def combine(term_values: Mapping[str, np.ndarray], weights: Mapping[str, float], n: int) -> tuple[np.ndarray, np.ndarray]:
    """``s_i``: the weighted mean of the terms that have a value for document i. Documents no term
    scores get the highest ``s`` in the pool (1 if none is scored). Returns ``(s, unscored mask)``."""
    num = np.zeros(n)
    den = np.zeros(n)
    for term, vals in term_values.items():
        w = float(weights.get(term, 0.0))
        if w <= 0:
            continue
        ok = ~np.isnan(vals)
        num[ok] += w * vals[ok]
        den[ok] += w
    unscored = den == 0
    s = np.divide(num, den, out=np.zeros(n), where=~unscored)
    s[unscored] = s[~unscored].max() if (~unscored).any() else 1.0
    return s, unscored


def retention_factor(run_id: int, first_seen_run: np.ndarray, last_replayed_run: np.ndarray,
                     last_salient_run: np.ndarray, half_life_nights: float, floor: float) -> np.ndarray:
    """``R = floor + (1 - floor) * 2^(-d / half_life)``, ``d`` = nights since the latest of first
    seen, last replayed and last tagged salient (missing runs count as never)."""
    ref = np.fmax(np.fmax(first_seen_run.astype(float), last_replayed_run.astype(float)), last_salient_run.astype(float))
    d = np.clip(run_id - np.nan_to_num(ref, nan=float(run_id)), 0.0, None)
    return floor + (1.0 - floor) * np.exp2(-d / half_life_nights)


def probabilities(priority: np.ndarray, alpha: float, is_new: np.ndarray, new_fraction: float) -> np.ndarray:
    """``P(i) = f_g p_i^a / sum_{j in g} p_j^a`` with ``g`` the new or old group of document i."""
    pa_ = np.power(priority, alpha)
    out = np.zeros_like(pa_)
    groups = [(is_new, new_fraction), (~is_new, 1.0 - new_fraction)]
    present = [g for g in groups if g[0].any()]
    if len(present) == 1:
        present = [(present[0][0], 1.0)]
    for mask, frac in present:
        out[mask] = frac * pa_[mask] / pa_[mask].sum()
    return out


def is_weights(prob: np.ndarray, beta: float) -> np.ndarray:
    """``w_i = (N P(i))^-b / max_j (N P(j))^-b`` over the documents with ``P > 0``."""
    n = len(prob)
    w = np.zeros_like(prob)
    ok = prob > 0
    w[ok] = np.power(n * prob[ok], -beta)
    return w / w[ok].max() if ok.any() else w


def draw_counts(prob: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """How often each document is drawn in ``size`` draws with replacement."""
    idx = rng.choice(len(prob), size=size, replace=True, p=prob / prob.sum())
    return np.bincount(idx, minlength=len(prob)).astype(np.int64)


# -- one set ------------------------------------------------------------------------------------


@dataclass
class Pool:
    """The documents a set may draw from (:data:`POOL_SCHEMA`) and what is known about them."""

    table: pa.Table
    run_id: int
    n_excluded: int = 0  # documents left out: pruned or duplicates
    rarity_source: str | None = None  # metadata columns, "+strata" with the decide stage's strata


@dataclass
class ReplaySet:
    """A built set: its catalog rows and the per-document arrays behind them."""

    set_row: dict[str, Any]
    items: pa.Table
    state_rows: pa.Table
    pool_ids: pa.Array  # the pool, sorted by doc_id; the arrays below follow this order
    score: np.ndarray
    retention: np.ndarray
    priority: np.ndarray
    probability: np.ndarray
    weight: np.ndarray
    unscored: np.ndarray

    def writes(self) -> list[TableWrite]:
        """The rows to commit: the set, its items, and the retention state (upserted)."""
        out = [TableWrite("replay_sets", pa.Table.from_pylist([self.set_row])),
               TableWrite("replay_items", self.items)]
        if self.state_rows.num_rows:
            out.append(TableWrite("replay_state", self.state_rows, key=("doc_id",)))
        return out


def term_values(t: pa.Table) -> dict[str, np.ndarray]:
    """Each term's values in ``[0, 1]`` (NaN where unknown) for the terms of pool table ``t``
    that have data."""
    out: dict[str, np.ndarray] = {}
    for term in RANKED_TERMS:
        vals = t[term].to_numpy(zero_copy_only=False).astype(float)
        if not np.isnan(vals).all():
            out[term] = rank_scale(vals)
    rar = rarity_scores(t["strata"].combine_chunks() if t.num_rows else pa.array([], pa.list_(pa.string())))
    if not np.isnan(rar).all():
        out["rarity"] = rar
    prot = t["protected"]
    if prot.null_count < len(prot):
        out["protected"] = np.where(pc.is_null(prot).to_numpy(zero_copy_only=False), np.nan,
                                    pc.fill_null(prot, False).to_numpy(zero_copy_only=False).astype(float))
    return out


def without_strata(table: pa.Table, strata: Sequence[str]) -> pa.Table:
    """``table`` less the documents whose ``strata`` list holds any of ``strata``."""
    if not strata or "strata" not in table.column_names or table.num_rows == 0:
        return table
    lists = table["strata"].combine_chunks()
    flat = pc.list_flatten(lists).cast(pa.string())
    hit = pc.fill_null(pc.is_in(flat, value_set=pa.array(list(strata), pa.string())), False)
    bad = np.asarray(pc.list_parent_indices(lists))[np.asarray(hit)]
    keep = np.ones(table.num_rows, bool)
    keep[bad] = False
    return table.filter(pa.array(keep))


def build_set(pool: Pool, state: pa.Table, params: ReplayParams, set_id: int, n_prior_sets: int,
              origin: str, text_column: str = "text", id_column: str = "id") -> ReplaySet:
    """Draw one replay set from ``pool`` (deterministic in ``params.seed`` and the run id).

    ``state`` holds the stored ``replay_state`` rows (:data:`STATE_SCHEMA`); documents absent
    from it were never replayed. Raises ``ValueError`` when the pool is empty.
    """
    table = without_strata(pool.table, params.exclude_strata).sort_by("doc_id")
    n = table.num_rows
    if n == 0:
        raise ValueError(f"nothing to replay for run {pool.run_id}: the pool is empty "
                         f"({pool.n_excluded} document(s) pruned or duplicates)")
    weights = {t: params.weight_of(t) for t in TERMS}
    values = term_values(table)
    used = [t for t in TERMS if t in values and weights[t] > 0]
    missing = [t for t in TERMS if t not in values and weights[t] > 0]
    score, unscored = combine({t: values[t] for t in used}, weights, n)

    ids = table["doc_id"].combine_chunks()
    idx = pc.index_in(ids, value_set=state["doc_id"]) if state.num_rows else pa.nulls(n, pa.int32())

    def prior(col: str) -> np.ndarray:
        if not state.num_rows:
            return np.full(n, np.nan)
        return pc.take(state[col], idx).to_numpy(zero_copy_only=False).astype(float)

    first = table["first_seen_run"].to_numpy(zero_copy_only=False).astype(float)
    last_rep, last_sal, times = prior("last_replayed_run"), prior("last_salient_run"), prior("times_replayed")
    run_id = pool.run_id
    retention = retention_factor(run_id, first, last_rep, last_sal, params.half_life_nights, params.retention_floor)
    priority = (params.eps + score) * retention
    is_new = first >= run_id
    prob = probabilities(priority, params.alpha, is_new, params.new_fraction)
    beta = params.beta_for(n_prior_sets)
    weight = is_weights(prob, beta)
    protected = pc.fill_null(table["protected"], False).to_numpy(zero_copy_only=False)
    if not params.protected_is_weight:
        weight = np.where(protected & (prob > 0), 1.0, weight)
    rng = np.random.default_rng([int(params.seed), int(run_id)])
    counts = draw_counts(prob, params.size, rng)

    drawn = counts > 0
    items = pa.table({
        "set_id": pa.array(np.full(int(drawn.sum()), set_id), pa.int32()),
        "doc_id": ids.filter(pa.array(drawn)),
        "is_new": pa.array(is_new[drawn]),
        "score": pa.array(score[drawn]), "retention": pa.array(retention[drawn]),
        "priority": pa.array(priority[drawn]), "probability": pa.array(prob[drawn]),
        "weight": pa.array(weight[drawn]), "count": pa.array(counts[drawn]),
    }, schema=ITEMS_SCHEMA)

    # Strictly above the quantile: with coarse terms (rarity, protected) most scores tie, and ">="
    # marked every tied document salient, which refreshed its retention every night (decay never ran).
    salient = ((score > np.quantile(score, params.salient_quantile)) & ~unscored) | protected
    touched = drawn | salient
    if params.record_state and touched.any():
        new_rep = np.where(drawn, run_id, last_rep)
        new_sal = np.where(salient, run_id, last_sal)
        state_rows = pa.table({
            "doc_id": ids.filter(pa.array(touched)),
            "last_replayed_run": pa.array(new_rep[touched], pa.float64(), mask=np.isnan(new_rep[touched])).cast(pa.int32()),
            "last_salient_run": pa.array(new_sal[touched], pa.float64(), mask=np.isnan(new_sal[touched])).cast(pa.int32()),
            "times_replayed": pa.array((np.nan_to_num(times) + counts)[touched].astype(np.int64)),
        }, schema=STATE_SCHEMA)
    else:
        state_rows = STATE_SCHEMA.empty_table()

    set_row = {
        "set_id": set_id, "run_id": run_id, "created_at": datetime.now(timezone.utc), "origin": origin,
        "seed": params.seed, "size": params.size, "alpha": params.alpha, "beta": beta,
        "new_fraction": params.new_fraction, "n_pool": n, "n_pool_new": int(is_new.sum()),
        "n_items": int(drawn.sum()), "n_new_draws": int(counts[is_new].sum()), "n_unscored": int(unscored.sum()),
        "n_excluded": pool.n_excluded, "terms": used, "terms_missing": missing,
        "rarity_source": pool.rarity_source if "rarity" in used else None,
        "text_column": text_column, "id_column": id_column, "params": json.dumps(params.to_dict(), sort_keys=True),
    }
    return ReplaySet(set_row, items, state_rows, ids, score, retention, priority, prob, weight, unscored)


# -- reading the catalog -------------------------------------------------------------------------




def _strata_expr(cols: Sequence[str], present: set[str]) -> tuple[str, str | None]:
    """SQL for each document's strata: its metadata ``col=value`` (as :func:`metadata_strata`)
    plus the decide stage's protected ``strata`` when that column exists."""
    use = [c for c in cols if c in present]
    parts = ", ".join(f"CASE WHEN {identifier(c)} IS NULL THEN NULL ELSE '{c}=' || CAST({identifier(c)} AS VARCHAR) END" for c in use)
    meta = f"list_filter([{parts}], lambda x: x IS NOT NULL)" if use else "CAST([] AS VARCHAR[])"
    source = rarity_label(use, "strata" in present)
    if "strata" in present:
        return f"list_concat({meta}, coalesce(CAST(strata AS VARCHAR[]), CAST([] AS VARCHAR[])))", source
    return (meta if use else "CAST(NULL AS VARCHAR[])"), source


def rarity_label(metadata_columns: Sequence[str], decide_strata: bool) -> str | None:
    """What the rarity term's strata came from, e.g. ``label+strata``."""
    parts = [*metadata_columns, *(["strata"] if decide_strata else [])]
    return "+".join(parts) or None


@dataclass
class CatalogState:
    """What a replay build reads from the catalog (read-only): the earlier documents with their
    term columns, the retention state, how many sets exist, and the user's importance query."""

    pool: Pool
    state: pa.Table
    n_sets: int
    next_set_id: int
    importance: pa.Table | None  # doc_id, importance from importance_sql
    pruned_ids: pa.Array  # ids the prune queue holds (excluded wherever they show up)

    @classmethod
    def read(cls, con: duckdb.DuckDBPyConnection, params: ReplayParams, run_id: int) -> CatalogState:
        """Read everything a build needs; documents first seen in ``run_id`` count as new."""
        rels = relations(con)
        importance = run_importance_sql(con, params.importance_sql) if params.importance_sql else None
        pruned = pa.array([], pa.string())
        if "prune_queue" in rels and {"doc_id", "status"} <= set(relation_columns(con, "prune_queue")):
            pruned = con.sql(
                "SELECT DISTINCT CAST(doc_id AS VARCHAR) AS doc_id FROM prune_queue WHERE status IN (SELECT unnest(?))",
                params=[list(PRUNED_STATUSES)]).to_arrow_table().column("doc_id").combine_chunks()
        pool = read_catalog_pool(con, params, run_id, rels, pruned, importance)
        state = STATE_SCHEMA.empty_table()
        n_sets, next_id = 0, 1
        if "replay_state" in rels:
            state = con.sql(
                "SELECT doc_id, last_replayed_run, last_salient_run, times_replayed FROM replay_state"
            ).to_arrow_table().cast(STATE_SCHEMA)
        if "replay_sets" in rels:
            n_sets, next_id = con.execute("SELECT count(*), coalesce(max(set_id), 0) + 1 FROM replay_sets").fetchall()[0]
        return cls(pool, state, int(n_sets), int(next_id), importance, pruned)


def run_importance_sql(con: duckdb.DuckDBPyConnection, sql: str) -> pa.Table:
    """Run the user's importance query inside a transaction that is rolled back, so it can
    read anything and change nothing. It must return ``doc_id`` and ``importance``."""
    try:
        table = query_rolled_back(con, sql)
    except duckdb.Error as exc:
        raise ValueError(f"replay importance_sql failed: {exc}; it must be a SELECT returning doc_id, importance") from exc
    if table is None:
        raise ValueError("replay importance_sql returned no rows: it must be a SELECT returning doc_id, importance")
    rel = table
    if not {"doc_id", "importance"} <= set(rel.column_names):
        raise ValueError(f"replay importance_sql returned columns {rel.column_names}; it must return doc_id and importance")
    return pa.table({"doc_id": pc.cast(rel["doc_id"], pa.string()), "importance": pc.cast(rel["importance"], pa.float64())})


def read_catalog_pool(con: duckdb.DuckDBPyConnection, params: ReplayParams, run_id: int, rels: set[str],
                      pruned: pa.Array, importance: pa.Table | None) -> Pool:
    """The active documents in the catalog that may be replayed, with their term columns
    (from ``v_documents``: every tag column joined by name)."""
    if "v_documents" not in rels:
        return Pool(POOL_SCHEMA.empty_table(), run_id)
    present = set(relation_columns(con, "v_documents"))
    sel = ["CAST(doc_id AS VARCHAR) AS doc_id", "shard_id", "CAST(first_seen_run AS BIGINT) AS first_seen_run"]
    for term in ("surprise", "utility", "novelty"):
        sel.append(f"CAST({term} AS DOUBLE) AS {term}" if term in present else f"CAST(NULL AS DOUBLE) AS {term}")
    col = params.importance_column
    sel.append(f"CAST({identifier(col)} AS DOUBLE) AS importance" if col and col in present else "CAST(NULL AS DOUBLE) AS importance")
    sel.append("CAST(protected AS BOOLEAN) AS protected" if "protected" in present else "CAST(NULL AS BOOLEAN) AS protected")
    strata, rarity_source = _strata_expr(params.rarity_columns, present)
    sel.append(f"{strata} AS strata")
    where = ["true"]
    if params.exclude_duplicates:
        where += [f"{c} IS NULL" for c in ("exact_dup_of", "near_dup_of") if c in present]
    if "prune_queue" not in rels and "action" in present:
        where.append("action IS DISTINCT FROM 'prune'")
    total = con.execute("SELECT count(*) FROM v_documents").fetchall()[0][0]
    where.append("doc_id NOT IN (SELECT doc_id FROM _replay_pruned)")
    with registered(con, "_replay_pruned", pa.table({"doc_id": pruned})):
        table = con.sql(f"SELECT {', '.join(sel)} FROM v_documents WHERE {' AND '.join(where)}").to_arrow_table()
    table = table.cast(POOL_SCHEMA)
    if importance is not None:
        table = attach(table, importance, ["importance"])
    return Pool(table, run_id, int(total) - table.num_rows, rarity_source)


def attach(pool: pa.Table, source: pa.Table, columns: Sequence[str]) -> pa.Table:
    """Fill ``columns`` of ``pool`` from ``source`` by ``doc_id`` where the pool has no value yet."""
    idx = pc.index_in(pool["doc_id"], value_set=pc.cast(source["doc_id"], pa.string()))
    for c in columns:
        if c not in source.column_names:
            continue
        target = pool.schema.field(c).type
        incoming = pc.take(source[c].cast(target), idx)
        pool = pool.set_column(pool.schema.get_field_index(c), c, pc.coalesce(pool[c], incoming))
    return pool


def metadata_strata(table: pa.Table, columns: Sequence[str]) -> tuple[pa.Array, str | None]:
    """A ``strata`` list per row from metadata columns, as ``col=value`` (nulls left out);
    the same strings :func:`_strata_expr` builds in SQL. Returns ``(strata, columns used)``."""
    use = [c for c in columns if c in table.column_names]
    n = table.num_rows
    if not use:
        return pa.nulls(n, pa.list_(pa.string())), None
    parts = [pc.binary_join_element_wise(f"{c}=", pc.cast(table[c], pa.string()), "") for c in use]
    # Row-major interleave of the k columns, then drop nulls and cut per row: no Python loop per row.
    values = pa.concat_arrays([p.combine_chunks() if isinstance(p, pa.ChunkedArray) else p for p in parts])
    order = np.arange(n * len(use)).reshape(len(use), n).T.ravel()
    values = values.take(pa.array(order))
    valid = pc.is_valid(values).to_numpy(zero_copy_only=False)
    per_row = valid.reshape(n, len(use)).sum(axis=1)
    offsets = np.concatenate([[0], np.cumsum(per_row)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), values.filter(pa.array(valid))), ",".join(use)


def concat_lists(a: pa.Array, b: pa.Array) -> pa.Array:
    """Row-wise concatenation of two list arrays of equal length (a null list counts as empty)."""
    n = len(a)
    flat = pa.concat_arrays([pc.list_flatten(a), pc.list_flatten(b)])
    parent = np.concatenate([pc.list_parent_indices(a).to_numpy(), pc.list_parent_indices(b).to_numpy()])
    order = np.argsort(parent, kind="stable")
    offsets = np.concatenate([[0], np.cumsum(np.bincount(parent, minlength=n))]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), flat.take(pa.array(order)))


def combine_pools(old: Pool, new: Pool) -> Pool:
    """Earlier documents (minus any re-delivered tonight) plus tonight's."""
    keep = pc.invert(pc.is_in(old.table["doc_id"], value_set=new.table["doc_id"]))
    sources = sorted({s for s in (old.rarity_source, new.rarity_source) if s})
    return Pool(pa.concat_tables([old.table.filter(keep), new.table]), new.run_id, old.n_excluded + new.n_excluded,
                "+".join(sources) or None)


# -- outside the flow: glia replay build / export ------------------------------------------------


def latest_run(con: duckdb.DuckDBPyConnection) -> int:
    row = con.execute("SELECT max(run_id) FROM runs WHERE status IN ('completed', 'nothing_new')").fetchall()[0]
    if row is None or row[0] is None:
        raise ValueError("no completed run in this database: run `glia run SHARDS --db ...` first")
    return int(row[0])


def _run_columns(con: duckdb.DuckDBPyConnection, run_id: int) -> tuple[str, str]:
    """The shard id and text column names the run read (from its stored config)."""
    row = con.execute("SELECT config FROM runs WHERE run_id = ?", [run_id]).fetchall()[0]
    try:
        cols = json.loads(row[0]).get("columns", {}) if row and row[0] else {}
    except ValueError:
        cols = {}
    return str(cols.get("text", "text")), str(cols.get("id", "id"))


def build_from_catalog(db_path: Path | str, params: ReplayParams, origin: str = "cli") -> dict[str, Any]:
    """Build a replay set from a database outside the nightly flow (``glia replay build``).

    Takes the run lock (so no night runs meanwhile), reads the catalog, and writes the set,
    its items and the retention state in one transaction. Returns the ``replay_sets`` row.
    Raises ``RunInProgressError`` / ``DatabaseBusyError`` when another process holds the database.
    """
    from glia.storage.catalog import Catalog
    from glia.storage.lock import RunLock

    db = Path(db_path)
    if not db.exists():
        raise FileNotFoundError(f"no Glia database at {db}; run `glia run SHARDS --db {db}` first")
    with RunLock(db):
        with Catalog(db) as cat:
            cat.migrate((), {"replay": MIGRATIONS})
            run_id = latest_run(cat.con)
            text_col, id_col = _run_columns(cat.con, run_id)
            st = CatalogState.read(cat.con, params, run_id)
            rs = build_set(st.pool, st.state, params, st.next_set_id, st.n_sets, origin, text_col, id_col)
            cat.apply_writes(rs.writes())
    return rs.set_row


def replay_set_row(con: duckdb.DuckDBPyConnection, db_path: Path | str, set_id: int | None,
                   if_none: str) -> dict[str, Any]:
    """The ``replay_sets`` row of ``set_id`` (default: the latest). Raises ``ValueError`` when
    there is none: "``db_path`` has no replay set" followed by ``if_none`` (what to do)."""
    try:
        sid = set_id if set_id is not None else con.execute("SELECT max(set_id) FROM replay_sets").fetchall()[0][0]
    except duckdb.CatalogException:
        sid = None
    if sid is None:
        raise ValueError(f"{db_path} has no replay set{if_none}")
    meta = con.sql("SELECT * FROM replay_sets WHERE set_id = ?", params=[sid]).to_arrow_table()
    if meta.num_rows == 0:
        raise ValueError(f"no replay set {sid} in {db_path}; see SELECT set_id, run_id FROM replay_sets")
    return meta.to_pylist()[0]


def export_set(db_path: Path | str, out: Path | str, set_id: int | None = None,
               redact_pii: str | None = None) -> tuple[int, int]:
    """Write one set (default: the latest) from ``v_replay`` to Parquet, with the set's row as
    file metadata (``glia.replay_set``). Opens the database read-only. Returns ``(set_id, rows)``.
    ``redact_pii``: a placeholder (``"<{kind}>"``); the export then also holds each document's
    ``text`` from its shard (the set's recorded text column) with PII replaced (``storage.redact``)."""
    from glia.storage.catalog import Catalog

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
