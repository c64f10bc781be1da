"""Cross-shard, cross-night duplicate resolution.

Inputs: tonight's ``exact`` and ``minhash`` attribute files (one per shard) and the committed
history (:class:`storage.history.History`). Outputs: the ``exact_dup`` and ``near_dup`` tags
per shard and tonight's history segments.

Survivor rule, the same whatever order shards arrive in: in every duplicate cluster the
document seen in the earliest run survives, ties broken by the smallest ``doc_id``. Tonight's
documents are processed sorted by ``doc_id``, bucket stars anchor on the smallest id, and
history candidates are ranked by shared bands then id, so nothing depends on file order.

Near-duplicate clusters are the connected components of verified pairs (estimated Jaccard
at least the threshold), extended through history: a history document brings its cluster
root, and roots that a later night joins are recorded as merges so the next night sees one
cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from glia.storage.history import History

_U64 = np.uint64

EXACT_DUP_SCHEMA = pa.schema(
    [("doc_id", pa.string()), ("exact_dup_of", pa.string()), ("exact_dup_count", pa.int64())]
)
NEAR_DUP_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("near_dup_of", pa.string()),
        ("near_dup_jaccard", pa.float32()),
        ("near_dup_match", pa.string()),
        ("near_dup_match_jaccard", pa.float32()),
        ("near_dup_cluster", pa.string()),
        ("near_dup_cluster_size", pa.int64()),
    ]
)


@dataclass(frozen=True)
class NearDup:
    """MinHash LSH parameters.

    A pair with true Jaccard ``s`` becomes a candidate with probability
    ``1 - (1 - s**rows)**bands`` (:meth:`candidate_probability`); the S-curve's midpoint is
    near ``(1/bands)**(1/rows)`` (0.42 for 32 x 4). Candidates are then kept only if their
    *estimated* Jaccard (share of equal signature values) reaches ``threshold``. With the
    default word 3-grams and 32 x 4 a pair at word-3-gram Jaccard 0.5 becomes a candidate
    with probability 0.873, at 0.6 with 0.988, at 0.7 with 0.9998, at 0.4 with 0.564 and at
    0.3 with 0.229 (those are then dropped by the 0.5 threshold).

    Measured (``bench/quality_near_dup.py``, edited copies of FOLDOC entries that no default
    was tuned on, see README "Near-duplicate quality"): this default and the previous one
    (word 5-grams, 16 x 7, 0.75, :data:`engine.reindex.LEGACY_NEAR_DUP`) are compared
    there, with every other setting tried. Changing ``ngram``, ``bands``, ``rows`` or
    ``seed`` changes the stored history's signatures: ``glia reindex`` rebuilds it.
    """

    bands: int = 32
    rows: int = 4
    ngram: int = 3
    seed: int = 1
    threshold: float = 0.5
    # Buckets larger than this link each member to the bucket's first document only
    # (star) instead of to every other member, so a boilerplate bucket stays linear.
    max_bucket: int = 64
    # At most this many history candidates per document (those sharing the most bands).
    max_history_candidates: int = 32

    def __post_init__(self) -> None:
        if self.bands < 1 or self.rows < 1 or not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"bands and rows must be >= 1 and 0 < threshold <= 1, got bands = {self.bands}, "
                             f"rows = {self.rows}, threshold = {self.threshold}")
        if self.ngram < 1 or self.max_bucket < 2 or self.max_history_candidates < 1:
            raise ValueError("ngram and max_history_candidates must be >= 1 and max_bucket >= 2")

    @property
    def num_perm(self) -> int:
        return self.bands * self.rows

    def candidate_probability(self, s: float) -> float:
        """Probability that a pair at true Jaccard ``s`` shares at least one LSH band."""
        return 1.0 - (1.0 - s**self.rows) ** self.bands


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """``(n, bands)`` uint64 keys: each band's ``rows`` signature values mixed into 64 bits."""
    n = sig.shape[0]
    s = sig[:, : bands * rows].reshape(n, bands, rows).astype(np.uint64)
    with np.errstate(over="ignore"):
        h = np.full((n, bands), _U64(0x27D4EB2F165667C5), dtype=np.uint64)
        for r in range(rows):
            h = (h ^ s[:, :, r]) * _U64(0x9E3779B185EBCA87)
            h = (h << _U64(27)) | (h >> _U64(37))
        h ^= h >> _U64(33)
        h *= _U64(0xC2B2AE3D27D4EB4F)
        h ^= h >> _U64(29)
    return h


