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

Storage (:mod:`storage.replay`: the tables and the catalog reads): ``replay_sets`` (one row
per set), ``replay_items`` (one row per sampled document: priority, probability, weight,
count), ``replay_state`` (per document: last replayed / salient run, times replayed) and the
view ``v_replay``. The night stage (:mod:`stages.replay`) writes them in the run's transaction;
``engine.replay.build_from_catalog`` (``glia replay build``) takes the run lock and writes them
in one transaction of its own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from glia.core.params import build_params
from glia.curation.rules import average_ranks
from glia.storage.catalog import TableWrite
from glia.storage.replay import ITEMS_SCHEMA, STATE_SCHEMA, ReplayCatalog

# Priority terms, in the order they are reported. ``rarity`` and ``protected`` come from the
# ``decide`` stage (``strata``, ``protected``), rarity falls back to metadata columns.
TERMS = ("surprise", "utility", "novelty", "rarity", "importance", "protected")
RANKED_TERMS = ("surprise", "utility", "novelty", "importance")
DEFAULT_WEIGHTS: dict[str, float] = {
    "surprise": 1.0, "utility": 1.0, "novelty": 0.5, "rarity": 1.0, "importance": 1.0, "protected": 1.0,
}
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
    # stratum at equal budget (docs/forgetting.md). Schaul et al.'s 0.4 -> 1 gives an unbiased
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
    # weight undoes the very upsampling that protects them (measured: bench/forgetting.py, docs/forgetting.md).
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


# -- pools ----------------------------------------------------------------------------------------


def pool_from_catalog(read: ReplayCatalog, run_id: int) -> Pool:
    """The catalog's documents (``storage.replay.read_replay_catalog``) as run ``run_id``'s
    pool, with the importance query's values attached."""
    table = read.pool
    if read.importance is not None:
        table = attach(table, read.importance, ["importance"])
    return Pool(table, run_id, read.n_excluded, read.rarity_source)


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
    the same strings ``storage.replay.strata_sql`` builds in SQL. Returns ``(strata, columns used)``."""
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
