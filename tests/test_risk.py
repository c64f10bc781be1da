"""The ``risk`` tagger: the default head (trained here from the vendored Davidson tweets and the
example corpus's night 1) separates toxic from clean text it has not seen; long documents are
scored per chunk; the detoxify backend loads a locally built checkpoint of detoxify's format.

The first run trains the default head (~20-30 s on 2 cores) into ``$GLIA_MODEL_CACHE`` (set
below to the repository's ``.glia/models`` unless given), later runs load it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

os.environ.setdefault("GLIA_MODEL_CACHE", str(Path(__file__).resolve().parents[1] / ".glia" / "models"))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402

from glia.models import risk_head as risk_model  # noqa: E402
from glia.taggers import registry  # noqa: E402
from glia.taggers.risk import RiskTagger  # noqa: E402

SEED = 7


def docs(texts: list[str], prefix: str = "d") -> pa.Table:
    return pa.table({"doc_id": [f"{prefix}{i}" for i in range(len(texts))], "text": pa.array(texts, pa.string())})


@pytest.fixture(scope="module")
def head_and_log() -> tuple[risk_model.RiskHead, list[str], bool]:
    """The default head as the tagger gets it: loaded from the cache, or trained on first use."""
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger(risk_model.__name__)
    logger.addHandler(handler)
    missing = not (risk_model.head_dir() / "head.json").exists()
    try:
        head = risk_model.load_default()
    finally:
        logger.removeHandler(handler)
    return head, records, missing


@pytest.fixture(scope="module")
def tagger(head_and_log) -> RiskTagger:
    return RiskTagger(backend="ngram")  # the n-gram head (the default until tagger version 2)


@pytest.fixture(scope="module")
def clear_toxic() -> list[str]:
    """Held-out tweets every annotator called hateful or offensive (the ``test`` split)."""
    t = pq.read_table(risk_model.DAVIDSON)
    t = t.filter(pc.and_(pc.equal(pc.cast(t["split"], pa.string()), "test"), pc.equal(t["neither"], 0)))
    rows = np.random.default_rng(SEED).choice(t.num_rows, 150, replace=False)
    return t["tweet"].take(rows).to_pylist()


@pytest.fixture(scope="module")
def clean_prose() -> list[str]:
    """Held-out literary paragraphs (nights 2 and 3, no copies of night-1 documents)."""
    t = risk_model.heldout_prose()
    rows = np.random.default_rng(SEED).choice(t.num_rows, 150, replace=False)
    return t["text"].take(rows).to_pylist()


def test_default_head_is_built_once_and_keyed_by_its_training_data(head_and_log) -> None:
    head, records, was_missing = head_and_log
    folder = risk_model.head_dir()
    assert (folder / "head.json").exists() and (folder / "head.npz").exists()
    assert head.key == folder.name.removeprefix("head-") == risk_model.training_data_hash(risk_model.Recipe())
    if was_missing:  # a fresh cache: trained on first use, and said so
        assert any("training it now" in r for r in records), records
    assert head.info["n_tweets"] == 19_826 and head.info["n_prose_docs"] == 1_500
    assert risk_model.load_default() is head  # loaded once per process
    # A different recipe is a different artefact, and the tagger's cache key names the artefact.
    assert risk_model.training_data_hash(risk_model.Recipe(C=1.0)) != head.key
    assert RiskTagger(backend="ngram").config()["model"] == f"ngram@{head.key}"


def test_a_built_head_is_found_without_the_training_data(head_and_log, tmp_path, monkeypatch) -> None:
    """An installation without the source tree uses a head built elsewhere (``models_dir``)."""
    head = head_and_log[0]
    shipped = tmp_path / "models"
    head.save(shipped / f"head-{head.key}")
    monkeypatch.setattr(risk_model, "DAVIDSON", tmp_path / "no-such-file.parquet")
    with pytest.raises(FileNotFoundError, match="models_dir"):
        risk_model.head_dir(tmp_path / "empty")
    t = RiskTagger(backend="ngram", models_dir=str(shipped))
    assert t.config()["model"] == f"ngram@{head.key}"
    out = t.tag(docs(["What a lovely morning for a walk.", "shut up you stupid bitch"]))["risk"].to_numpy()
    assert out[0] < 0.5 < t.threshold < out[1]


def test_default_separates_clearly_toxic_from_clean(tagger, clear_toxic, clean_prose) -> None:
    out = tagger.tag(docs(clear_toxic + clean_prose))
    risk = out["risk"].to_numpy()
    assert out.schema == tagger.schema()
    assert np.all((risk >= 0) & (risk <= 1)) and not np.isnan(risk).any()
    toxic, clean = risk[: len(clear_toxic)], risk[len(clear_toxic):]
    labels = np.r_[np.ones(len(toxic)), np.zeros(len(clean))]
    assert risk_model.roc_auc(labels, risk) > 0.95
    assert toxic.mean() - clean.mean() > 0.6, (toxic.mean(), clean.mean())
    flags = out["risk_flag"].to_numpy(zero_copy_only=False)
    np.testing.assert_array_equal(flags, risk >= tagger.threshold)
    assert flags[: len(toxic)].mean() > 0.85 and flags[len(toxic):].mean() < 0.02
    assert set(out["risk_model"].to_pylist()) == {tagger.model_id()}


def test_default_meets_the_target_on_all_heldout_tweets(head_and_log) -> None:
    """ROC-AUC >= 0.85 on Davidson's whole held-out split (hate or offensive vs neither)."""
    tweets, toxic = risk_model.davidson("test")
    assert len(tweets) == 4_957
    assert risk_model.roc_auc(toxic, head_and_log[0].score(tweets)) >= 0.85


