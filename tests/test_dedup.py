"""Cross-night deduplication against planted.csv, and survivor determinism."""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import NIGHTS, PlantedPair, ThreeNights, glia, query, run_night
from glia.curation.dedup import NearDup

DUP_COLUMNS = ("SELECT doc_id, kind, survivor_id, jaccard, first_seen_run, survivor_first_seen_run "
               "FROM v_duplicates")


def components(pairs: list[tuple[str, str]]) -> dict[str, frozenset[str]]:
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        parent[find(a)] = find(b)
    groups: dict[str, set[str]] = defaultdict(set)
    for x in list(parent):
        groups[find(x)].add(x)
    return {x: frozenset(g) for g in groups.values() for x in g}


@pytest.fixture(scope="module")
def dups(three_nights: ThreeNights) -> dict[str, tuple]:
    return {r[0]: r[1:] for r in query(three_nights.db, DUP_COLUMNS)}


def cross_night_planted(planted: list[PlantedPair]) -> list[PlantedPair]:
    return [p for p in planted if p.origin == "planted" and p.night_of_doc > p.night_of_original and p.jaccard >= 0.8]


def test_planted_cross_night_pairs_are_found(planted: list[PlantedPair], dups: dict[str, tuple]) -> None:
    pairs = cross_night_planted(planted)
    assert len(pairs) == 77
    found = [p for p in pairs if p.doc_id in dups]
    assert len(found) / len(pairs) >= 0.95, [p for p in pairs if p.doc_id not in dups]
    for p in found:
        kind, _, _, first_seen, survivor_run = dups[p.doc_id]
        assert first_seen == p.night_of_doc, p
        # the survivor was delivered by an earlier run, no later than the original
        assert survivor_run is not None and survivor_run <= p.night_of_original < first_seen, p
    exact = [p for p in pairs if p.kind == "exact"]
    assert len(exact) == 34
    assert [(p.doc_id, dups[p.doc_id][0]) for p in exact if dups[p.doc_id][0] != "exact"] == []
    near = [p for p in found if p.kind == "near"]
    assert [(p.doc_id, dups[p.doc_id][0]) for p in near if dups[p.doc_id][0] != "near"] == []


