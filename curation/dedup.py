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

from collections.abc import Callable
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
    was tuned on, see docs/quality.md, "Near-duplicate quality"): this default and the previous one
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
    s = sig[:, : bands * rows].reshape(n, bands, rows)
    if s.dtype != np.uint32:  # what MinHash gives; anything else is mixed as its 64 bits
        s = s.astype(np.uint64)
    h = np.full((n, bands), _U64(0x27D4EB2F165667C5), dtype=np.uint64)
    tmp = np.empty_like(h)
    with np.errstate(over="ignore"):
        # In place: a fresh (n, bands) array per operation costs more than the operation.
        for r in range(rows):
            np.bitwise_xor(h, s[:, :, r], out=h, casting="unsafe")
            np.multiply(h, _U64(0x9E3779B185EBCA87), out=h)
            np.right_shift(h, _U64(37), out=tmp)
            np.left_shift(h, _U64(27), out=h)
            np.bitwise_or(h, tmp, out=h)
        for shift, prime in ((33, _U64(0xC2B2AE3D27D4EB4F)), (29, None)):
            np.right_shift(h, _U64(shift), out=tmp)
            np.bitwise_xor(h, tmp, out=h)
            if prime is not None:
                np.multiply(h, prime, out=h)
    return h


def _band_runs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(order, new_key)``, both ``(bands, n)``: each band's rows grouped by key (numpy's
    unstable sort of 64-bit values, which is vectorised; the order inside a group is arbitrary)
    and where in that order a new key starts."""
    by_band = np.ascontiguousarray(keys.T)
    order = np.argsort(by_band, axis=1)
    ordered = np.take_along_axis(by_band, order, axis=1)
    new_key = np.ones(by_band.shape, dtype=bool)
    np.not_equal(ordered[:, 1:], ordered[:, :-1], out=new_key[:, 1:])
    return order, new_key


def band_order(keys: np.ndarray) -> np.ndarray:
    """``(bands, n)``: for each band, the rows in order of their key, rows with equal keys in
    row order. The same as a stable argsort of each column of ``keys`` (``(n, bands)``), in
    about a third of the time: the stable sort is not vectorised, so ties (near copies share
    band keys) are put in row order after an unstable one (:func:`_band_runs`)."""
    order, new_key = _band_runs(keys)
    if new_key.all():
        return order
    # Sort (run of equal keys, row) pairs, which are unique: the runs stay in place and each
    # run's rows come out ascending.
    run = np.cumsum(new_key, axis=1, dtype=np.int64)
    run *= keys.shape[0]
    run += order
    return np.take_along_axis(order, np.argsort(run, axis=1), axis=1)


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
        # A text without words has a null signature whose child values may be null too: zeros
        # keep the matrix uint32 (those rows are never read, has_sig is False for them).
        vals = sigs.values.fill_null(0).to_numpy(zero_copy_only=False)
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
    # Per band, rows grouped by key. The order inside a bucket does not matter (pairs are
    # written smaller idx first, a big bucket's hub is its smallest idx), so the sort need
    # not be stable, which is what makes it fast.
    order, new_bucket = _band_runs(keys)
    member = idx.astype(np.int64)[order.reshape(-1)]
    starts = np.flatnonzero(new_bucket.reshape(-1))
    sizes = np.diff(np.r_[starts, len(member)])

    parts = []
    for size in np.unique(sizes[(sizes >= 2) & (sizes <= max_bucket)]):
        first = starts[sizes == size][:, None]
        a, c = np.triu_indices(int(size), 1)
        one, other = member[first + a].ravel(), member[first + c].ravel()
        parts.append(np.stack([np.minimum(one, other), np.maximum(one, other)], axis=1))
    big = np.flatnonzero(sizes > max_bucket)
    if len(big):
        big_size = sizes[big]
        within = np.arange(big_size.sum()) - np.repeat(np.cumsum(big_size) - big_size, big_size)
        slot = np.repeat(starts[big], big_size) + within
        hub = np.repeat(np.minimum.reduceat(member, starts)[big], big_size)
        spoke = member[slot]
        parts.append(np.stack([hub, spoke], axis=1)[spoke != hub])
    if not parts:
        return np.empty((0, 2), np.int64)
    pairs = np.concatenate(parts)
    span = np.int64(member.max()) + 1
    code = np.unique(pairs[:, 0] * span + pairs[:, 1])  # a pair shared by several bands once
    return np.stack([code // span, code % span], axis=1)


def resolve(tonight: Tonight, history: History, run_id: int, params: NearDup) -> DedupResult:
    """Resolve tonight's documents against each other and against history: the five steps
    below, each a function of its own (tests/test_dedup_steps.py runs them one by one)."""
    exact = exact_groups(tonight, history)
    cand = lsh_candidates(tonight, exact, history, params)
    graph = components(tonight, exact, cand, history, params)
    clusters = clusters_and_matches(tonight, graph, history)
    return survivors(tonight, exact, cand, graph, clusters, params)


# -- 1. exact groups ----------------------------------------------------------------------------


@dataclass
class ExactGroups:
    """Tonight's documents grouped by text hash, each group traced to its earliest copy."""

    rep_pos: np.ndarray  # each row's representative tonight: earliest first run, then smallest id
    in_hist: np.ndarray  # bool: the row's text has a copy in history
    hist_first: dict[int, tuple[str, int]]  # text hash -> history's earliest (doc_id, run) of it
    dup_of: np.ndarray  # object: the group's survivor id, None for the survivor itself
    count: np.ndarray  # int64: copies of the row's text, tonight's plus history's