def test_scores_are_deterministic_and_keyed_not_row_aligned(tagger, clear_toxic, clean_prose) -> None:
    batch = docs(clear_toxic[:40] + clean_prose[:40])
    first = tagger.tag(batch)
    assert first.equals(tagger.tag(batch))
    order = np.random.default_rng(SEED).permutation(batch.num_rows)
    shuffled = tagger.tag(batch.take(order))
    by_id = dict(zip(shuffled["doc_id"].to_pylist(), shuffled["risk"].to_pylist()))
    assert [by_id[d] for d in first["doc_id"].to_pylist()] == first["risk"].to_pylist()
    # A reloaded head scores exactly the same.
    again = risk_model.RiskHead.load(risk_model.head_dir())
    np.testing.assert_array_equal(again.score(batch["text"]), first["risk"].to_numpy())


def test_long_documents_are_scored_by_their_worst_chunk(tagger, clear_toxic, clean_prose) -> None:
    long_clean = "\n\n".join(clean_prose[:12])
    assert len(long_clean) > 5_000
    own = tagger.tag(docs(clear_toxic))["risk"].to_numpy()
    tweet = clear_toxic[int(np.argmax(own > 0.9))]  # the first clearly flagged tweet
    long_toxic = "\n\n".join(clean_prose[:6] + [tweet] + clean_prose[6:12])
    out = tagger.tag(docs([long_clean, long_toxic]))["risk"].to_numpy()
    assert out[0] < tagger.threshold <= out[1], out
    # Scored whole, the toxic paragraph drowns in 5,000 clean characters: the reason for chunks.
    whole = RiskTagger(backend="ngram", max_chars=1_000_000).tag(docs([long_toxic]))["risk"].to_numpy()
    assert whole[0] < out[1] - 0.2 and whole[0] < tagger.threshold


def test_chunks_cover_the_text_within_the_limit(clean_prose) -> None:
    texts = pa.array(["short one.", clean_prose[0] * 3, "x" * 700, "word " * 200, clean_prose[1]], pa.string())
    chunks, owner = risk_model.chunk(texts, 120)
    assert np.all(np.diff(owner) >= 0) and set(owner) == set(range(len(texts)))
    assert max(pc.utf8_length(chunks).to_pylist()) <= 120
    for i, text in enumerate(texts.to_pylist()):  # nothing is lost: the same non-space characters
        joined = "".join(chunks.filter(pa.array(owner == i)).to_pylist())
        assert "".join(joined.split()) == "".join(text.split())
    np.testing.assert_array_equal(risk_model.max_by_owner(np.array([0.1, 0.5, 0.2, 0.9]), np.array([0, 0, 1, 2]), 3),
                                  [0.5, 0.2, 0.9])


def test_empty_batch_and_registry(tagger) -> None:
    empty = tagger.tag(docs([]))
    assert empty.num_rows == 0 and empty.schema == tagger.schema()
    (t,) = registry.build(["risk"], {"risk": {"threshold": 0.9, "max_chars": 500}})
    assert isinstance(t, RiskTagger) and t.config()["threshold"] == 0.9 and t.config()["max_chars"] == 500
    with pytest.raises(ValueError, match=r"\[taggers.risk\].backend: expected one of 'default', 'minilm-lstm', 'minilm', 'minilm-head', 'lstm', 'ngram', 'detoxify'"):
        RiskTagger(backend="perspective")
    with pytest.raises(ValueError, match="needs checkpoint"):
        RiskTagger(backend="detoxify")


def test_cli_train_risk_reports_heldout_numbers(head_and_log, capsys) -> None:
    from glia.cli.main import main

    assert main(["models", "train-risk"]) == 0  # the head exists: loads and evaluates, no retraining
    out = " ".join(capsys.readouterr().out.split())
    assert f"risk head {head_and_log[0].key}" in out and "already built" in out
    auc = float(out.split("ROC-AUC ")[1].split()[0])
    fpr = float(out.split(" toxic tweets and ")[1].split("%")[0]) / 100
    assert auc >= 0.85 and fpr < 0.01, out