def normalize(text: str) -> str:
    """The exact-duplicate normal form: NFKC, lower case, whitespace folded."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def true_jaccard(a: str, b: str, n: int) -> float:
    """Jaccard of two texts' word ``n``-gram sets (Glia's tokenisation: NFKC, lower case, \\w+)."""
    def grams(text: str) -> set[tuple[str, ...]]:
        toks = re.findall(r"\w+", unicodedata.normalize("NFKC", text).lower())
        return set(zip(*(toks[i:] for i in range(n)), strict=False)) if len(toks) >= n else {tuple(toks)}
    x, y = grams(a), grams(b)
    return len(x & y) / len(x | y)


def test_survivor_is_the_earliest_document_of_the_cluster(
    planted: list[PlantedPair], dups: dict[str, tuple], night_of_id: dict[str, int], corpus_texts: dict[str, str]
) -> None:
    """Ground-truth clusters: documents linked by pairs clearly above the configured threshold
    (true Jaccard of the configured shingles); the survivor is the earliest by (night, doc_id).

    Clusters that a pair within 0.1 of the threshold touches are left out: such a pair is
    found with a probability below one by design (the candidate curve, and the estimate's
    noise of about 0.045 at 128 values), so which side of it a survivor lands on is not a rule.
    """
    nd = NearDup()
    sure, unsure = [], set()
    for p in planted:
        j = true_jaccard(corpus_texts[p.doc_id], corpus_texts[p.duplicate_of], nd.ngram)
        if j >= nd.threshold + 0.1:
            sure.append((p.doc_id, p.duplicate_of))
        elif j > nd.threshold - 0.1:
            unsure |= {p.doc_id, p.duplicate_of}
    cluster = components(sure)
    wrong = []
    same_as_original = 0
    for p in cross_night_planted(planted):
        if p.doc_id not in dups or cluster.get(p.doc_id, frozenset({p.doc_id})) & unsure:
            continue
        members = cluster[p.doc_id]
        if dups[p.doc_id][0] == "exact":  # an exact copy names its exact group's survivor
            members = [d for d in members if normalize(corpus_texts[d]) == normalize(corpus_texts[p.doc_id])]
        expected = min(members, key=lambda d: (night_of_id[d], d))
        survivor = dups[p.doc_id][1]
        same_as_original += survivor == p.duplicate_of
        if survivor != expected:
            wrong.append((p.doc_id, p.duplicate_of, survivor, expected))
    assert wrong == []
    assert same_as_original >= 70  # "usually duplicate_of"


def test_every_planted_exact_copy_is_reported_as_exact(
    planted: list[PlantedPair], three_nights: ThreeNights, night_of_id: dict[str, int]
) -> None:
    """Within a night too: the later of the two (by night, then doc_id) is the exact
    duplicate, and its survivor has the same normalised text."""
    rows = query(three_nights.db, """
        SELECT d.doc_id, d.kind, d.survivor_id, a.text_hash = b.text_hash
        FROM v_duplicates d JOIN tags_exact a ON a.doc_id = d.doc_id JOIN tags_exact b ON b.doc_id = d.survivor_id""")
    got = {r[0]: r[1:] for r in rows}
    exact = [p for p in planted if p.origin == "planted" and p.kind == "exact"]
    assert len(exact) == 72
    bad = []
    for p in exact:
        later = max(p.doc_id, p.duplicate_of, key=lambda d: (night_of_id[d], d))
        if got.get(later, (None, None, None))[0::2] != ("exact", True):
            bad.append((p, got.get(later)))
    assert bad == []


def test_dedup_counts_in_runs_match_the_views(three_nights: ThreeNights) -> None:
    per_run = query(three_nights.db, "SELECT run_id, n_exact_dups, n_near_dups FROM runs WHERE run_id <= 3 ORDER BY run_id")
    in_views = query(three_nights.db, """
        SELECT d.first_seen_run, count(e.exact_dup_of), count(n.near_dup_of)
        FROM documents d JOIN tags_exact_dup e USING (doc_id) JOIN tags_near_dup n USING (doc_id)
        GROUP BY 1 ORDER BY 1""")
    assert per_run == in_views
    assert all(e > 0 and n > 0 for _, e, n in per_run)


def test_glia_sql_reads_v_duplicates(three_nights: ThreeNights, tmp_path: Path) -> None:
    res = glia(["sql", "SELECT * FROM v_duplicates LIMIT 5", "--db", str(three_nights.db)], tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    first = query(three_nights.db, "SELECT doc_id, survivor_id FROM v_duplicates LIMIT 5")
    for doc_id, survivor in first:
        assert doc_id in res.stdout and survivor in res.stdout
    assert "5 rows" in res.stdout
    bad = glia(["sql", "SELECT * FROM no_such_view", "--db", str(three_nights.db)], tmp_path)
    assert bad.returncode == 1 and "no_such_view" in bad.stdout


# -- determinism ------------------------------------------------------------------------------


def regroup(tables: list[pa.Table], out: Path, sizes: list[int], prefix: str) -> None:
    """Concatenate ``tables`` and cut them into shards of ``sizes`` rows."""
    out.mkdir(parents=True)
    t = pa.concat_tables(tables)
    assert sum(sizes) == t.num_rows
    start = 0
    for k, n in enumerate(sizes):
        pq.write_table(t.slice(start, n), out / f"{prefix}-{k:02d}.parquet")
        start += n


def reversed_rows(t: pa.Table) -> pa.Table:
    return t.take(pa.array(range(t.num_rows - 1, -1, -1)))


def dedup_result(db: Path) -> tuple[set, set]:
    return (
        set(query(db, "SELECT doc_id, survivor_id, kind FROM v_duplicates")),
        set(query(db, "SELECT doc_id, exact_dup_of, near_dup_of FROM v_documents")),
    )


def test_survivors_do_not_depend_on_shard_order_or_grouping(tmp_path: Path) -> None:
    """Nights 1 and 2 into two databases: as delivered, and with each night's shards
    concatenated in reverse order (rows reversed too) and cut into differently sized shards
    whose names sort the other way round."""
    shards = {n: [pq.read_table(p) for p in sorted(NIGHTS[n].glob("*.parquet"))] for n in (1, 2)}
    b_root = tmp_path / "b"
    regroup([reversed_rows(t) for t in reversed(shards[1])], b_root / "n1", [700, 101, 399, 300], "z")
    regroup([reversed_rows(t) for t in reversed(shards[2])], b_root / "n2", [150, 650], "y")

    a_db, b_db = tmp_path / "a.duckdb", tmp_path / "b.duckdb"
    for n in (1, 2):
        run_night(NIGHTS[n], a_db)  # the example folders are only read
    run_night(b_root / "n1", b_db)
    run_night(b_root / "n2", b_db)

    a_dups, a_docs = dedup_result(a_db)
    b_dups, b_docs = dedup_result(b_db)
    assert len(a_docs) == len(b_docs) == 2300
    assert len(a_dups) > 150
    assert b_dups == a_dups
    assert b_docs == a_docs
    assert query(b_db, "SELECT n_shards_new, n_docs FROM runs ORDER BY run_id") == [(4, 1500), (2, 800)]


def _pairs_by_buckets(keys, idx, max_bucket: int) -> set[tuple[int, int]]:
    """The documented candidate rule, written plainly: per band, every bucket of up to
    ``max_bucket`` members gives all its pairs, a bigger one links each member to its
    smallest idx."""
    out: set[tuple[int, int]] = set()
    for b in range(keys.shape[1]):
        buckets: dict[int, list[int]] = defaultdict(list)
        for k, i in zip(keys[:, b].tolist(), idx.tolist()):
            buckets[k].append(i)
        for members in buckets.values():
            members.sort()
            if len(members) <= max_bucket:
                out |= {(a, c) for n, a in enumerate(members) for c in members[n + 1 :]}
            else:
                out |= {(members[0], c) for c in members[1:]}
    return out


@pytest.mark.parametrize("seed", range(6))
def test_tonight_candidate_pairs_follow_the_bucket_rule(seed: int) -> None:
    import numpy as np

    from glia.curation.dedup import _tonight_pairs

    rng = np.random.default_rng(seed)
    n, bands = int(rng.integers(2, 600)), int(rng.integers(1, 17))
    # Few distinct keys, so buckets of every size (including over max_bucket) occur.
    keys = rng.integers(0, int(rng.integers(2, 60)), (n, bands)).astype(np.uint64)
    idx = np.sort(rng.choice(5 * n, n, replace=False)).astype(np.int64)
    max_bucket = int(rng.integers(2, 20))
    got = _tonight_pairs(keys, idx, max_bucket)
    assert len(got) == len({tuple(p) for p in got.tolist()})  # each pair once
    assert {tuple(p) for p in got.tolist()} == _pairs_by_buckets(keys, idx, max_bucket)