def exact_groups(tonight: Tonight, history: History) -> ExactGroups:
    """Group tonight's rows by text hash and find each group's survivor: the history copy
    unless tonight's representative was seen earlier."""
    n = len(tonight.doc_id)
    ids = tonight.doc_id
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
    return ExactGroups(rep_pos, in_hist, h_first, exact_dup_of, exact_count)


# -- 2. tonight's LSH candidates ----------------------------------------------------------------


@dataclass
class Candidates:
    """Pairs that share an LSH band: among tonight's documents, and with history documents."""

    key_of: np.ndarray  # (n, bands) uint64 band keys of every row (0 for rows without words)
    tonight_pairs: np.ndarray  # (k, 2) rows i < j of tonight
    history: pa.Table  # idx (tonight's row), doc_id (history): the best-sharing candidates


def lsh_candidates(tonight: Tonight, exact: ExactGroups, history: History, params: NearDup) -> Candidates:
    """Band every signature; query only the rows that are the first of their exact group
    tonight and new to history (the others are linked to that representative or history copy
    directly), against each other and against history's LSH segments."""
    nd = params
    n = len(tonight.doc_id)
    sig = tonight.sig
    has = tonight.has_sig
    query = has & (exact.rep_pos == np.arange(n)) & ~exact.in_hist
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
    return Candidates(key_of, tt, th)


# -- 3. connected components through history ----------------------------------------------------


@dataclass
class Graph:
    """Tonight's documents, the history documents they touch and those documents' cluster roots
    as one graph; its connected components are the near-duplicate clusters.

    Nodes: ``0..n-1`` tonight's rows, then the history documents, then roots that are only a
    name (their documents are gone or were never fetched). Edges: verified matches (tonight's
    pairs and tonight-history pairs at least ``threshold``, exact copies) and, as structure only,
    each history document to its cluster's root.
    """

    node_id: list[str]
    node_run: list[int]
    h_ids: list[str]  # the history documents, nodes n .. n + len(h_ids) - 1
    h_sig: np.ndarray  # their signatures
    h_root: list[tuple[str, int]]  # each history document's resolved cluster root and its run
    merges: dict[str, tuple[str, int]]  # the history's recorded merges
    match: tuple[np.ndarray, np.ndarray, np.ndarray]  # verified match edges: a, b, Jaccard
    comp: np.ndarray  # the component of every node


