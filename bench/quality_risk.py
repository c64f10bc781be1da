"""Toxicity risk on data nobody tuned to: every risk option, scored on labelled sets from other platforms.

Usage (from the repository root, after ``make setup``)::

    PYTHONPATH=. .venv/bin/python bench/quality_risk.py [--quick] [--options a,b,...]

Prints one table and writes ``bench/results/quality_risk.json``. ``report(quick)`` returns the
same dict for ``bench/bench_quality.py``.

Labelled sets (none is trained on by any option; which platforms each option was trained on is
listed with it, so a set counts as cross-platform only where it is):

- ``ethos``: ETHOS binary (Mollas et al. 2020), 998 YouTube and Reddit comments, hate when
  ``isHate >= 0.5`` (433). Read from ``../shared/data/ethos/`` (GPL-3, evaluation only, never
  copied here); the row is skipped with a note where the folder is absent.
- ``davidson_test``: the stored 20 % test split of Davidson et al. 2017 (tweets; toxic = hate or
  offensive). In-platform for options trained on Davidson's train split (the old head,
  alt-profanity-check, the MiniLM head), cross-platform for the Wikipedia-trained LSTMs.
- ``fortunes_es`` / ``fortunes_it``: Debian's offensive fortunes (``fortunes-es-off`` 1.36, whose
  entries are rot13'd as fortune(6) stores offensive ones, and ``fortunes-it-off`` 1.99-4.1) against
  the clean fortunes of the same packagers (``fortunes-es`` without its ``off/`` folder,
  ``fortunes-it``). Labels are the packagers' own split into offensive and not; the jokes are
  Spanish and Italian, so for every English model here these sets measure crossing language as
  well as platform: they are reported, and named as such, not counted as English evidence.

Clean long prose (false positives), none of it in any training set: GCIDE (Webster 1913, Debian
``dict-gcide``), FOLDOC (Debian ``dict-foldoc``) and the English fortunes (Debian ``fortunes``),
each grouped into 400-2,000-character documents as the example corpus groups its sources; and
for reference the held-out literary paragraphs of the example corpus's nights 2-3 (the old head
trained on night 1's, and the flag thresholds below were chosen on these, never on the sets above).

Per option and set: ROC-AUC, and TPR/FPR at the option's flag threshold and at the example
built-in rule's prune threshold (``risk > 0.69``, ``PRUNE_THRESHOLD``); per prose source, the share flagged at both.
"""

from __future__ import annotations

import argparse
import codecs
import json
import os
import re
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "bench"))

import sources  # noqa: E402

from glia.curation.rules import DEFAULT_TERMS  # noqa: E402
from glia.models import risk_head as risk_model  # noqa: E402

ETHOS = ROOT.parent / "shared" / "data" / "ethos" / "Ethos_Dataset_Binary.csv"  # evaluation only, never copied here
CACHE = ROOT / "build" / "risk_bench"
RESULTS = ROOT / "bench" / "results"
# The built-in rule's prune term ([stages.decide.terms.risk]): risk > this queues a document.
PRUNE_THRESHOLD = float(DEFAULT_TERMS["risk"]["threshold"])
# Debian 12 versions of the inputs only this benchmark reads (epochs as apt spells them).
DEBS = {
    "fortunes": "1:1.99.1-7.3",
    "fortunes-es": "1.36",
    "fortunes-es-off": "1.36",
    "fortunes-it": "1.99-4.1",
    "fortunes-it-off": "1.99-4.1",
    "dict-foldoc": "20230119-1",
    "dict-gcide": sources.DEBIAN_PINS["dict-gcide"],
}


def fetch(package: str) -> Path:
    """``package`` at this benchmark's pinned version, unpacked under ``build/sources``."""
    return sources.fetch_deb(package, DEBS[package])


# -- the sets -------------------------------------------------------------------------------------