# -- detoxify ------------------------------------------------------------------------------

# Detoxify's class names as its checkpoints store them, with "toxic" deliberately not first:
# the tagger must pick the column by name.
CLASSES = ["severe_toxic", "toxic", "obscene", "threat", "insult", "identity_hate"]


def build_detoxify_checkpoint(folder: Path, seed: int) -> tuple[Path, Path]:
    """A checkpoint in detoxify's format (``config.arch.args``, ``config.dataset.args.classes``,
    ``state_dict``) of a tiny randomly initialised BERT, and a config folder with a WordPiece
    tokenizer trained on real text, all built here: no file comes from a model hub."""
    import torch
    import transformers
    from tokenizers import BertWordPieceTokenizer

    cfg_dir = folder / "bert-config"
    cfg_dir.mkdir(parents=True)
    text = pq.read_table(sorted((risk_model.COMMONS / "night1").glob("*.parquet"))[0], columns=["text"])["text"]
    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator(text.to_pylist()[:300], vocab_size=1500, min_frequency=1, show_progress=False)
    wp.save_model(str(cfg_dir))
    config = transformers.BertConfig(vocab_size=wp.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=512,
                                     num_labels=len(CLASSES),
                                     # Wide initial weights, so that different texts get clearly different
                                     # probabilities (at BERT's 0.02 every output is a hair around 0.5).
                                     initializer_range=0.3)
    config.save_pretrained(cfg_dir)
    transformers.BertTokenizer(str(cfg_dir / "vocab.txt"), do_lower_case=True, model_max_length=512).save_pretrained(cfg_dir)
    torch.manual_seed(seed)
    model = transformers.BertForSequenceClassification(config)
    ckpt = folder / f"toxic-tiny-{seed}.ckpt"
    torch.save({"config": {"arch": {"args": {"model_type": "bert-base-uncased", "model_name": "BertForSequenceClassification",
                                             "tokenizer_name": "BertTokenizer", "num_classes": len(CLASSES)}},
                           "dataset": {"args": {"classes": CLASSES}}},
                "state_dict": model.state_dict()}, ckpt)
    return ckpt, cfg_dir


@pytest.fixture(scope="module")
def detoxify_files(tmp_path_factory) -> tuple[Path, Path]:
    return build_detoxify_checkpoint(tmp_path_factory.mktemp("detoxify"), seed=1)


def test_detoxify_backend_loads_a_local_checkpoint_offline(detoxify_files, clean_prose, clear_toxic, monkeypatch) -> None:
    import torch
    import transformers

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ckpt, cfg_dir = detoxify_files
    t = RiskTagger(backend="detoxify", checkpoint=str(ckpt), huggingface_config_path=str(cfg_dir), device="cpu",
                   batch_size=8, max_chars=400)
    assert t.resources.gpu and t.threshold == 0.5 and t.config()["model"].startswith("detoxify@")
    texts = clear_toxic[:6] + [c[:300] for c in clean_prose[:6]] + ["\n\n".join(clean_prose[:4])]
    out = t.tag(docs(texts))
    risk = out["risk"].to_numpy()
    assert out.schema == t.schema() and np.all((risk >= 0) & (risk <= 1)) and risk.std() > 0.05

    # The same weights run directly: risk is sigmoid of the "toxic" logit (per chunk, max over chunks).
    model = transformers.BertForSequenceClassification(transformers.BertConfig.from_pretrained(cfg_dir)).eval()
    model.load_state_dict(torch.load(ckpt, weights_only=False)["state_dict"])
    tok = transformers.BertTokenizer.from_pretrained(cfg_dir)
    chunks, owner = risk_model.chunk(pa.array(texts), 400)
    with torch.no_grad():
        logits = model(**tok(chunks.to_pylist(), return_tensors="pt", truncation=True, padding=True)).logits
    expected = risk_model.max_by_owner(torch.sigmoid(logits[:, CLASSES.index("toxic")]).numpy(), owner, len(texts))
    np.testing.assert_allclose(risk, expected, atol=1e-5)
    np.testing.assert_array_equal(out["risk_flag"].to_numpy(zero_copy_only=False), risk >= 0.5)

    # Other weights are another model: the cache key follows the checkpoint's bytes.
    other, _ = build_detoxify_checkpoint(ckpt.parent / "other", seed=2)
    t2 = RiskTagger(backend="detoxify", checkpoint=str(other), huggingface_config_path=str(cfg_dir), device="cpu")
    assert t2.config()["model"] != t.config()["model"]