def resolve_root(merges: dict[str, tuple[str, int]], c: str, run: int) -> tuple[str, int]:
    """The cluster ``c`` (of ``run``) ended up in after every recorded merge."""
    seen = set()
    while c in merges and c not in seen:
        seen.add(c)
        c, run = merges[c]
    return c, run


def components(tonight: Tonight, exact: ExactGroups, cand: Candidates, history: History, params: NearDup) -> Graph:
    """Fetch the history documents the candidates and exact links name, lay out the graph's
    nodes, verify the candidate pairs and take the connected components."""
    n = len(tonight.doc_id)
    rep = exact.rep_pos == np.arange(n)
    # History documents we need: LSH candidates and exact-history survivors (with sigs).
    exact_links = [(i, exact.hist_first[int(tonight.text_hash[i])][0]) for i in np.flatnonzero(exact.in_hist & rep)]
    hdocs = history.documents(sorted(set(cand.history["doc_id"].to_pylist()) | {d for _, d in exact_links}))
    merges = history.merges()
    h_ids = hdocs["doc_id"].to_pylist()
    h_sig = (
        np.asarray(hdocs["sig"].combine_chunks().values.to_numpy(zero_copy_only=False), np.uint32).reshape(len(h_ids), -1)
        if len(h_ids) else np.empty((0, tonight.sig.shape[1]), np.uint32)
    )
    h_root = [resolve_root(merges, c, r) for c, r in zip(hdocs["cluster_id"].to_pylist(), hdocs["cluster_run"].to_pylist())]
    node_id, node_run, hpos = _nodes(tonight, h_ids, hdocs["run_id"].to_pylist(), h_root)
    edges_a, edges_b, edge_j = _match_edges(tonight, exact, cand, h_ids, h_sig, hpos, exact_links, params)
    # history docs to their (resolved) cluster roots: structure, not matches
    ra = np.array([n + k for k, (r, _) in enumerate(h_root) if r != h_ids[k]], dtype=np.int64)
    rb = np.array([hpos[r] for k, (r, _) in enumerate(h_root) if r != h_ids[k]], dtype=np.int64)
    a = np.concatenate(edges_a + [ra]) if edges_a else ra
    b = np.concatenate(edges_b + [rb]) if edges_b else rb
    n_nodes = len(node_id)
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n_nodes, n_nodes))
    _, comp = connected_components(graph, directed=False)
    match = (np.concatenate(edges_a), np.concatenate(edges_b), np.concatenate(edge_j))
    return Graph(node_id, node_run, h_ids, h_sig, h_root, merges, match, comp)


def _nodes(tonight: Tonight, h_ids: list[str], h_run: list[int],
           h_root: list[tuple[str, int]]) -> tuple[list[str], list[int], dict[str, int]]:
    """The graph's node ids and runs, and the node of every history document and root."""
    ids = tonight.doc_id
    n = len(ids)
    # A root that is one of tonight's documents (its shard was rewritten) is that document.
    tonight_pos = {d: i for i, d in enumerate(ids)}
    roots_needed = sorted({r for r, _ in h_root} - set(h_ids) - set(tonight_pos))
    # Nodes: 0..n-1 tonight, then history docs, then roots not among them.
    node_id = list(ids) + h_ids + roots_needed
    node_run = [int(r) for r in tonight.first_run] + list(h_run) + [0] * len(roots_needed)
    root_run = {r: run for r, run in h_root}
    for k, r in enumerate(roots_needed):
        node_run[n + len(h_ids) + k] = root_run[r]
    hpos = {d: n + k for k, d in enumerate(h_ids)}
    hpos.update({r: tonight_pos[r] for r, _ in h_root if r in tonight_pos})
    for k, r in enumerate(roots_needed):
        hpos[r] = n + len(h_ids) + k
    return node_id, node_run, hpos