def _fortune_file(path: Path, rot13: bool) -> list[str]:
    text = path.read_bytes().decode("utf-8", errors="replace")
    items = [" ".join(e.split()) for e in re.split(r"\n%\n", text)]
    items = [e for e in items if len(e) >= 20]
    return [codecs.decode(e, "rot13") for e in items] if rot13 else items


def fortunes_set(lang: str) -> tuple[list[str], np.ndarray]:
    """Offensive (1) and clean (0) fortunes of one language, as their packagers split them."""
    if lang == "es":
        off_files = sorted((fetch("fortunes-es-off") / "usr/share/games/fortunes/off/es/off").glob("*.fortunes"))
        clean_files = sorted((fetch("fortunes-es") / "usr/share/games/fortunes/es").glob("*.fortunes"))
        off = [e for f in off_files for e in _fortune_file(f, rot13=True)]
    else:
        off_files = sorted(p for p in (fetch("fortunes-it-off") / "usr/share/games/fortunes/off/it").iterdir()
                           if p.is_file() and "." not in p.name)
        clean_files = sorted(p for p in (fetch("fortunes-it") / "usr/share/games/fortunes/it").iterdir()
                             if p.is_file() and "." not in p.name)
        off = [e for f in off_files for e in _fortune_file(f, rot13=False)]
    clean = [e for f in clean_files for e in _fortune_file(f, rot13=False)]
    return off + clean, np.r_[np.ones(len(off), np.int8), np.zeros(len(clean), np.int8)]


def ethos() -> tuple[list[str], np.ndarray] | None:
    """ETHOS binary, read in place (``bench/risk_sets.py``); None where the folder is absent."""
    import risk_sets

    return risk_sets.ethos()


SAMPLE = 2000  # items per labelled set in a full run (400 in a quick one)


def sample_index(name: str, n: int, cap: int) -> np.ndarray:
    """A seeded sample of ``cap`` of ``n`` positions, fixed per set name (a smaller cap takes a
    subset of a larger one's items)."""
    perm = np.random.default_rng(zlib.crc32(name.encode())).permutation(n)
    return np.sort(perm[:cap])


def fortunes_sample(lang: str) -> tuple[list[str], np.ndarray]:
    """The :data:`SAMPLE` fortunes of one language a full run scores (of ~10,000)."""
    texts, y = fortunes_set(lang)
    i = sample_index(f"fortunes_{lang}", len(texts), SAMPLE)
    return [texts[j] for j in i], y[i]


def davidson_test() -> tuple[list[str], np.ndarray]:
    tweets, toxic = risk_model.davidson("test")
    return tweets.to_pylist(), toxic


def _grouped(entries: list[str], n: int, seed: int) -> list[str]:
    docs = sources.group_paragraphs(entries, sources.MIN_CHARS, sources.MAX_CHARS, seed=seed)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(docs), size=min(n, len(docs)), replace=False)
    return [docs[i] for i in sorted(pick)]


N_PROSE = 600  # clean prose documents per source in a full run


def calibration_prose() -> list[str]:
    """Where the MiniLM options' flag thresholds are chosen: every held-out document of the example
    corpus's nights 2-3 (all six sources, minus copies of night-1 documents). None of it is trained
    on, and none of it is an evaluation set here (``commons_heldout`` is its literary part, reported
    for reference)."""
    from glia.models.risk_head import _read_nights, heldout_prose

    every = tuple(sorted(set(_read_nights(risk_model.HELDOUT_NIGHTS)["source"].to_pylist())))
    return heldout_prose(every)["text"].to_pylist()