def jaccard(a: np.ndarray, b: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Row-wise estimated Jaccard (share of equal MinHash values) of two signature matrices."""
    out = np.empty(a.shape[0], dtype=np.float32)
    for i in range(0, a.shape[0], chunk):
        out[i : i + chunk] = (a[i : i + chunk] == b[i : i + chunk]).mean(axis=1)
    return out


@dataclass
class Tonight:
    """Tonight's documents, sorted by doc_id."""

    doc_id: np.ndarray  # object array of str
    shard_id: np.ndarray  # object array of str
    text_hash: np.ndarray  # uint64
    sig: np.ndarray  # (n, num_perm) uint32; rows with has_sig False are undefined
    has_sig: np.ndarray  # bool
    first_run: np.ndarray  # int64: the run each document was first seen in (tonight's if new)

    @classmethod
    def from_tables(
        cls, exact: pa.Table, minhash: pa.Table, run_id: int, first_seen: dict[str, int] | None = None
    ) -> Tonight:
        """``exact`` has doc_id, shard_id, text_hash; ``minhash`` has doc_id, _minhash, for
        the same documents (ids are unique: prepare settles id conflicts first)."""
        ex = exact.take(pc.sort_indices(exact, [("doc_id", "ascending")]))
        mh = minhash.take(pc.sort_indices(minhash, [("doc_id", "ascending")]))
        if not ex.column("doc_id").equals(mh.column("doc_id")):
            raise ValueError("exact and minhash tags cover different documents; rerun to retag the shards")
        t = ex
        sigs = mh.column("_minhash").combine_chunks()
        has = pc.is_valid(sigs).to_numpy(zero_copy_only=False)
        width = sigs.type.list_size
        # Null slots of a fixed-size list still occupy `width` child values, so this aligns.
        vals = sigs.values.to_numpy(zero_copy_only=False)
        sig = vals.reshape(len(t), width)
        doc_ids = t.column("doc_id").to_pylist()
        first_seen = first_seen or {}
        return cls(
            doc_id=np.asarray(doc_ids, dtype=object),
            shard_id=np.asarray(t.column("shard_id").to_pylist(), dtype=object),
            text_hash=t.column("text_hash").to_numpy(),
            sig=sig,
            has_sig=has,
            first_run=np.array([first_seen.get(d, run_id) for d in doc_ids], dtype=np.int64),
        )


@dataclass
class DedupResult:
    exact: pa.Table  # EXACT_DUP_SCHEMA + shard_id
    near: pa.Table  # NEAR_DUP_SCHEMA + shard_id
    segments: dict[str, pa.Table]  # kind -> table for storage.history.write_segments
    n_exact_dups: int
    n_near_dups: int


def _tonight_pairs(keys: np.ndarray, idx: np.ndarray, max_bucket: int) -> np.ndarray:
    """Candidate pairs ``(i, j)``, ``i < j``, among tonight's documents that share a band key.

    ``keys`` is ``(len(idx), bands)``, ``idx`` ascending. A bucket of at most ``max_bucket``
    documents yields all its pairs; a bigger one (boilerplate) only links each member to its
    smallest ``idx``, which keeps the component without the quadratic pair count.
    """
    if len(idx) < 2:
        return np.empty((0, 2), np.int64)
    # Per band, a stable sort by key keeps each bucket's members in ascending idx order.
    members, new_bucket = [], []
    for b in range(keys.shape[1]):
        order = np.argsort(keys[:, b], kind="stable")
        k = keys[order, b]
        members.append(idx[order])
        new_bucket.append(np.r_[True, k[1:] != k[:-1]])
    member = np.concatenate(members).astype(np.int64)
    starts = np.flatnonzero(np.concatenate(new_bucket))
    sizes = np.diff(np.r_[starts, len(member)])

    parts = []
    for size in np.unique(sizes[(sizes >= 2) & (sizes <= max_bucket)]):
        first = starts[sizes == size][:, None]
        a, c = np.triu_indices(int(size), 1)
        parts.append(np.stack([member[first + a].ravel(), member[first + c].ravel()], axis=1))
    big, big_size = starts[sizes > max_bucket], sizes[sizes > max_bucket]
    if len(big):
        head = np.repeat(big, big_size - 1)
        rank = np.arange(len(head)) - np.repeat(np.cumsum(big_size - 1) - (big_size - 1), big_size - 1)
        parts.append(np.stack([member[head], member[head + 1 + rank]], axis=1))
    if not parts:
        return np.empty((0, 2), np.int64)
    pairs = np.concatenate(parts)
    span = np.int64(member.max()) + 1
    code = np.unique(pairs[:, 0] * span + pairs[:, 1])  # a pair shared by several bands once
    return np.stack([code // span, code % span], axis=1)


def resolve(tonight: Tonight, history: History, run_id: int, params: NearDup) -> DedupResult:
    """Resolve tonight's documents against each other and against history."""
    n = len(tonight.doc_id)
    ids = tonight.doc_id

    # -- exact duplicates -------------------------------------------------------------------
    first_run = tonight.first_run
    uniq, inverse, counts = np.unique(tonight.text_hash, return_inverse=True, return_counts=True)
    # Tonight's representative of each hash group: earliest first run, then smallest id
    # (rows are sorted by id, so the row index breaks ties).
    perm = np.lexsort((np.arange(n), first_run, inverse))
    starts = np.flatnonzero(np.r_[True, inverse[perm][1:] != inverse[perm][:-1]]) if n else np.empty(0, np.int64)
    rep_of_group = perm[starts]
    rep_pos = rep_of_group[inverse]

    hist = history.exact_matches(pa.table({"text_hash": pa.array(uniq, pa.uint64())}))
    h_first: dict[int, tuple[str, int]] = {}
    h_n: dict[int, int] = {}
    for hsh, run, doc, cnt in zip(
        hist["text_hash"].to_pylist(), hist["first_run"].to_pylist(), hist["first_doc"].to_pylist(), hist["n"].to_pylist()
    ):
        h_first[hsh] = (doc, run)
        h_n[hsh] = cnt
    group_in_hist = np.array([int(h) in h_first for h in uniq], dtype=bool)
    exact_count = (counts + np.array([h_n.get(int(h), 0) for h in uniq], dtype=np.int64))[inverse]
    # The group's survivor: the history copy unless tonight's representative was seen earlier.
    group_surv = ids[rep_of_group].copy()
    for g in np.flatnonzero(group_in_hist):
        doc, run = h_first[int(uniq[g])]
        r = rep_of_group[g]
        if (run, doc) < (int(first_run[r]), ids[r]):
            group_surv[g] = doc
    exact_survivor = group_surv[inverse]
    in_hist = group_in_hist[inverse]
    exact_dup_of = np.where(exact_survivor != ids, exact_survivor, None)

    # -- near duplicates --------------------------------------------------------------------
    nd = params
    sig = tonight.sig
    has = tonight.has_sig
    # Only documents that are the first of their exact group tonight and new to history
    # need LSH; the others are linked to that representative / history copy directly.
    query = has & (rep_pos == np.arange(n)) & ~in_hist
    q_idx = np.flatnonzero(query)
    keys_all = band_keys(sig[has], nd.bands, nd.rows) if has.any() else np.empty((0, nd.bands), np.uint64)
    key_of = np.full((n, nd.bands), 0, dtype=np.uint64)
    key_of[has] = keys_all
    tt = _tonight_pairs(key_of[q_idx], q_idx, nd.max_bucket)
    q_tbl = pa.table(
        {
            "band": np.tile(np.arange(nd.bands, dtype=np.uint8), len(q_idx)),
            "key": key_of[q_idx].reshape(-1),
            "idx": np.repeat(q_idx.astype(np.int64), nd.bands),
        }
    )
    th = history.lsh_candidates(q_tbl, nd.max_history_candidates)

    # History documents we need: LSH candidates and exact-history survivors (with sigs).
    cand_ids = th["doc_id"].to_pylist()
    exact_links = [(i, h_first[int(tonight.text_hash[i])][0]) for i in np.flatnonzero(in_hist & (rep_pos == np.arange(n)))]
    hdocs = history.documents(sorted(set(cand_ids) | {d for _, d in exact_links}))
    merges = history.merges()

    def resolve_root(c: str, run: int) -> tuple[str, int]:
        seen = set()
        while c in merges and c not in seen:
            seen.add(c)
            c, run = merges[c]
        return c, run

    h_ids = hdocs["doc_id"].to_pylist()
    h_run = hdocs["run_id"].to_pylist()
    h_sig = (
        np.asarray(hdocs["sig"].combine_chunks().values.to_numpy(zero_copy_only=False), np.uint32).reshape(len(h_ids), -1)
        if len(h_ids) else np.empty((0, sig.shape[1]), np.uint32)
    )
    h_root = [resolve_root(c, r) for c, r in zip(hdocs["cluster_id"].to_pylist(), hdocs["cluster_run"].to_pylist())]
    # A root that is one of tonight's documents (its shard was rewritten) is that document.
    tonight_pos = {d: i for i, d in enumerate(ids)}
    roots_needed = sorted({r for r, _ in h_root} - set(h_ids) - set(tonight_pos))
    # Nodes: 0..n-1 tonight, then history docs, then roots not among them.
    node_id = list(ids) + h_ids + roots_needed
    node_run = [int(r) for r in first_run] + list(h_run) + [0] * len(roots_needed)
    root_run = {r: run for r, run in h_root}
    for k, r in enumerate(roots_needed):
        node_run[n + len(h_ids) + k] = root_run[r]
    hpos = {d: n + k for k, d in enumerate(h_ids)}
    hpos.update({r: tonight_pos[r] for r, _ in h_root if r in tonight_pos})
    for k, r in enumerate(roots_needed):
        hpos[r] = n + len(h_ids) + k

    edges_a: list[np.ndarray] = []
    edges_b: list[np.ndarray] = []
    edge_j: list[np.ndarray] = []
    # verified tonight-tonight pairs
    if len(tt):
        j = jaccard(sig[tt[:, 0]], sig[tt[:, 1]])
        ok = j >= nd.threshold
        edges_a.append(tt[ok, 0]); edges_b.append(tt[ok, 1]); edge_j.append(j[ok])
    # verified tonight-history pairs
    if th.num_rows and len(h_ids):
        ti = th["idx"].to_numpy()
        hi = np.array([hpos[d] - n for d in th["doc_id"].to_pylist()], dtype=np.int64)
        j = jaccard(sig[ti], h_sig[hi])
        ok = j >= nd.threshold
        edges_a.append(ti[ok]); edges_b.append(hi[ok] + n); edge_j.append(j[ok])
    # exact copies: to tonight's representative, and representatives to their history copy
    dup_t = np.flatnonzero(rep_pos != np.arange(n))
    edges_a.append(dup_t); edges_b.append(rep_pos[dup_t]); edge_j.append(np.ones(len(dup_t), np.float32))
    if exact_links:
        ea = np.array([i for i, d in exact_links if d in hpos], dtype=np.int64)
        eb = np.array([hpos[d] for i, d in exact_links if d in hpos], dtype=np.int64)
        edges_a.append(ea); edges_b.append(eb); edge_j.append(np.ones(len(ea), np.float32))
    n_match_edges = sum(len(a) for a in edges_a)
    # history docs to their (resolved) cluster roots: structure, not matches
    ra = np.array([n + k for k, (r, _) in enumerate(h_root) if r != h_ids[k]], dtype=np.int64)
    rb = np.array([hpos[r] for k, (r, _) in enumerate(h_root) if r != h_ids[k]], dtype=np.int64)

    a = np.concatenate(edges_a + [ra]) if edges_a else ra
    b = np.concatenate(edges_b + [rb]) if edges_b else rb
    n_nodes = len(node_id)
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n_nodes, n_nodes))
    _, comp = connected_components(graph, directed=False)

    # survivor per component: smallest (run, doc_id). Python str objects sort by code point,
    # like sorted() on the tuples; the strings are sorted once, into integer ranks.
    node_ids = np.array(node_id, dtype=object)
    node_runs = np.asarray(node_run, dtype=np.int64)
    id_rank = np.empty(n_nodes, dtype=np.int64)
    id_rank[np.argsort(node_ids, kind="stable")] = np.arange(n_nodes)
    order = np.lexsort((id_rank, node_runs))
    comp_in_order = comp[order]
    _, first_in_comp = np.unique(comp_in_order, return_index=True)
    surv_of_comp = np.zeros(comp.max() + 1 if n_nodes else 0, dtype=np.int64)
    surv_of_comp[comp_in_order[first_in_comp]] = order[first_in_comp]
    comp_size_nodes = np.bincount(comp, minlength=comp.max() + 1 if n_nodes else 1)

    # cluster sizes: tonight members + every active history doc under the component's roots
    comp_roots: dict[int, set[str]] = {}
    for k, (r, _) in enumerate(h_root):
        comp_roots.setdefault(int(comp[n + k]), set()).add(r)
    raw_by_root: dict[str, list[str]] = {}
    for raw, (m, _) in merges.items():
        raw_by_root.setdefault(resolve_root(m, 0)[0], []).append(raw)
    all_raw = set()
    for roots in comp_roots.values():
        for r in roots:
            all_raw.add(r)
            all_raw.update(raw_by_root.get(r, []))
    raw_counts = history.cluster_counts(sorted(all_raw))
    tonight_in_comp = np.bincount(comp[:n], minlength=comp.max() + 1 if n_nodes else 1)

    def cluster_size(c: int) -> int:
        hist_n = 0
        for r in comp_roots.get(c, ()):
            hist_n += raw_counts.get(r, 0) + sum(raw_counts.get(x, 0) for x in raw_by_root.get(r, []))
        return int(tonight_in_comp[c]) + hist_n

    # best direct match per tonight doc: highest Jaccard, then smallest doc_id
    match = np.full(n, -1, dtype=np.int64)
    match_j = np.zeros(n, dtype=np.float32)
    if n_match_edges:
        ea, eb, ej = np.concatenate(edges_a), np.concatenate(edges_b), np.concatenate(edge_j)
        src, dst, jj = np.concatenate([ea, eb]), np.concatenate([eb, ea]), np.concatenate([ej, ej])
        mine = src < n
        src, dst, jj = src[mine], dst[mine], jj[mine]
        order = np.lexsort((id_rank[dst], -jj, src))
        src, dst, jj = src[order], dst[order], jj[order]
        first = np.ones(len(src), dtype=bool)
        first[1:] = src[1:] != src[:-1]
        match[src[first]] = dst[first]
        match_j[src[first]] = jj[first]

    rows = np.arange(n)
    surv = surv_of_comp[comp[:n]]  # each tonight document's survivor node
    seg_cluster, seg_cluster_run = node_ids[surv], node_runs[surv].astype(np.int32)
    # Tags only for documents in a cluster of two or more that have words or a direct match.
    tagged = (comp_size_nodes[comp[:n]] > 1) & (has | (match >= 0))
    cluster = np.where(tagged, seg_cluster, None)
    size_of_comp = np.zeros(len(surv_of_comp), dtype=np.int64)
    for c in np.unique(comp[:n][tagged]):  # one per cluster, not per document
        size_of_comp[c] = cluster_size(int(c))
    csize = np.where(tagged, size_of_comp[comp[:n]], 0)
    matched = tagged & (match >= 0)
    m_id = np.where(matched, node_ids[np.maximum(match, 0)], None)
    m_j = np.where(matched, match_j, np.float32(np.nan)).astype(np.float32)
    # Survivor's signature: tonight's if it has words, a history document's always, none for
    # a root that is only a name.
    surv_is_tonight = surv < n
    surv_has_sig = np.where(surv_is_tonight, has[np.minimum(surv, max(n - 1, 0))], surv < n + len(h_ids))
    dup = tagged & (surv != rows)
    near_of = np.where(dup, seg_cluster, None)
    near_j = np.full(n, np.nan, np.float32)
    both = dup & surv_has_sig & has
    for from_tonight in (True, False):
        sel = np.flatnonzero(both & (surv_is_tonight == from_tonight))
        if len(sel):
            other = sig[surv[sel]] if from_tonight else h_sig[surv[sel] - n]
            near_j[sel] = jaccard(sig[sel], other)
    near_j[dup & ~both & (surv_has_sig | (rep_pos != rows))] = 1.0

    # merges: history roots in a component whose survivor is someone else
    merge_rows = []
    for c, roots in comp_roots.items():
        s = int(surv_of_comp[c])
        for r in sorted(roots):
            if r != node_id[s]:
                merge_rows.append((r, node_id[s], node_run[s]))

    shard = pa.array(tonight.shard_id.tolist(), pa.string())
    id_arr = pa.array(ids.tolist(), pa.string())
    exact_tbl = pa.table(
        {"doc_id": id_arr, "exact_dup_of": pa.array(exact_dup_of.tolist(), pa.string()),
         "exact_dup_count": pa.array(exact_count), "shard_id": shard}
    )
    near_tbl = pa.table(
        {"doc_id": id_arr, "near_dup_of": pa.array(near_of.tolist(), pa.string()),
         "near_dup_jaccard": pa.array(near_j, pa.float32(), mask=np.isnan(near_j)),
         "near_dup_match": pa.array(m_id.tolist(), pa.string()),
         "near_dup_match_jaccard": pa.array(m_j, pa.float32(), mask=np.isnan(m_j)),
         "near_dup_cluster": pa.array(cluster.tolist(), pa.string()),
         "near_dup_cluster_size": pa.array(csize, pa.int64(), mask=csize == 0), "shard_id": shard}
    )
    run_col = pa.array(first_run.astype(np.int32))
    sig_rows = np.flatnonzero(has)
    segments = {
        "exact": pa.table({"text_hash": pa.array(tonight.text_hash, pa.uint64()), "doc_id": id_arr,
                           "shard_id": shard, "run_id": run_col}).sort_by("text_hash"),
        "signatures": pa.table(
            {"doc_id": id_arr.take(sig_rows), "shard_id": shard.take(sig_rows), "run_id": run_col.take(sig_rows),
             "cluster_id": pa.array(seg_cluster[sig_rows].tolist(), pa.string()),
             "cluster_run": pa.array(seg_cluster_run[sig_rows]),
             "sig": pa.FixedSizeListArray.from_arrays(pa.array(sig[sig_rows].reshape(-1), pa.uint32()), sig.shape[1])}
        ),
        "merges": pa.table({"cluster_id": pa.array([r[0] for r in merge_rows], pa.string()),
                            "merged_into": pa.array([r[1] for r in merge_rows], pa.string()),
                            "merged_run": pa.array([r[2] for r in merge_rows], pa.int32())}),
    }
    # LSH: every document with words that is not an exact copy of an earlier one.
    lsh_rows = np.flatnonzero(has & (exact_dup_of == None))  # noqa: E711 - elementwise on object array
    # Band-major, by key within a band (stable, so by row among equal keys): DuckDB's
    # row-group min/max on (band, key) then skips most of the file in a lookup.
    lsh_keys = key_of[lsh_rows]
    by_key = np.argsort(lsh_keys, axis=0, kind="stable")
    row_of = pa.array(lsh_rows[by_key].T.reshape(-1))
    segments["lsh"] = pa.table(
        {"band": np.repeat(np.arange(nd.bands, dtype=np.uint8), len(lsh_rows)),
         "key": np.take_along_axis(lsh_keys, by_key, axis=0).T.reshape(-1),
         "doc_id": id_arr.take(row_of), "shard_id": shard.take(row_of)}
    )
    return DedupResult(
        exact=exact_tbl, near=near_tbl, segments=segments,
        n_exact_dups=int(sum(x is not None for x in exact_dup_of)),
        n_near_dups=int(sum(x is not None for x in near_of)),
    )