def _match_edges(tonight: Tonight, exact: ExactGroups, cand: Candidates, h_ids: list[str], h_sig: np.ndarray,
                 hpos: dict[str, int], exact_links: list[tuple[int, str]],
                 params: NearDup) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Verified matches: candidate pairs at least ``threshold``, and exact copies (Jaccard 1)."""
    n = len(tonight.doc_id)
    sig = tonight.sig
    tt, th = cand.tonight_pairs, cand.history
    rep_pos = exact.rep_pos
    edges_a: list[np.ndarray] = []
    edges_b: list[np.ndarray] = []
    edge_j: list[np.ndarray] = []
    # verified tonight-tonight pairs
    if len(tt):
        j = jaccard(sig[tt[:, 0]], sig[tt[:, 1]])
        ok = j >= params.threshold
        edges_a.append(tt[ok, 0]); edges_b.append(tt[ok, 1]); edge_j.append(j[ok])
    # verified tonight-history pairs
    if th.num_rows and len(h_ids):
        ti = th["idx"].to_numpy()
        hi = np.array([hpos[d] - n for d in th["doc_id"].to_pylist()], dtype=np.int64)
        j = jaccard(sig[ti], h_sig[hi])
        ok = j >= params.threshold
        edges_a.append(ti[ok]); edges_b.append(hi[ok] + n); edge_j.append(j[ok])
    # exact copies: to tonight's representative, and representatives to their history copy
    dup_t = np.flatnonzero(rep_pos != np.arange(n))
    edges_a.append(dup_t); edges_b.append(rep_pos[dup_t]); edge_j.append(np.ones(len(dup_t), np.float32))
    if exact_links:
        ea = np.array([i for i, d in exact_links if d in hpos], dtype=np.int64)
        eb = np.array([hpos[d] for i, d in exact_links if d in hpos], dtype=np.int64)
        edges_a.append(ea); edges_b.append(eb); edge_j.append(np.ones(len(ea), np.float32))
    return edges_a, edges_b, edge_j


# -- 4. cluster sizes and best matches ----------------------------------------------------------


@dataclass
class Clusters:
    """Each component's survivor and size, and each of tonight's documents' best direct match."""

    id_rank: np.ndarray  # each node's rank by id (code point order)
    surv_of_comp: np.ndarray  # the survivor node of each component: smallest (run, doc_id)
    tagged: np.ndarray  # bool per tonight row: in a cluster of two or more, with words or a match
    size: np.ndarray  # int64 per tonight row: its cluster's size (0 where not tagged)
    comp_roots: dict[int, set[str]]  # component -> the history cluster roots in it
    match: np.ndarray  # per tonight row: its best match's node (-1: none)
    match_j: np.ndarray  # and that match's Jaccard


def clusters_and_matches(tonight: Tonight, graph: Graph, history: History) -> Clusters:
    """Survivor and size of every cluster, and every document's best direct match."""
    n = len(tonight.doc_id)
    comp = graph.comp
    n_nodes = len(graph.node_id)
    # survivor per component: smallest (run, doc_id). Python str objects sort by code point,
    # like sorted() on the tuples; the strings are sorted once, into integer ranks.
    node_ids = np.array(graph.node_id, dtype=object)
    node_runs = np.asarray(graph.node_run, dtype=np.int64)
    id_rank = np.empty(n_nodes, dtype=np.int64)
    id_rank[np.argsort(node_ids, kind="stable")] = np.arange(n_nodes)
    order = np.lexsort((id_rank, node_runs))
    comp_in_order = comp[order]
    _, first_in_comp = np.unique(comp_in_order, return_index=True)
    surv_of_comp = np.zeros(comp.max() + 1 if n_nodes else 0, dtype=np.int64)
    surv_of_comp[comp_in_order[first_in_comp]] = order[first_in_comp]
    comp_size_nodes = np.bincount(comp, minlength=comp.max() + 1 if n_nodes else 1)
    match, match_j = _best_matches(n, graph.match, id_rank)
    # Tags only for documents in a cluster of two or more that have words or a direct match.
    tagged = (comp_size_nodes[comp[:n]] > 1) & (tonight.has_sig | (match >= 0))
    comp_roots, size_of = _cluster_sizes(n, graph, history)
    size_of_comp = np.zeros(len(surv_of_comp), dtype=np.int64)
    for c in np.unique(comp[:n][tagged]):  # one per cluster, not per document
        size_of_comp[c] = size_of(int(c))
    csize = np.where(tagged, size_of_comp[comp[:n]], 0)
    return Clusters(id_rank, surv_of_comp, tagged, csize, comp_roots, match, match_j)