def prose_sets(n: int = N_PROSE) -> dict[str, list[str]]:
    """Clean long prose no option trained on: the first ``n`` of :data:`N_PROSE` seeded documents
    per source (a quick run scores a prefix of a full run's documents)."""
    fetch("dict-gcide"), fetch("dict-foldoc")
    out = {}
    for name, pkg in (("gcide", "dict-gcide"), ("foldoc", "dict-foldoc")):
        entries = ["\n\n".join(" ".join(p.split()) for p in sources.paragraphs(e)) for e in sources.dictd_entries(pkg, name)]
        out[name] = _grouped(entries, N_PROSE, seed=1)[:n]
    root = fetch("fortunes") / "usr/share/games/fortunes"
    items = [e for f in sorted(root.iterdir()) if f.is_file() and "." not in f.name for e in _fortune_file(f, False)]
    out["fortunes_en"] = _grouped(items, N_PROSE, seed=2)[:n]
    out["commons_heldout"] = risk_model.heldout_prose()["text"].to_pylist()[:n]
    return out


# -- the options ----------------------------------------------------------------------------------

Scorer = Callable[[list[str]], np.ndarray]


def chunked(score_chunks: Scorer, max_chars: int) -> Scorer:
    """Score each text as the maximum over its sentence-packed chunks of at most ``max_chars``."""
    def score(texts: list[str]) -> np.ndarray:
        chunks, owner = risk_model.chunk(pa.array(texts, pa.string()), max_chars)
        return risk_model.max_by_owner(score_chunks(chunks.to_pylist()), owner, len(texts))
    return score


def _old_head(texts: list[str]) -> np.ndarray:
    return risk_model.load_default().score(pa.array(texts, pa.string()))


def _profanity(texts: list[str]) -> np.ndarray:
    from profanity_check import predict_prob

    return predict_prob(texts).astype(np.float32)


def _lstm(name: str) -> Scorer:
    def score(texts: list[str]) -> np.ndarray:
        from glia.models import risk_lstm

        return risk_lstm.load(name).predict(texts, "toxic")
    return score


def mean_of(*scorers: Scorer) -> Scorer:
    """Mean of the members' probabilities (no weights fitted: nothing here is tuned on the sets)."""
    def score(texts: list[str]) -> np.ndarray:
        return np.mean([s(texts) for s in scorers], axis=0).astype(np.float32)
    return score


def _lstm_doc(name: str, output: str) -> Scorer:
    def score(texts: list[str]) -> np.ndarray:
        from glia.models import risk_lstm

        return risk_lstm.load(name).predict(texts, output)
    return score


def _tagger(**kwargs) -> Scorer:
    """The shipped ``risk`` tagger itself (``RiskTagger(**kwargs).scores``): what a night computes."""
    from glia.taggers.risk import RiskTagger

    tagger = RiskTagger(**kwargs)
    return lambda texts: tagger.scores(pa.array(texts, pa.string()))



@dataclass
class Option:
    """One row: how it scores documents, its own flag threshold and what it was trained on.

    ``scorer`` scores raw texts (the classic options); a MiniLM option (``minilm``, a key of
    ``build_risk_minilm.option_scorers``) is scored from the base model's cached outputs, its
    fold models on the held-out posts, and its threshold is chosen on the calibration prose.
    ``tagger`` are the ``RiskTagger`` arguments that run it in a night (for the speed columns);
    ``trained_sets`` the labelled sets among ours it trained on (its held-out columns for them
    are in-platform, marked so)."""

    name: str
    trained_on: str
    threshold: float | None = None
    scorer: Scorer | None = None
    minilm: str | None = None
    ensemble_with_lstm: bool = False
    tagger: dict | None = None
    trained_sets: tuple[str, ...] = ()


THREE = "Twitter + Gab (Davidson train, Implicit Hate, HateXplain)"
WIKI = "Wikipedia talk pages (Jigsaw)"


