"""The ``semantic_dedup`` stage on real text: paragraphs of the example corpus, rewritten copies
planted tonight and on a later night (found, pointing at the original), neighbouring
paragraphs of the same novel as hard negatives (not found), the survivor rule's invariants,
order independence, and the approximate (IVF) search against the exact one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import NIGHTS, query, run_night
from glia.core.params import ConfigError
from glia.curation.semantic_dedup import normalize, resolve
from glia.stages.semantic_dedup import SemanticDedupStage

EPS = SemanticDedupStage.Params().eps


def _rewrite(text: str) -> str:
    """A lightly edited copy: every twentieth word dropped (MinHash at Jaccard 0.75 misses most
    of these: each drop breaks five 5-grams)."""
    words = text.split()
    return " ".join(w for i, w in enumerate(words) if i % 20 != 19)


@pytest.fixture(scope="module")
def austen() -> list[tuple[str, str]]:
    """Consecutive Austen paragraphs of night 1 that are no planted duplicates (hard negatives
    of one another: same novel, same style, often the same characters)."""
    t = pq.read_table(sorted(NIGHTS[1].glob("*.parquet"))[0], columns=["id", "text", "source"])
    planted = {line.split(",")[0] for line in (NIGHTS[1].parent / "planted.csv").read_text().splitlines()[1:]} | \
              {line.split(",")[1] for line in (NIGHTS[1].parent / "planted.csv").read_text().splitlines()[1:]}
    rows = [(i, x) for i, x, s in zip(t["id"].to_pylist(), t["text"].to_pylist(), t["source"].to_pylist())
            if s == "austen" and i not in planted and len(x) > 300]
    assert len(rows) >= 40
    return sorted(rows)[:40]


def _shard(root: Path, name: str, rows: list[tuple[str, str]]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": [r[0] for r in rows], "text": [r[1] for r in rows],
                             "source": ["austen"] * len(rows)}), root / name)


# MinHash set strict (the default 0.5 already catches these word-dropped copies, and the stage
# leaves documents dedup marked alone): the copies here are the semantic stage's to find.
RULES = """[run]
taggers = ["exact", "minhash", "embedding"]
stages = ["dedup", "novelty", "semantic_dedup", "decide"]
[stages.dedup]
threshold = 0.95
[taggers.embedding]
model = "{model}"
[stages.decide]
prune_if_any = ["exact_dup", "near_dup", "semantic_dup"]
[stages.decide.cap]
night = 1.0
source = 1.0
[stages.decide.protect.clusters]
enabled = false
"""


def _rules(tmp_path: Path, model: str = "minilm") -> Path:
    p = tmp_path / "glia.toml"
    p.write_text(RULES.format(model=model))
    return p


def test_rewritten_copies_are_found_tonight_and_from_the_bank(austen: list[tuple[str, str]], tmp_path: Path) -> None:
    originals, copies_tonight, copies_later = austen[:30], austen[:10], austen[10:20]
    shards = tmp_path / "shards"
    _shard(shards, "a.parquet", originals + [(f"zz-copy-{n}", _rewrite(x)) for n, (_, x) in enumerate(copies_tonight)])
    db, rules = tmp_path / "glia.duckdb", _rules(tmp_path)
    assert run_night(shards, db, rules).status == "completed"
    rows = dict(query(db, "SELECT doc_id, semantic_dup_of FROM v_documents"))
    for i, (orig, _) in enumerate(copies_tonight):
        assert rows[f"zz-copy-{i}"] == orig  # the original: the smaller id survives
    # Hard negatives: no original paragraph is a duplicate of its neighbours in the novel.
    assert all(rows[o] is None for o, _ in originals)
    reasons = dict(query(db, "SELECT doc_id, reasons FROM decisions"))
    assert f"semantic_dup_of:{copies_tonight[0][0]}" in reasons["zz-copy-0"]

    # A later night: copies of night-1 documents are duplicates of the bank's (earlier nights win,
    # whatever their ids), and the similarity reaches the threshold.
    _shard(shards, "b.parquet", [(f"aa-later-{n}", _rewrite(x)) for n, (_, x) in enumerate(copies_later)])
    assert run_night(shards, db, rules).status == "completed"
    later = query(db, "SELECT doc_id, semantic_dup_of, semantic_similarity FROM v_documents WHERE doc_id LIKE 'aa-later-%' "
                      "ORDER BY doc_id")
    assert [r[1] for r in later] == [o for o, _ in copies_later]
    assert min(r[2] for r in later) >= 1 - EPS - 1e-6
    metrics = dict(query(db, "SELECT metric, value FROM run_metrics WHERE run_id = 2 AND metric LIKE 'semantic_dedup.%'"))
    assert metrics["semantic_dedup.dups_bank"] == 10 and metrics["semantic_dedup.bank_size"] >= 30


def test_survivors_are_kept_and_order_does_not_matter(tmp_path: Path) -> None:
    """On the whole of night 1 (static embeddings): every semantic_dup_of is a document that is
    itself kept, and two different shard layouts of the same documents give the same tags."""
    t = pa.concat_tables([pq.read_table(f, columns=["id", "text", "source"]) for f in sorted(NIGHTS[1].glob("*.parquet"))])
    results = []
    for layout in ("one", "reversed"):
        root = tmp_path / layout
        root.mkdir()
        if layout == "one":
            pq.write_table(t, root / "all.parquet")
        else:
            rev = t.take(pa.array(np.arange(t.num_rows)[::-1]))
            for k in range(3):
                pq.write_table(rev.slice(k * 500, 500), root / f"part-{k}.parquet")
        db = tmp_path / f"{layout}.duckdb"
        assert run_night(root, db, _rules(tmp_path, "static")).status == "completed"
        bad = query(db, "SELECT count(*) FROM v_documents a JOIN v_documents b ON a.semantic_dup_of = b.doc_id "
                        "WHERE b.semantic_dup_of IS NOT NULL OR b.exact_dup_of IS NOT NULL OR b.near_dup_of IS NOT NULL "
                        f"OR a.semantic_similarity < {1 - EPS - 1e-6}")[0][0]
        assert bad == 0
        results.append(query(db, "SELECT doc_id, semantic_dup_of, round(semantic_similarity, 5) FROM v_documents ORDER BY doc_id"))
    assert results[0] == results[1]
    assert sum(r[1] is not None for r in results[0]) > 0


def test_approximate_search_agrees_with_exact(tmp_path: Path) -> None:
    """IVF (forced with exact_max=1) finds nearly the same duplicates as the exact search, on the
    example corpus's real embeddings (static model)."""
    from glia.taggers.embedding import EmbeddingTagger

    t = pa.concat_tables([pq.read_table(f, columns=["id", "text"]) for n in (1, 2, 3) for f in sorted(NIGHTS[n].glob("*.parquet"))])
    out = EmbeddingTagger(model="static").tag(pa.table({"doc_id": t["id"], "text": t["text"]}))
    v = normalize(np.asarray(out["_embedding"].combine_chunks().flatten().to_numpy(zero_copy_only=False)).reshape(t.num_rows, -1))
    bank = np.full(len(v), np.nan, np.float32)
    exact = resolve(v, bank, 1 - EPS)
    approx = resolve(v, bank, 1 - EPS, exact_max=1, nprobe=8)
    assert exact.exact and not approx.exact
    e, a = set(np.flatnonzero(~exact.kept)), set(np.flatnonzero(~approx.kept))
    assert len(e) > 50
    assert len(e & a) / len(e) >= 0.9 and len(e & a) / len(a) >= 0.9
    # Every reported duplicate, exact or approximate, is at the threshold against a kept survivor.
    for r in (exact, approx):
        dup = r.dup_of >= 0
        assert r.kept[r.dup_of[dup]].all() and np.all(r.similarity[dup] >= 1 - EPS - 1e-6)


def test_degenerate_vectors_and_ties_are_deterministic() -> None:
    """Zero vectors (an empty document's), identical vectors and an empty night."""
    rng = np.random.default_rng(0)
    base = normalize(rng.normal(size=(5, 16)))
    v = normalize(np.vstack([np.zeros((2, 16)), base, base[[1, 1, 3]]]))
    r = resolve(v, np.full(len(v), np.nan, np.float32), 0.95)
    assert r.kept[:7].all() and not r.kept[7:].any()
    assert r.dup_of[7:].tolist() == [3, 3, 5]  # identical copies point at the first (smallest) kept one
    empty = resolve(np.zeros((0, 16), np.float32), np.zeros(0, np.float32), 0.95)
    assert empty.kept.size == 0


@pytest.mark.parametrize("params, key", [({"eps": 0}, "eps"), ({"eps": 1.5}, "eps"), ({"k": 0}, "k"),
                                         ({"exact_max": "many"}, "exact_max"), ({"epsilon": 0.1}, "epsilon")])
def test_bad_parameters_name_the_key(params: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        SemanticDedupStage(**params)
