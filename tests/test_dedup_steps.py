"""curation.dedup.resolve, step by step: exact groups, tonight's LSH candidates, connected
components through history, cluster sizes and best matches, survivor signatures, merges and
segments. Each step runs on small hand-made nights against a real history (DuckDB over the
Parquet segments an earlier resolve wrote), so each test names the rule it checks.

Signatures have 8 values in 4 bands of 2 rows; two documents are LSH candidates when a band's
two values are equal, and verified when at least half of the 8 values are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from glia.curation.dedup import (
    NearDup, Tonight, _tonight_pairs, band_order, clusters_and_matches, components, exact_groups, lsh_candidates,
    resolve, survivors,
)
from glia.storage.catalog import Segment
from glia.storage.history import History, write_segments

P = NearDup(bands=4, rows=2, threshold=0.5)
X = list(range(8))
Docs = dict[str, tuple[int, list[int] | None]]  # doc_id -> (text hash, signature or None: no words)


def edit(sig: list[int], **values: int) -> list[int]:
    """``sig`` with the values at positions ``v<i>`` replaced."""
    out = list(sig)
    for k, v in values.items():
        out[int(k[1:])] = v
    return out


def night(docs: Docs, run: int, first_seen: dict[str, int] | None = None) -> Tonight:
    ids = sorted(docs)
    return Tonight(
        doc_id=np.array(ids, dtype=object), shard_id=np.array(["s"] * len(ids), dtype=object),
        text_hash=np.array([docs[d][0] for d in ids], np.uint64),
        sig=np.array([docs[d][1] or [0] * 8 for d in ids], np.uint32),
        has_sig=np.array([docs[d][1] is not None for d in ids]),
        first_run=np.array([(first_seen or {}).get(d, run) for d in ids], np.int64),
    )


@pytest.fixture
def history(tmp_path: Path) -> Iterator[Callable[..., History]]:
    """``history(night1_docs, night2_docs, ...)``: a real history of those nights, each resolved
    against the ones before it and written as segments, as the dedup stage does."""
    opened: list[History] = []

    def make(*nights: Docs) -> History:
        segments: list[Segment] = []
        for run, docs in enumerate(nights, start=1):
            h = History(segments, ["s"])
            try:
                res = resolve(night(docs, run), h, run, P)
            finally:
                h.close()
            segments += write_segments(tmp_path / "state", run, res.segments, {"scheme": "test"})
        opened.append(History(segments, ["s"]))
        return opened[-1]

    yield make
    for h in opened:
        h.close()


def pos(t: Tonight, doc: str) -> int:
    return list(t.doc_id).index(doc)


# -- 1. exact groups ------------------------------------------------------------------------------


def test_exact_group_survivor_is_the_earliest_copy_then_the_smallest_id(history) -> None:
    t = night({"z": (7, X), "a": (7, X), "m": (8, X)}, run=1)
    g = exact_groups(t, history())
    assert list(g.dup_of) == [None, None, "a"]  # rows a, m, z
    assert list(g.count) == [2, 1, 2]
    assert list(g.rep_pos) == [0, 1, 0] and not g.in_hist.any()


def test_exact_group_survivor_is_the_history_copy_unless_tonight_saw_its_text_earlier(history) -> None:
    h = history({"p": (5, X)}, {"h": (7, X)})  # "h" holds hash 7 since run 2
    later = night({"b": (7, X), "c": (7, X)}, run=3)
    g = exact_groups(later, h)
    assert list(g.dup_of) == ["h", "h"] and list(g.count) == [3, 3] and g.in_hist.all()
    assert g.hist_first == {7: ("h", 2)}
    # c was first seen in run 1 (its shard was rewritten): it is older than the history copy.
    returning = night({"b": (7, X), "c": (7, X)}, run=3, first_seen={"c": 1})
    g = exact_groups(returning, h)
    assert list(g.dup_of) == ["c", None] and list(g.rep_pos) == [1, 1]


# -- 2. tonight's LSH candidates ------------------------------------------------------------------


def test_only_new_representatives_with_words_are_queried(history) -> None:
    near = edit(X, v0=90, v2=92)  # shares bands 2 and 3 with X
    far = [50 + i for i in range(8)]
    t = night({"a": (1, X), "b": (2, near), "c": (1, X), "d": (3, None), "e": (4, far)}, run=2)
    h = history({"h": (9, edit(X, v4=94))})  # shares bands 0, 1, 3 with a and band 3 with b
    cand = lsh_candidates(t, exact_groups(t, h), h, P)
    assert cand.tonight_pairs.tolist() == [[0, 1]]  # a-b; c is a's exact copy, d has no words
    assert sorted(zip(cand.history["idx"].to_pylist(), cand.history["doc_id"].to_pylist())) == [(0, "h"), (1, "h")]
    assert (cand.key_of[2] == cand.key_of[0]).all() and (cand.key_of[3] == 0).all()


def test_a_night_without_words_has_no_candidates(history) -> None:
    t = night({"a": (1, None), "b": (2, None)}, run=1)
    cand = lsh_candidates(t, exact_groups(t, history()), history(), P)
    assert cand.tonight_pairs.shape == (0, 2) and cand.history.num_rows == 0 and cand.key_of.shape == (2, 4)


# -- 3. connected components through history -----------------------------------------------------


Y = edit(X, v0=90, v2=92)  # night 1: y is a near copy of x (bands 2, 3 shared; Jaccard 0.75)
T = edit(Y, v4=94, v6=96)  # shares bands 0, 1 with y only (Jaccard 0.75 to y)
U = [Y[0], Y[1]] + [100 + i for i in range(6)]  # shares band 0 with y and t, Jaccard 0.25 to both


def test_a_history_document_brings_its_cluster_root_into_the_component(history) -> None:
    h = history({"x": (1, X), "y": (2, Y)})
    t = night({"t": (3, T), "u": (4, U)}, run=2)
    exact = exact_groups(t, h)
    graph = components(t, exact, lsh_candidates(t, exact, h, P), h, P)
    node = {d: i for i, d in enumerate(graph.node_id)}
    assert graph.h_ids == ["y"] and graph.h_root == [("x", 1)]  # x was never a candidate: only a name
    assert graph.comp[node["t"]] == graph.comp[node["y"]] == graph.comp[node["x"]]
    # u shares a band with t and y, but below the threshold: a candidate, not a duplicate.
    assert graph.comp[node["u"]] not in {graph.comp[node["t"]]}
    a, b, j = graph.match
    assert sorted(zip(a.tolist(), b.tolist(), j.tolist())) == [(node["t"], node["y"], 0.75)]


# -- 4. cluster sizes and best matches ------------------------------------------------------------


def test_cluster_size_counts_tonight_and_every_history_document_under_its_roots(history) -> None:
    h = history({"x": (1, X), "y": (2, Y)})
    t = night({"t": (3, T), "u": (4, U)}, run=2)
    exact = exact_groups(t, h)
    graph = components(t, exact, lsh_candidates(t, exact, h, P), h, P)
    cl = clusters_and_matches(t, graph, h)
    assert list(cl.size) == [3, 0] and list(cl.tagged) == [True, False]  # t, x, y; u alone
    assert graph.node_id[cl.surv_of_comp[graph.comp[0]]] == "x"  # earliest run, then smallest id
    assert graph.node_id[cl.match[0]] == "y" and cl.match_j[0] == pytest.approx(0.75) and cl.match[1] == -1


def test_best_match_is_the_most_similar_then_the_smallest_id(history) -> None:
    b, c = edit(X, v0=90, v2=92), edit(X, v4=94, v6=96)  # each 0.75 to a, 0.5 to each other, no shared band
    t = night({"a": (1, X), "c": (3, c), "b": (2, b)}, run=1)
    exact = exact_groups(t, history())
    graph = components(t, exact, lsh_candidates(t, exact, history(), P), history(), P)
    cl = clusters_and_matches(t, graph, history())
    ids = graph.node_id
    assert [ids[m] for m in cl.match] == ["b", "a", "a"]  # a: b and c tie at 0.75, b is smaller
    assert list(cl.size) == [3, 3, 3]


# -- 5. survivor signatures, merges and segments --------------------------------------------------


W = [50 + i for i in range(8)]
V = X[:4] + W[4:]  # Jaccard 0.5 to both x and w: joins their clusters


def test_a_night_that_joins_two_history_clusters_records_the_merge(history) -> None:
    h = history({"x": (1, X)}, {"w": (2, W)})
    t = night({"v": (3, V), "v2": (3, V)}, run=3)  # v2 is an exact copy of v
    exact = exact_groups(t, h)
    cand = lsh_candidates(t, exact, h, P)
    graph = components(t, exact, cand, h, P)
    res = survivors(t, exact, cand, graph, clusters_and_matches(t, graph, h), P)
    assert res.segments["merges"].to_pylist() == [{"cluster_id": "w", "merged_into": "x", "merged_run": 1}]
    near = {r["doc_id"]: r for r in res.near.to_pylist()}
    assert near["v"]["near_dup_of"] == near["v2"]["near_dup_of"] == "x"
    assert near["v"]["near_dup_jaccard"] == near["v2"]["near_dup_jaccard"] == pytest.approx(0.5)
    assert near["v"]["near_dup_cluster_size"] == 4  # v, v2, x, w
    assert res.exact.to_pylist()[1]["exact_dup_of"] == "v" and (res.n_exact_dups, res.n_near_dups) == (1, 2)
    sigs = res.segments["signatures"]
    assert sigs["doc_id"].to_pylist() == ["v", "v2"] and sigs["cluster_id"].to_pylist() == ["x", "x"]
    assert sigs["cluster_run"].to_pylist() == [1, 1]
    # Exact copies never enter the LSH segment: a later night finds their representative.
    lsh = res.segments["lsh"]
    assert set(lsh["doc_id"].to_pylist()) == {"v"} and lsh.num_rows == P.bands
    assert lsh["band"].to_pylist() == [0, 1, 2, 3]


def test_the_next_night_sees_one_cluster_after_a_merge(history) -> None:
    h = history({"x": (1, X)}, {"w": (2, W)}, {"v": (3, V)})
    t = night({"n": (2, W)}, run=4)  # an exact copy of w: its cluster is now x's
    res = resolve(t, h, 4, P)
    (row,) = res.near.to_pylist()
    assert row["near_dup_of"] == "x" and row["near_dup_cluster"] == "x" and row["near_dup_cluster_size"] == 4
    assert res.exact.to_pylist()[0]["exact_dup_of"] == "w" and res.segments["merges"].num_rows == 0


# -- the sorts under the candidate step --------------------------------------------------------


def _random_keys(seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Band keys with many ties (few distinct values), ascending row ids and a bucket cap."""
    rng = np.random.default_rng(seed)
    n, bands = int(rng.integers(0, 120)), int(rng.integers(1, 9))
    keys = rng.integers(0, int(rng.choice([2, 5, 40, 2**63])), size=(n, bands), dtype=np.uint64)
    idx = np.sort(rng.choice(5_000, size=n, replace=False)).astype(np.int64)
    return keys, idx, int(rng.choice([2, 3, 6, 64]))


@pytest.mark.parametrize("seed", range(40))
def test_band_order_is_a_stable_sort_of_each_band(seed: int) -> None:
    keys, _, _ = _random_keys(seed)
    assert np.array_equal(band_order(keys), np.argsort(keys, axis=0, kind="stable").T)


@pytest.mark.parametrize("seed", range(40))
def test_tonight_pairs_are_every_bucket_pair_or_the_star_on_its_smallest_id(seed: int) -> None:
    keys, idx, cap = _random_keys(seed)
    expected: set[tuple[int, int]] = set()
    for b in range(keys.shape[1]):
        for key in np.unique(keys[:, b]):
            members = sorted(int(i) for i in idx[keys[:, b] == key])
            if len(members) <= cap:
                expected |= {(a, c) for k, a in enumerate(members) for c in members[k + 1:]}
            else:
                expected |= {(members[0], c) for c in members[1:]}
    got = _tonight_pairs(keys, idx, cap)
    assert [tuple(p) for p in got.tolist()] == sorted(expected)