def options() -> list[Option]:
    from glia.models import risk_lstm

    lstm_a, lstm_b = chunked(_lstm("tox_block"), 500), chunked(_lstm("toxic_classifier"), 500)
    prof = chunked(_profanity, 300)
    out = [
        Option("lstm: tox-block LSTM, mean of 6", WIKI, risk_lstm.DEFAULT_THRESHOLD, _tagger(backend="lstm"),
               tagger={"backend": "lstm"}),
        Option("ngram head", "Twitter (Davidson train) + night-1 prose", risk_model.DEFAULT_THRESHOLD,
               _tagger(backend="ngram"), tagger={"backend": "ngram"}, trained_sets=("davidson",)),
        Option("alt-profanity-check", "Twitter (Davidson) + Wikipedia (Jigsaw), per its README", 0.5, prof,
               trained_sets=("davidson",)),
        Option("lstm tox-block, toxic", WIKI, 0.5, lstm_a),
        Option("lstm tox-block, toxic, whole doc", WIKI, 0.5, _lstm("tox_block")),
        Option("lstm tox-block, raw mean of 6", WIKI, 0.5, chunked(_lstm_doc("tox_block", "mean_raw"), 500)),
        # identity_hate alone: the output whose label matches a hate-speech set; it loses the rest of toxicity.
        Option("lstm tox-block, identity_hate", WIKI, 0.5, chunked(_lstm_doc("tox_block", "identity_hate"), 500)),
        Option("lstm toxic-comment-clf, toxic", WIKI, 0.5, lstm_b),
        Option("lstm toxic-comment-clf, identity_hate", WIKI, 0.5,
               chunked(_lstm_doc("toxic_classifier", "identity_hate"), 500)),
        Option("lstm toxic-comment-clf, mean of 6", WIKI, 0.5, chunked(_lstm_doc("toxic_classifier", "mean"), 500)),
        Option("mean 2 lstm, toxic", WIKI, 0.5, mean_of(lstm_a, lstm_b)),
        Option("mean 2 lstm + profanity", "Wikipedia + Twitter", 0.5, mean_of(lstm_a, lstm_b, prof),
               trained_sets=("davidson",)),
        Option("mean 2 lstm + ngram head", "Wikipedia + Twitter", 0.5, mean_of(lstm_a, lstm_b, _old_head),
               trained_sets=("davidson",)),
    ]
    from glia.taggers.risk import default_threshold

    every = ("davidson", "implicit_hate", "hatexplain")
    out += [
        Option("(a) minilm head on embeddings", THREE, default_threshold("minilm-head"), minilm="(a) head on embeddings",
               tagger={"backend": "minilm-head"}, trained_sets=every),
        Option("(a) minilm head, + prose negatives", THREE + " + night-1 prose", minilm="(a) head, + prose negatives",
               trained_sets=every),
        Option("(a)+(d) minilm head, windows", THREE, minilm="(a)+(d) head, sentence windows", trained_sets=every),
        Option("(b) minilm fine-tuned, whole", THREE, minilm="(b) fine-tuned top layers", trained_sets=every),
        Option("(b)+(d) minilm fine-tuned, windows", THREE, default_threshold("minilm"), minilm="(b)+(d) fine-tuned, sentence windows",
               tagger={"backend": "minilm"}, trained_sets=every),
        Option("(b)+(d) minilm fine-tuned, packed windows", THREE, minilm="(b)+(d) fine-tuned, packed windows",
               trained_sets=every),
        Option("(c) mean of (a) and lstm", THREE + " + " + WIKI, minilm="(a) head on embeddings",
               ensemble_with_lstm=True, trained_sets=every),
        Option("(c) mean of (a)+(d) and lstm", THREE + " + " + WIKI, minilm="(a)+(d) head, sentence windows",
               ensemble_with_lstm=True, trained_sets=every),
        Option("(c) mean of (b) and lstm", THREE + " + " + WIKI, minilm="(b) fine-tuned top layers",
               ensemble_with_lstm=True, trained_sets=every),
        # The default (backend "minilm-lstm"): what RiskTagger() computes.
        Option("(c) mean of (b)+(d) and lstm", THREE + " + " + WIKI, default_threshold("minilm-lstm"), minilm="(b)+(d) fine-tuned, sentence windows",
               ensemble_with_lstm=True, tagger={"backend": "minilm-lstm"}, trained_sets=every),
    ]
    return out


# -- scoring --------------------------------------------------------------------------------------