def _cluster_sizes(n: int, graph: Graph, history: History) -> tuple[dict[int, set[str]], Callable[[int], int]]:
    """Each component's history roots, and its size: tonight's members plus every active
    history document under its roots (and under the clusters merged into them)."""
    comp = graph.comp
    n_nodes = len(graph.node_id)
    merges = graph.merges
    comp_roots: dict[int, set[str]] = {}
    for k, (r, _) in enumerate(graph.h_root):
        comp_roots.setdefault(int(comp[n + k]), set()).add(r)
    raw_by_root: dict[str, list[str]] = {}
    for raw, (m, _) in merges.items():
        raw_by_root.setdefault(resolve_root(merges, m, 0)[0], []).append(raw)
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

    return comp_roots, cluster_size


def _best_matches(n: int, edges: tuple[np.ndarray, np.ndarray, np.ndarray],
                  id_rank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best direct match per tonight doc: highest Jaccard, then smallest doc_id (-1: none)."""
    match = np.full(n, -1, dtype=np.int64)
    match_j = np.zeros(n, dtype=np.float32)
    ea, eb, ej = edges
    if len(ea):
        src, dst, jj = np.concatenate([ea, eb]), np.concatenate([eb, ea]), np.concatenate([ej, ej])
        mine = src < n
        src, dst, jj = src[mine], dst[mine], jj[mine]
        order = np.lexsort((id_rank[dst], -jj, src))
        src, dst, jj = src[order], dst[order], jj[order]
        first = np.ones(len(src), dtype=bool)
        first[1:] = src[1:] != src[:-1]
        match[src[first]] = dst[first]
        match_j[src[first]] = jj[first]
    return match, match_j


# -- 5. survivor signatures, merges and segments ------------------------------------------------


def survivors(tonight: Tonight, exact: ExactGroups, cand: Candidates, graph: Graph, clusters: Clusters,
              params: NearDup) -> DedupResult:
    """Tonight's exact_dup and near_dup tags (each document's survivor, its Jaccard to the
    survivor's signature, its best match and cluster) and tonight's history segments."""
    n = len(tonight.doc_id)
    node_ids = np.array(graph.node_id, dtype=object)
    surv = clusters.surv_of_comp[graph.comp[:n]]  # each tonight document's survivor node
    seg_cluster = node_ids[surv]
    seg_cluster_run = np.asarray(graph.node_run, dtype=np.int64)[surv].astype(np.int32)
    tagged = clusters.tagged
    cluster = np.where(tagged, seg_cluster, None)
    matched = tagged & (clusters.match >= 0)
    m_id = np.where(matched, node_ids[np.maximum(clusters.match, 0)], None)
    m_j = np.where(matched, clusters.match_j, np.float32(np.nan)).astype(np.float32)
    dup = tagged & (surv != np.arange(n))
    near_of = np.where(dup, seg_cluster, None)
    near_j = _survivor_jaccard(tonight, exact, graph, surv, dup)

    shard = pa.array(tonight.shard_id.tolist(), pa.string())
    id_arr = pa.array(tonight.doc_id.tolist(), pa.string())
    exact_tbl = pa.table(
        {"doc_id": id_arr, "exact_dup_of": pa.array(exact.dup_of.tolist(), pa.string()),
         "exact_dup_count": pa.array(exact.count), "shard_id": shard}
    )
    csize = clusters.size
    near_tbl = pa.table(
        {"doc_id": id_arr, "near_dup_of": pa.array(near_of.tolist(), pa.string()),
         "near_dup_jaccard": pa.array(near_j, pa.float32(), mask=np.isnan(near_j)),
         "near_dup_match": pa.array(m_id.tolist(), pa.string()),
         "near_dup_match_jaccard": pa.array(m_j, pa.float32(), mask=np.isnan(m_j)),
         "near_dup_cluster": pa.array(cluster.tolist(), pa.string()),
         "near_dup_cluster_size": pa.array(csize, pa.int64(), mask=csize == 0), "shard_id": shard}
    )
    segments = _segments(tonight, exact, cand, seg_cluster, seg_cluster_run, _merge_rows(graph, clusters), params)
    return DedupResult(
        exact=exact_tbl, near=near_tbl, segments=segments,
        n_exact_dups=int(sum(x is not None for x in exact.dup_of)),
        n_near_dups=int(sum(x is not None for x in near_of)),
    )


def _survivor_jaccard(tonight: Tonight, exact: ExactGroups, graph: Graph, surv: np.ndarray,
                      dup: np.ndarray) -> np.ndarray:
    """Each duplicate's Jaccard to its survivor's signature: tonight's if it has words, a
    history document's always, none for a root that is only a name (1 for an exact copy)."""
    n = len(tonight.doc_id)
    sig, has = tonight.sig, tonight.has_sig
    rows = np.arange(n)
    surv_is_tonight = surv < n
    surv_has_sig = np.where(surv_is_tonight, has[np.minimum(surv, max(n - 1, 0))], surv < n + len(graph.h_ids))
    near_j = np.full(n, np.nan, np.float32)
    both = dup & surv_has_sig & has
    for from_tonight in (True, False):
        sel = np.flatnonzero(both & (surv_is_tonight == from_tonight))
        if len(sel):
            other = sig[surv[sel]] if from_tonight else graph.h_sig[surv[sel] - n]
            near_j[sel] = jaccard(sig[sel], other)
    near_j[dup & ~both & (surv_has_sig | (exact.rep_pos != rows))] = 1.0
    return near_j


def _merge_rows(graph: Graph, clusters: Clusters) -> list[tuple[str, str, int]]:
    """History roots in a component whose survivor is someone else: (root, survivor, its run)."""
    merge_rows = []
    for c, roots in clusters.comp_roots.items():
        s = int(clusters.surv_of_comp[c])
        for r in sorted(roots):
            if r != graph.node_id[s]:
                merge_rows.append((r, graph.node_id[s], graph.node_run[s]))
    return merge_rows


def _segments(tonight: Tonight, exact: ExactGroups, cand: Candidates, seg_cluster: np.ndarray,
              seg_cluster_run: np.ndarray, merge_rows: list[tuple[str, str, int]],
              params: NearDup) -> dict[str, pa.Table]:
    """Tonight's history segments: exact hashes, signatures with their clusters, merges, LSH bands."""
    sig, has = tonight.sig, tonight.has_sig
    shard = pa.array(tonight.shard_id.tolist(), pa.string())
    id_arr = pa.array(tonight.doc_id.tolist(), pa.string())
    run_col = pa.array(tonight.first_run.astype(np.int32))
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
    lsh_rows = np.flatnonzero(has & (exact.dup_of == None))  # noqa: E711 - elementwise on object array
    # Band-major, by key within a band (stable, so by row among equal keys): DuckDB's
    # row-group min/max on (band, key) then skips most of the file in a lookup.
    lsh_keys = cand.key_of[lsh_rows]
    by_key = band_order(lsh_keys)
    row_of = pa.array(lsh_rows[by_key].reshape(-1))
    segments["lsh"] = pa.table(
        {"band": np.repeat(np.arange(params.bands, dtype=np.uint8), len(lsh_rows)),
         "key": np.take_along_axis(lsh_keys.T, by_key, axis=1).reshape(-1),
         "doc_id": id_arr.take(row_of), "shard_id": shard.take(row_of)}
    )
    return segments
