"""Protected strata: documents pruning must never take, computed each night.

Three kinds, each giving rows ``(doc_id, stratum, reason)``:

- **Rarity by metadata**: a source or label whose share of the corpus falls below
  ``share_below`` (a share, or ``"qP"``: the P quantile of the shares of all values) and below
  the ceiling ``max_share`` is rare; all its documents get ``rare_source:<value>`` /
  ``rare_label:<value>``.
- **Rarity by embedding cluster**: k-means (scikit-learn, seeded) on the documents' embeddings;
  the ``rare`` smallest clusters whose share is below ``max_share`` are protected
  (``rare_cluster:<i>``). Fitting uses a deterministic sample of at most ``max_fit`` documents.
- **Explicit strata** from the user, named freely (``key_memory``, ``safety_critical``,
  ``eval_set``): an id list, an id file (one id per line, or Parquet/CSV with a ``doc_id`` or
  ``id`` column) and/or a SQL predicate evaluated by DuckDB over ``v_documents``-like rows.

Everything here is a function of Arrow tables and arrays; ``stages.decide`` gathers them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from glia.curation.rules import RuleError, Threshold, check_keys, fraction

STRATA_SCHEMA = pa.schema([("doc_id", pa.string()), ("stratum", pa.string()), ("reason", pa.string())])


def empty_strata() -> pa.Table:
    return STRATA_SCHEMA.empty_table()


def _count(raw: Mapping[str, Any], key: str, default: int, where: str, low: int = 0) -> int:
    v = raw.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise RuleError(f"{where}.{key}: expected an integer >= {low}, got {v!r}")
    return v


# Tag columns a rarity stratum may use besides the documents' own source and label:
# column -> the tagger output that writes it (``lang``: a minority language is protected).
TAG_RARITY: dict[str, str] = {"lang": "lang"}


@dataclass(frozen=True)
class Rarity:
    """Metadata columns whose rare values are protected."""

    columns: tuple[str, ...] = ("source", "label")
    share_below: Threshold = Threshold(quantile=0.25)
    max_share: float = 0.05

    @classmethod
    def from_config(cls, raw: Mapping[str, Any], where: str) -> Rarity:
        check_keys(raw, ("columns", "share_below", "max_share"), where)
        cols = raw.get("columns", list(cls.columns))
        allowed = ("source", "label", *TAG_RARITY)
        if not isinstance(cols, (list, tuple)) or not all(c in allowed for c in cols):
            raise RuleError(f"{where}.columns: expected a list drawn from {', '.join(map(repr, allowed))}, got {cols!r}")
        thr = Threshold.parse(raw.get("share_below", "q0.25"), f"{where}.share_below")
        if thr.quantile is None and not isinstance(thr.value, float):
            raise RuleError(f"{where}.share_below: expected a share (number) or \"qP\"")
        return cls(tuple(cols), thr, fraction(raw, "max_share", 0.05, where))


@dataclass(frozen=True)
class Clusters:
    """Embedding k-means whose rarest clusters are protected."""

    enabled: bool = True
    output: str = "embedding"
    column: str = "_embedding"
    k: int = 16
    rare: int = 1
    max_share: float = 0.05
    seed: int = 0
    max_fit: int = 20_000

    @classmethod
    def from_config(cls, raw: Mapping[str, Any], where: str) -> Clusters:
        check_keys(raw, [f.name for f in fields(cls)], where)
        enabled = raw.get("enabled", True)
        if not isinstance(enabled, bool):
            raise RuleError(f"{where}.enabled: expected true or false")
        for key in ("output", "column"):
            if not isinstance(raw.get(key, "x"), str):
                raise RuleError(f"{where}.{key}: expected a string")
        k = _count(raw, "k", 16, where, low=2)
        rare = _count(raw, "rare", 1, where)
        if rare >= k:
            raise RuleError(f"{where}.rare: must be smaller than k ({k}), got {rare}")
        return cls(enabled, raw.get("output", "embedding"), raw.get("column", "_embedding"), k, rare,
                   fraction(raw, "max_share", 0.05, where), _count(raw, "seed", 0, where),
                   _count(raw, "max_fit", 20_000, where, low=2))


@dataclass(frozen=True)
class Explicit:
    """A user stratum: ids, an id file and/or a SQL predicate (any that match protect)."""

    name: str
    ids: tuple[str, ...] = ()
    ids_file: str | None = None
    where: str | None = None

    @classmethod
    def from_config(cls, name: str, raw: Mapping[str, Any], where: str) -> Explicit:
        check_keys(raw, ("ids", "ids_file", "where"), where)
        ids = raw.get("ids", [])
        if not isinstance(ids, (list, tuple)) or not all(isinstance(i, str) for i in ids):
            raise RuleError(f"{where}.ids: expected a list of document ids (strings)")
        ids_file = raw.get("ids_file")
        if ids_file is not None and (not isinstance(ids_file, str) or not Path(ids_file).is_file()):
            raise RuleError(f"{where}.ids_file: {ids_file!r} is not a file (paths are relative to the working directory)")
        pred = raw.get("where")
        if pred is not None:
            if not isinstance(pred, str) or not pred.strip():
                raise RuleError(f"{where}.where: expected a SQL predicate, e.g. \"label = 'scripture'\"")
            try:
                stmts = duckdb.extract_statements(f"SELECT * FROM v_documents WHERE {pred}")
            except duckdb.Error as exc:
                raise RuleError(f"{where}.where: not a valid SQL predicate: {exc}") from None
            if len(stmts) != 1:
                raise RuleError(f"{where}.where: expected one predicate, not several statements")
        if not ids and ids_file is None and pred is None:
            raise RuleError(f"{where}: give ids, ids_file or where")
        return cls(name, tuple(ids), ids_file, pred)

    def id_set(self) -> list[str]:
        """The ids from ``ids`` and ``ids_file`` (read now, so the file may change between nights)."""
        out = list(self.ids)
        if self.ids_file:
            out += read_id_file(Path(self.ids_file))
        return out


def read_id_file(path: Path) -> list[str]:
    """Ids from a text file (one per line, ``#`` comments) or a Parquet/CSV file with a
    ``doc_id`` or ``id`` column."""
    if path.suffix in (".parquet", ".csv"):
        con = duckdb.connect()
        try:
            reader = "read_parquet" if path.suffix == ".parquet" else "read_csv_auto"
            rel = con.sql(f"SELECT * FROM {reader}($p)", params={"p": str(path)})
            col = next((c for c in ("doc_id", "id") if c in rel.columns), None)
            if col is None:
                raise RuleError(f"{path}: needs a doc_id or id column; has {', '.join(rel.columns)}")
            return [str(r[0]) for r in con.sql(f'SELECT DISTINCT CAST("{col}" AS VARCHAR) FROM {reader}($p) '
                                               f'WHERE "{col}" IS NOT NULL', params={"p": str(path)}).fetchall()]
        finally:
            con.close()
    lines = (ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines())
    return [ln for ln in lines if ln]


@dataclass(frozen=True)
class Protect:
    rarity: Rarity = field(default_factory=Rarity)
    clusters: Clusters = field(default_factory=Clusters)
    explicit: tuple[Explicit, ...] = ()

    @classmethod
    def from_config(cls, raw: Mapping[str, Any] | None, where: str = "[stages.decide.protect]") -> Protect:
        raw = dict(raw or {})
        check_keys(raw, ("rarity", "clusters", "explicit"), where)
        explicit = raw.get("explicit", {})
        if not isinstance(explicit, Mapping):
            raise RuleError(f"{where}.explicit: expected tables [stages.decide.protect.explicit.<name>]")
        ex = tuple(Explicit.from_config(name, v, f"{where}.explicit.{name}") for name, v in sorted(explicit.items()))
        return cls(Rarity.from_config(raw.get("rarity", {}), f"{where}.rarity"),
                   Clusters.from_config(raw.get("clusters", {}), f"{where}.clusters"), ex)

    @property
    def predicates(self) -> list[Explicit]:
        return [e for e in self.explicit if e.where]


# -- rarity by metadata -----------------------------------------------------------------------


def rare_values(counts: Mapping[str, int], share_below: Threshold, max_share: float) -> dict[str, str]:
    """Values whose share of ``sum(counts)`` is below the threshold and the ceiling -> reason."""
    total = sum(counts.values())
    if total == 0 or len(counts) < 2:
        return {}  # one value is the whole corpus: nothing is a minority
    keys = sorted(counts)
    shares = np.array([counts[k] / total for k in keys])
    if share_below.quantile is not None:
        thr = float(np.quantile(shares, share_below.quantile))
        shown = f"q{share_below.quantile:g} of shares ({thr:.2%})"
    else:
        thr = float(share_below.value)
        shown = f"{thr:.2%}"
    limit = min(thr, max_share)
    return {k: f"share {s:.2%} < {shown}, ceiling {max_share:.0%}" for k, s in zip(keys, shares) if s < limit and s < max_share}


def rarity_strata(docs: pa.Table, population: Mapping[str, Mapping[str, int]], cfg: Rarity) -> pa.Table:
    """Rows for the documents in ``docs`` whose ``source``/``label`` is rare in ``population``
    (column -> value -> count over the whole active corpus, tonight included)."""
    parts = [empty_strata()]
    for col in cfg.columns:
        if col not in docs.column_names:
            continue
        rare = rare_values(population.get(col, {}), cfg.share_below, cfg.max_share)
        if not rare:
            continue
        vals = docs[col].combine_chunks().cast(pa.string())
        mask = pc.is_in(vals, value_set=pa.array(sorted(rare), pa.string()))
        mask = pc.fill_null(mask, False)
        hit = vals.filter(mask)
        keys = pa.array(sorted(rare), pa.string())
        reasons = pa.array([rare[k] for k in keys.to_pylist()], pa.string()).take(pc.index_in(hit, value_set=keys))
        parts.append(pa.table({
            "doc_id": docs["doc_id"].combine_chunks().cast(pa.string()).filter(mask),
            "stratum": pc.binary_join_element_wise(f"rare_{col}:", hit, ""),
            "reason": reasons,
        }))
    return pa.concat_tables(parts)


# -- rarity by embedding cluster --------------------------------------------------------------


@dataclass
class ClusterModel:
    centroids: np.ndarray  # (k, d) float32
    shares: np.ndarray  # (k,) share of the fitted sample in each cluster
    n_fit: int

    def assign(self, emb: np.ndarray) -> np.ndarray:
        """Nearest centroid (squared L2) for each row."""
        if emb.shape[0] == 0:
            return np.zeros(0, np.int64)
        d = (emb * emb).sum(1, keepdims=True) - 2 * emb @ self.centroids.T + (self.centroids ** 2).sum(1)[None, :]
        return np.argmin(d, axis=1)

    def rare_clusters(self, rare: int, max_share: float) -> list[int]:
        """The ``rare`` smallest clusters (ties by index) whose share is under ``max_share``."""
        order = np.lexsort((np.arange(len(self.shares)), self.shares))
        return [int(c) for c in order[:rare] if self.shares[c] < max_share]


def fit_clusters(emb: np.ndarray, k: int, seed: int) -> ClusterModel | None:
    """k-means on ``emb`` (rows in a deterministic order); None when there are too few rows
    (fewer than ``2 k``) to call any cluster rare."""
    from sklearn.cluster import KMeans

    n = emb.shape[0]
    if n < 2 * k:
        return None
    km = KMeans(n_clusters=k, n_init=1, random_state=seed, max_iter=100)
    labels = km.fit_predict(emb.astype(np.float32))
    shares = np.bincount(labels, minlength=k) / n
    return ClusterModel(km.cluster_centers_.astype(np.float32), shares, n)


def cluster_strata(model: ClusterModel, doc_ids: pa.Array | Sequence[str], emb: np.ndarray, cfg: Clusters) -> pa.Table:
    """Rows for documents that fall into the rarest clusters."""
    rare = model.rare_clusters(cfg.rare, cfg.max_share)
    if not rare or len(doc_ids) == 0:
        return empty_strata()
    lab = model.assign(emb)
    mask = np.isin(lab, rare)
    labs = pa.array(lab[mask])
    k = len(model.shares)
    names = pa.array([f"rare_cluster:{c}" for c in range(k)], pa.string())
    reasons = pa.array([f"embedding cluster {c} of {k} holds {model.shares[c]:.2%} of {model.n_fit} documents"
                        for c in range(k)], pa.string())
    return pa.table({
        "doc_id": pa.array(doc_ids, pa.string()).filter(pa.array(mask)),
        "stratum": names.take(labs),
        "reason": reasons.take(labs),
    })


def sample_mask(doc_ids: pa.Array | pa.ChunkedArray, fraction: float) -> np.ndarray:
    """A deterministic sample by a hash of the id (the same ids are chosen whatever the order)."""
    if fraction >= 1.0:
        return np.ones(len(doc_ids), bool)
    con = duckdb.connect()
    try:
        con.register("ids", pa.table({"doc_id": doc_ids}))
        return con.sql(f"SELECT {sample_predicate(fraction)} FROM ids").to_arrow_table().column(0).to_numpy(
            zero_copy_only=False).astype(bool)
    finally:
        con.close()


def sample_predicate(fraction: float) -> str:
    """SQL that is true for a ``fraction`` of ``doc_id`` values, chosen by a hash of the id."""
    return f"hash(doc_id) % 1000003 < {int(fraction * 1_000_003)}"


def embedding_matrix(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(rows with an embedding as float32 (n, d), mask of those rows) from a fixed-size or
    variable list column."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    valid = pc.is_valid(arr).to_numpy(zero_copy_only=False).astype(bool)
    arr = arr.filter(pa.array(valid))
    if len(arr) == 0:
        return np.zeros((0, 0), np.float32), valid
    if pa.types.is_fixed_size_list(arr.type):
        width = arr.type.list_size
    else:
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        width = int(lengths[0])
        if (lengths != width).any():
            raise ValueError("embeddings have different lengths")
    vals = pc.list_flatten(arr).to_numpy(zero_copy_only=False).astype(np.float32)
    return vals.reshape(len(arr), width), valid


# -- explicit strata ---------------------------------------------------------------------------


def explicit_id_strata(doc_ids: pa.Array | pa.ChunkedArray, strata: Sequence[Explicit]) -> pa.Table:
    """Rows for documents named by the id lists / id files."""
    parts = [empty_strata()]
    ids = doc_ids.combine_chunks() if isinstance(doc_ids, pa.ChunkedArray) else doc_ids
    for s in strata:
        wanted = s.id_set()
        if not wanted:
            continue
        hit = ids.filter(pc.is_in(ids, value_set=pa.array(wanted, pa.string())))
        src = "id list" if not s.ids_file else (f"id file {s.ids_file}" if not s.ids else f"id list + {s.ids_file}")
        parts.append(pa.table({"doc_id": hit.cast(pa.string()), "stratum": pa.repeat(pa.scalar(s.name), len(hit)),
                               "reason": pa.repeat(pa.scalar(src), len(hit))}))
    return pa.concat_tables(parts)


def explicit_where_strata(con: duckdb.DuckDBPyConnection, relation: str, strata: Sequence[Explicit],
                          doc_filter: str = "") -> pa.Table:
    """Rows for documents of ``relation`` (a table or view with ``doc_id``) matching each
    stratum's predicate. Raises ``ValueError`` naming the stratum if a predicate fails to bind
    (e.g. a column whose tagger is not configured)."""
    parts = [empty_strata()]
    for s in strata:
        if not s.where:
            continue
        sql = (f"SELECT CAST(doc_id AS VARCHAR) AS doc_id FROM {relation} WHERE ({s.where})"
               + (f" AND {doc_filter}" if doc_filter else ""))
        try:
            hit = con.sql(sql).to_arrow_table()
        except duckdb.Error as exc:
            raise ValueError(f"[stages.decide.protect.explicit.{s.name}] where = {s.where!r} failed over the documents "
                             f"view: {exc}. Name columns of v_documents (metadata and enabled tags).") from None
        n = hit.num_rows
        parts.append(pa.table({"doc_id": hit["doc_id"].cast(pa.string()), "stratum": pa.repeat(pa.scalar(s.name), n),
                               "reason": pa.repeat(pa.scalar(f"where {s.where}"), n)}))
    return pa.concat_tables(parts)


def strata_lists(doc_ids: pa.Array | pa.ChunkedArray, rows: pa.Table) -> pa.ListArray:
    """Per document of ``doc_ids`` (in that order): the sorted, distinct strata in ``rows``."""
    ids = doc_ids.combine_chunks() if isinstance(doc_ids, pa.ChunkedArray) else doc_ids
    n = len(ids)
    if rows.num_rows == 0:
        return pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, np.int32)), pa.array([], pa.string()))
    r = rows.group_by(["doc_id", "stratum"]).aggregate([]).sort_by([("doc_id", "ascending"), ("stratum", "ascending")])
    pos_f = pc.fill_null(pc.index_in(r["doc_id"], value_set=ids), -1).to_numpy(zero_copy_only=False).astype(np.int64)
    keep = pos_f >= 0
    pos_i = pos_f[keep]
    strata = r["stratum"].combine_chunks().filter(pa.array(keep))
    order = np.argsort(pos_i, kind="stable")
    counts = np.bincount(pos_i, minlength=n)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), strata.take(pa.array(order)))