def heldout_sets(n: int) -> dict[str, tuple[list[str], np.ndarray]]:
    """Each fold's held-out posts (``bench/risk_sets.py``: the set left out, minus texts the fold
    trained on, a seeded sample of ``n``), the same posts the MiniLM fold models are scored on."""
    import risk_sets

    out = {}
    for held in risk_sets.SETS:
        seen = set().union(*(risk_sets.training_set(s)[0] for s in risk_sets.SETS if s != held))
        texts, y, _ = risk_sets.heldout_sample(held, seen)
        out[f"heldout_{held}"] = (texts[:n], y[:n])
    return out


def minilm_scores(tune_args: dict | None) -> dict[str, dict[str, np.ndarray]]:
    """Every MiniLM option's scores from ``bench/build_risk_minilm.py`` (cached base-model outputs;
    models trained on all three sets for the evaluation sets, fold models for the held-out posts;
    the fine-tuned models are cached, the heads train in seconds), keyed by option, then by set."""
    import build_risk_minilm as brm
    import risk_sets

    tune = brm.Tune(**(tune_args or {}))
    corpus = brm.Corpus()
    final = brm.train_all(corpus, risk_sets.SETS, brm.model_folder(corpus.cache, "all", tune), tune)
    out = brm.evaluate(corpus, final, None)["scores"]
    for held in risk_sets.SETS:
        names = tuple(s for s in risk_sets.SETS if s != held)
        fold = brm.train_all(corpus, names, brm.model_folder(corpus.cache, held, tune), tune)
        for name, sc in brm.evaluate(corpus, fold, held)["scores"].items():
            out[name][f"heldout_{held}"] = sc[f"heldout_{held}"]
    return out


def speed(opts: list[Option], n_docs: int = 300) -> dict[str, dict[str, float]]:
    """docs/s of ``RiskTagger.tag`` per option with a tagger, on ``n_docs`` held-out documents of the
    example corpus (~1,500 characters), on this machine's CPU: ``with_embeddings`` given the
    embedding tagger's output (what ``minilm-head`` reads), ``from_text`` including the embedding
    pass that ``minilm-head`` needs. Each number is the best of two timed runs after a warm-up."""
    from glia.taggers.embedding import EmbeddingTagger
    from glia.taggers.risk import RiskTagger

    texts = calibration_prose()[:n_docs]
    batch = pa.table({"doc_id": [f"d{i}" for i in range(len(texts))], "text": pa.array(texts, pa.string())})
    emb_tagger = EmbeddingTagger(device="cpu")

    def timed(fn) -> float:
        fn(batch.slice(0, 8))
        best = float("inf")
        for _ in range(2):
            t0 = time.perf_counter()
            fn(batch)
            best = min(best, time.perf_counter() - t0)
        return len(texts) / best

    embedded = batch.append_column("_embedding", emb_tagger.tag(batch)["_embedding"])
    emb_rate = timed(emb_tagger.tag)
    out = {"embedding tagger (minilm, 128 tokens)": {"from_text": emb_rate}}
    for o in opts:
        if o.tagger is None:
            continue
        t = RiskTagger(**o.tagger, device="cpu") if o.tagger["backend"].startswith("minilm") else RiskTagger(**o.tagger)
        if o.tagger["backend"] == "minilm-head":
            t.bind({"embedding": emb_tagger, "risk": t})  # as registry.build binds it in a night
            assert t.needs == ("embedding",), "minilm-head would embed the documents itself"
            with_emb = timed(lambda b: t.tag(embedded.slice(0, b.num_rows)))
            out[o.name] = {"with_embeddings": with_emb, "from_text": 1.0 / (1.0 / with_emb + 1.0 / emb_rate)}
        else:
            rate = timed(t.tag)
            out[o.name] = {"with_embeddings": rate, "from_text": rate}
        if o.tagger["backend"] in ("minilm", "minilm-lstm") and t.resolved_dtype() != "float32":
            # The float32 reference beside the default dtype (bf16 on a CPU with native bf16).
            rate = timed(RiskTagger(**o.tagger, device="cpu", dtype="float32").tag)
            out[f"{o.name}, float32"] = {"with_embeddings": rate, "from_text": rate}
    return {k: {m: round(v, 1) for m, v in r.items()} for k, r in out.items()}


def head_vector_agreement(n_docs: int = 400) -> dict[str, dict[str, float]]:
    """How much ``minilm-head``'s scores move when it reads the embedding tagger's stored vectors
    from another backend (bf16 is the default on a CPU with native bf16) instead of the float32
    vectors it was trained and calibrated on: per backend, the largest and the mean absolute
    difference in ``risk`` and how many of ``n_docs`` documents change flag, on Davidson test
    tweets and held-out example-corpus prose (half each)."""
    from glia.models import risk_minilm
    from glia.taggers.embedding import EmbeddingTagger

    tweets = davidson_test()[0]
    texts = [tweets[i] for i in sample_index("agreement", len(tweets), n_docs // 2)] + calibration_prose()[: n_docs // 2]
    batch = pa.table({"doc_id": [f"d{i}" for i in range(len(texts))], "text": pa.array(texts, pa.string())})
    head = risk_minilm.load_head()
    ref = head.predict(risk_minilm.encode(texts).emb)
    out = {}
    for backend in ("torch-fp32", "torch-bf16"):
        tagger = EmbeddingTagger(device="cpu", backend=backend)
        v = tagger.tag(batch)["_embedding"].combine_chunks()
        s = head.predict(np.asarray(v.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(len(texts), -1))
        out[backend] = {"max_abs_diff": round(float(np.abs(s - ref).max()), 5),
                        "mean_abs_diff": round(float(np.abs(s - ref).mean()), 5),
                        "flag_changes": int(((s >= head.threshold) != (ref >= head.threshold)).sum()), "n": len(texts)}
    return out


# -- metrics --------------------------------------------------------------------------------------


def _rates(y: np.ndarray, s: np.ndarray, thr: float, strict: bool = False) -> dict[str, float]:
    hit = s > thr if strict else s >= thr
    tp = int((hit & (y == 1)).sum())
    fp = int((hit & (y == 0)).sum())
    return {"tpr": tp / max(int((y == 1).sum()), 1), "fpr": fp / max(int((y == 0).sum()), 1),
            "precision": tp / max(tp + fp, 1)}


def calibrated(clean: np.ndarray, fpr: float = 0.005) -> float:
    """The lowest threshold that flags (``>=``) at most ``fpr`` of the clean documents."""
    s = np.sort(np.asarray(clean, np.float32))
    return float(np.nextafter(s[int(np.ceil(len(s) * (1 - fpr))) - 1], np.float32(2)))


def report(quick: bool = False, only: list[str] | None = None, minilm: bool = False,
           tune: dict | None = None, timing: bool = True) -> dict:
    """Every option's ROC-AUC on ETHOS, Davidson's test tweets, the Spanish and Italian fortunes and
    each fold's held-out posts; its flag threshold (the MiniLM options': chosen on the calibration
    prose, <= 0.5 % of it flagged); TPR/FPR at its flag threshold, at the built-in prune term and at
    its own calibrated threshold; the share of each clean prose set flagged; docs/s. Each labelled
    set is a seeded sample of at most 2,000 items (400 with ``quick``), each held-out fold 4,000
    (400), each prose source 600 documents (150). The MiniLM rows run only with ``minilm``: their
    first run embeds ~70,000 texts and fine-tunes four models (hours on 2 cores; cached after)."""
    from sklearn.metrics import roc_auc_score

    cap, n_held, n_prose = (400, 400, 150) if quick else (SAMPLE, 4000, N_PROSE)

    def sample(name: str, texts: list[str], y: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
        i = sample_index(name, len(texts), cap)
        return [texts[j] for j in i], y[i], i

    labelled: dict[str, tuple[list[str], np.ndarray, np.ndarray]] = {}
    notes = []
    e = ethos()
    if e is None:
        notes.append(f"ethos skipped: {ETHOS} is absent")
    else:
        labelled["ethos"] = sample("ethos", *e)
    labelled["davidson_test"] = sample("davidson_test", *davidson_test())
    for lang in ("es", "it"):
        labelled[f"fortunes_{lang}"] = sample(f"fortunes_{lang}", *fortunes_sample(lang))
    for name, (texts, y) in heldout_sets(n_held).items():
        labelled[name] = (texts, y, np.arange(len(texts)))
    prose = prose_sets(n_prose)
    prose["calibration"] = calibration_prose()

    chosen = [o for o in options() if (not only or any(o.name.startswith(p) for p in only)) and (minilm or o.minilm is None)]
    mscores = minilm_scores(tune) if any(o.minilm for o in chosen) else {}
    lstm_default = next(o for o in options() if o.name.startswith("lstm: "))

    out: dict = {"quick": quick, "minilm": minilm, "notes": notes, "prune_threshold": PRUNE_THRESHOLD,
                 "sets": {k: {"n": len(v[1]), "positives": int(v[1].sum())} for k, v in labelled.items()},
                 "prose": {k: len(v) for k, v in prose.items()}, "options": {}}
    lstm_cache: dict[str, np.ndarray] = {}

    def scores_of(o: Option, set_name: str, texts: list[str], idx: np.ndarray | None) -> np.ndarray:
        if o.name == lstm_default.name:  # scored once, shared with the (c) ensembles
            if set_name not in lstm_cache:
                lstm_cache[set_name] = o.scorer(texts)
            return lstm_cache[set_name]
        if o.minilm is None:
            return o.scorer(texts)
        key = "commons_calibration" if set_name == "calibration" else set_name
        s = mscores[o.minilm][key]
        s = s if idx is None else s[idx]
        if o.ensemble_with_lstm:
            if set_name not in lstm_cache:
                lstm_cache[set_name] = lstm_default.scorer(texts)
            s = (s + lstm_cache[set_name]) / 2
        return s.astype(np.float32)

    for o in chosen:
        t0 = time.monotonic()
        prose_scores = {src: scores_of(o, src, texts, None if src == "calibration" else np.arange(len(texts)))
                        for src, texts in prose.items()}
        matched = calibrated(prose_scores["calibration"])
        thr = matched if o.threshold is None else o.threshold
        row: dict = {"flag_threshold": round(thr, 4), "matched_threshold": round(matched, 4), "trained_on": o.trained_on,
                     # A MiniLM option's held-out columns are its fold models' (trained without that set).
                     "in_platform": ([] if o.minilm else [f"heldout_{s}" for s in o.trained_sets])
                     + (["davidson_test"] if "davidson" in o.trained_sets else []),
                     "sets": {}, "prose": {}}
        for set_name, (texts, y, idx) in labelled.items():
            s = scores_of(o, set_name, texts, idx)
            row["sets"][set_name] = {"roc_auc": round(float(roc_auc_score(y, s)), 4),
                                     "at_flag": {k: round(v, 4) for k, v in _rates(y, s, thr).items()},
                                     "at_prune": {k: round(v, 4) for k, v in _rates(y, s, PRUNE_THRESHOLD, True).items()},
                                     "at_matched": {k: round(v, 4) for k, v in _rates(y, s, matched).items()}}
        for src, s in prose_scores.items():
            row["prose"][src] = {"flag_rate": round(float(np.mean(s >= thr)), 4),
                                 "prune_rate": round(float(np.mean(s > PRUNE_THRESHOLD)), 4),
                                 "matched_rate": round(float(np.mean(s >= matched)), 4),
                                 "max": round(float(s.max()), 4)}
        eval_prose = [v for k, v in row["prose"].items() if k not in ("commons_heldout", "calibration")]
        row["clean_prose_flag_rate"] = round(float(np.mean([v["flag_rate"] for v in eval_prose])), 4)
        row["clean_prose_prune_rate"] = round(float(np.mean([v["prune_rate"] for v in eval_prose])), 4)
        out["options"][o.name] = row
        print(f"  {o.name}: done in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    if any(o.tagger == {"backend": "minilm-head"} for o in chosen):
        out["head_vector_agreement"] = head_vector_agreement()
    if timing:
        out["speed"] = speed(chosen)
        out["load_average"] = [round(x, 2) for x in os.getloadavg()]
        for name, sp in out["speed"].items():
            if name in out["options"]:
                out["options"][name]["docs_per_s"] = sp
    return out


def print_table(res: dict) -> None:
    """ROC-AUC per set; TPR/FPR and prose flag rates at the flag threshold, at the built-in prune
    term and at each option's calibrated threshold; docs/s."""
    sets = list(res["sets"])
    print(f"sets (n, positives): {', '.join(k + ' ' + str(v['n']) + '/' + str(v['positives']) for k, v in res['sets'].items())}")
    print(f"clean prose documents per source: {res['prose']}")
    for n in res["notes"]:
        print("note:", n)
    srcs = next(iter(res["options"].values()))["prose"].keys() if res["options"] else []
    cols = " ".join(f"{s.removeprefix('heldout_')[:12]:>12s}" for s in sets)
    pcols = " ".join(f"{s[:9]:>9s}" for s in srcs)
    print(f"\nROC-AUC (* = in-platform: the option trained on that set)\n{'option':40s} {cols}   trained on")
    for name, r in res["options"].items():
        cells = " ".join(f"{r['sets'][s]['roc_auc']:11.3f}{'*' if s in r['in_platform'] else ' '}" for s in sets)
        print(f"{name[:40]:40s} {cells}   {r['trained_on']}")
    for key, label, pkey in (("at_flag", "at the flag threshold (thr)", "flag_rate"),
                             ("at_prune", f"at the prune rule risk > {res['prune_threshold']}", "prune_rate"),
                             ("at_matched", "at the calibrated threshold (<= 0.5 % of the calibration prose)",
                              "matched_rate")):
        print(f"\nTPR/FPR % {label}; clean prose flagged %\n{'option':34s} {'thr':>6s} {cols}  {pcols}")
        for name, r in res["options"].items():
            thr = r["flag_threshold"] if key == "at_flag" else res["prune_threshold"] if key == "at_prune" else r["matched_threshold"]
            cells = " ".join(f"{r['sets'][s][key]['tpr']*100:5.1f}/{r['sets'][s][key]['fpr']*100:4.1f}".rjust(12) for s in sets)
            pr = " ".join(f"{v[pkey]*100:9.2f}" for v in r["prose"].values())
            print(f"{name[:34]:34s} {thr:6.3f} {cells}  {pr}")
    for backend, a in res.get("head_vector_agreement", {}).items():
        print(f"minilm-head on {backend} vectors vs the float32 ones it was trained on: max |diff| {a['max_abs_diff']}, "
              f"mean {a['mean_abs_diff']}, {a['flag_changes']} of {a['n']} flags change")
    if res.get("speed"):
        print(f"\ndocs/s on this CPU (load average {res.get('load_average')}): "
              + "; ".join(f"{n}: " + ", ".join(f"{k} {v:,.0f}" for k, v in sp.items()) for n, sp in res["speed"].items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="400 items per set, 150 prose documents per source")
    ap.add_argument("--options", default="", help="comma-separated prefixes: only the options whose names start with one")
    ap.add_argument("--minilm", action="store_true", help="also the MiniLM rows (their first run takes hours; cached)")
    ap.add_argument("--no-timing", action="store_true", help="skip the docs/s measurement")
    args = ap.parse_args()
    res = report(args.quick, [o for o in args.options.split(",") if o] or None, args.minilm, timing=not args.no_timing)
    print_table(res)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"quality_risk{'_quick' if args.quick else ''}{'_minilm' if args.minilm else ''}.json"
    path.write_text(json.dumps(res, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
