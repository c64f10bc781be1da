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
built-in rule's prune threshold (``risk > 0.5``, ``PRUNE_THRESHOLD``); per prose source, the share flagged at both.
"""

from __future__ import annotations

import argparse
import codecs
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

import sources  # noqa: E402

from glia.curation.rules import DEFAULT_TERMS  # noqa: E402
from glia.models import risk_head as risk_model  # noqa: E402

ETHOS = ROOT.parent / "shared" / "data" / "ethos" / "Ethos_Dataset_Binary.csv"
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
    if not ETHOS.exists():
        return None
    import csv

    with open(ETHOS, encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter=";"))
    return [r["comment"] for r in rows], np.array([float(r["isHate"]) >= 0.5 for r in rows], np.int8)


def davidson_test() -> tuple[list[str], np.ndarray]:
    tweets, toxic = risk_model.davidson("test")
    return tweets.to_pylist(), toxic


def _grouped(entries: list[str], n: int, seed: int) -> list[str]:
    docs = sources.group_paragraphs(entries, sources.MIN_CHARS, sources.MAX_CHARS, seed=seed)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(docs), size=min(n, len(docs)), replace=False)
    return [docs[i] for i in sorted(pick)]


def prose_sets(n: int) -> dict[str, list[str]]:
    """Clean long prose no option trained on: ``n`` documents per source."""
    fetch("dict-gcide"), fetch("dict-foldoc")
    out = {}
    for name, pkg in (("gcide", "dict-gcide"), ("foldoc", "dict-foldoc")):
        entries = ["\n\n".join(" ".join(p.split()) for p in sources.paragraphs(e)) for e in sources.dictd_entries(pkg, name)]
        out[name] = _grouped(entries, n, seed=1)
    root = fetch("fortunes") / "usr/share/games/fortunes"
    items = [e for f in sorted(root.iterdir()) if f.is_file() and "." not in f.name for e in _fortune_file(f, False)]
    out["fortunes_en"] = _grouped(items, n, seed=2)
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


def _minilm_embed(texts: list[str]) -> np.ndarray:
    from glia.taggers.embedding import load_encoder, resolve_model

    path, kind = resolve_model("minilm")
    vecs, _ = load_encoder(path, kind, "cpu").embed(texts, 128, 64)
    return np.asarray(vecs, np.float32)


def _embed_cached(tag: str, texts: list[str]) -> np.ndarray:
    """MiniLM embeddings of ``texts``, cached on disk by a hash of the texts (they take minutes)."""
    import hashlib

    h = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]
    f = CACHE / "emb" / f"{tag}-{h}.npy"
    if f.exists():
        return np.load(f)
    f.parent.mkdir(parents=True, exist_ok=True)
    v = _minilm_embed(texts)
    np.save(f, v)
    return v


_MINILM_HEAD: list = []


def _minilm_lr(texts: list[str]) -> np.ndarray:
    """Logistic regression on MiniLM embeddings, trained on Davidson's train split plus night-1
    prose chunks (the old head's data), balanced classes."""
    if not _MINILM_HEAD:
        from sklearn.linear_model import LogisticRegression

        tweets, toxic = risk_model.davidson("train")
        prose, _ = risk_model.chunk(risk_model.train_prose(), 300)
        # A seeded 6,000-tweet, 2,000-chunk sample: MiniLM embeds ~40-150 texts/s on 2 shared cores.
        rng = np.random.default_rng(0)
        ti, pi = np.sort(rng.choice(len(tweets), 6000, replace=False)), np.sort(rng.choice(len(prose), 2000, replace=False))
        tweets, toxic, prose = tweets.take(pa.array(ti)), toxic[ti], prose.take(pa.array(pi))
        x = np.vstack([_embed_cached("davidson_train", tweets.to_pylist()), _embed_cached("night1", prose.to_pylist())])
        y = np.r_[toxic, np.zeros(len(prose), np.int8)]
        _MINILM_HEAD.append(LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000).fit(x, y))
    return _MINILM_HEAD[0].predict_proba(_embed_cached("eval", texts))[:, 1].astype(np.float32)


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


# name -> (scorer on documents, flag threshold, trained on). Every LSTM row but "whole doc" is
# scored per chunk of at most 500 characters (the LSTM reads the last 100 words it is given).
def options() -> dict[str, tuple[Scorer, float, str]]:
    from glia.models import risk_lstm

    wiki = "Wikipedia talk pages (Jigsaw)"
    lstm_a, lstm_b = chunked(_lstm("tox_block"), 500), chunked(_lstm("toxic_classifier"), 500)
    prof = chunked(_profanity, 300)
    minilm = chunked(_minilm_lr, 300)
    return {
        "DEFAULT: lstm tox-block, mean of 6": (_tagger(), risk_lstm.DEFAULT_THRESHOLD, wiki),
        "ngram head (default before)": (_tagger(backend="ngram"), risk_model.DEFAULT_THRESHOLD,
                                        "Twitter (Davidson train) + night-1 prose"),
        "alt-profanity-check": (prof, 0.5, "Twitter (Davidson) + Wikipedia (Jigsaw), per its README"),
        "lstm tox-block, toxic": (lstm_a, 0.5, wiki),
        "lstm tox-block, toxic, whole doc": (_lstm("tox_block"), 0.5, wiki),
        "lstm tox-block, raw mean of 6": (chunked(_lstm_doc("tox_block", "mean_raw"), 500), 0.5, wiki),
        # identity_hate alone: the output whose label matches a hate-speech set; not the default,
        # which must also catch toxicity that is not hate (it is lower on the tweets).
        "lstm tox-block, identity_hate": (chunked(_lstm_doc("tox_block", "identity_hate"), 500), 0.5, wiki),
        "lstm toxic-comment-clf, toxic": (lstm_b, 0.5, wiki),
        "lstm toxic-comment-clf, identity_hate": (chunked(_lstm_doc("toxic_classifier", "identity_hate"), 500), 0.5, wiki),
        "lstm toxic-comment-clf, mean of 6": (chunked(_lstm_doc("toxic_classifier", "mean"), 500), 0.5, wiki),
        "mean 2 lstm, toxic": (mean_of(lstm_a, lstm_b), 0.5, wiki),
        "mean 2 lstm + profanity": (mean_of(lstm_a, lstm_b, prof), 0.5, "Wikipedia + Twitter"),
        "mean 2 lstm + ngram head": (mean_of(lstm_a, lstm_b, _old_head), 0.5, "Wikipedia + Twitter"),
        "minilm LR": (minilm, 0.5, "Twitter (6k Davidson train) + night-1 prose"),
        "mean 2 lstm + minilm LR": (mean_of(lstm_a, lstm_b, minilm), 0.5, "Wikipedia + Twitter"),
    }


# -- metrics --------------------------------------------------------------------------------------


def _rates(y: np.ndarray, s: np.ndarray, thr: float, strict: bool = False) -> dict[str, float]:
    hit = s > thr if strict else s >= thr
    tp = int((hit & (y == 1)).sum())
    fp = int((hit & (y == 0)).sum())
    return {"tpr": tp / max(int((y == 1).sum()), 1), "fpr": fp / max(int((y == 0).sum()), 1),
            "precision": tp / max(tp + fp, 1)}


def report(quick: bool = False, only: list[str] | None = None, minilm: bool = False) -> dict:
    """Every option's ROC-AUC, TPR/FPR at its flag threshold and at the built-in prune term, and its
    flag rate on clean prose. Each labelled set is a seeded sample of at most 2,000 items (400 with
    ``quick``), each prose source 600 documents (150). The MiniLM rows run only with ``minilm``
    (MiniLM embeds ~40-150 texts/s on 2 shared cores; their embeddings are cached in build/)."""
    from sklearn.metrics import roc_auc_score

    cap, n_prose = (400, 150) if quick else (2000, 600)
    rng = np.random.default_rng(0)

    def sample(texts: list[str], y: np.ndarray) -> tuple[list[str], np.ndarray]:
        if cap is None or len(texts) <= cap:
            return texts, y
        i = np.sort(rng.choice(len(texts), cap, replace=False))
        return [texts[j] for j in i], y[i]

    labelled: dict[str, tuple[list[str], np.ndarray]] = {}
    notes = []
    e = ethos()
    if e is None:
        notes.append(f"ethos skipped: {ETHOS} is absent")
    else:
        labelled["ethos"] = sample(*e)
    labelled["davidson_test"] = sample(*davidson_test())
    for lang in ("es", "it"):
        labelled[f"fortunes_{lang}"] = sample(*fortunes_set(lang))
    prose = prose_sets(n_prose)

    out: dict = {"quick": quick, "minilm": minilm, "notes": notes, "prune_threshold": PRUNE_THRESHOLD,
                 "sets": {k: {"n": len(v[1]), "positives": int(v[1].sum())} for k, v in labelled.items()},
                 "prose": {k: len(v) for k, v in prose.items()}, "options": {}}
    for name, (scorer, thr, trained_on) in options().items():
        if only and not any(name.startswith(o) for o in only):
            continue
        if "minilm" in name and not minilm:
            continue
        row: dict = {"flag_threshold": thr, "trained_on": trained_on, "sets": {}, "prose": {}}
        t0, n_docs = time.monotonic(), 0
        prose_scores = {src: scorer(texts) for src, texts in prose.items()}
        n_docs += sum(len(t) for t in prose.values())
        # Each option's own operating point at equal cost: the lowest threshold that flags at most
        # 0.5 % of the example corpus's held-out literary paragraphs (never the evaluation sets).
        com = np.sort(prose_scores["commons_heldout"])
        matched = float(np.nextafter(com[int(np.ceil(len(com) * 0.995)) - 1], np.float32(2)))
        row["matched_threshold"] = round(matched, 4)
        for set_name, (texts, y) in labelled.items():
            s = scorer(texts)
            n_docs += len(texts)
            row["sets"][set_name] = {"roc_auc": round(float(roc_auc_score(y, s)), 4),
                                     "at_flag": {k: round(v, 4) for k, v in _rates(y, s, thr).items()},
                                     "at_prune": {k: round(v, 4) for k, v in _rates(y, s, PRUNE_THRESHOLD, True).items()},
                                     "at_matched": {k: round(v, 4) for k, v in _rates(y, s, matched).items()}}
        for src, s in prose_scores.items():
            row["prose"][src] = {"flag_rate": round(float(np.mean(s >= thr)), 4),
                                 "prune_rate": round(float(np.mean(s > PRUNE_THRESHOLD)), 4),
                                 "matched_rate": round(float(np.mean(s >= matched)), 4),
                                 "max": round(float(s.max()), 4)}
        eval_prose = [v for k, v in row["prose"].items() if k != "commons_heldout"]
        row["clean_prose_flag_rate"] = round(float(np.mean([v["flag_rate"] for v in eval_prose])), 4)
        row["clean_prose_prune_rate"] = round(float(np.mean([v["prune_rate"] for v in eval_prose])), 4)
        row["docs_per_s"] = round(n_docs / (time.monotonic() - t0), 1)
        out["options"][name] = row
        print(f"  {name}: done in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    return out


def print_table(res: dict) -> None:
    """Four blocks: ROC-AUC; TPR/FPR and prose flag rates at the flag threshold, at the built-in prune
    term and at the commons-matched threshold."""
    sets = list(res["sets"])
    print(f"sets (n, positives): {', '.join(k + ' ' + str(v['n']) + '/' + str(v['positives']) for k, v in res['sets'].items())}")
    print(f"clean prose documents per source: {res['prose']}")
    for n in res["notes"]:
        print("note:", n)
    srcs = next(iter(res["options"].values()))["prose"].keys() if res["options"] else []
    cols = " ".join(f"{s[:14]:>14s}" for s in sets)
    pcols = " ".join(f"{s[:9]:>9s}" for s in srcs)
    print(f"\nROC-AUC\n{'option':36s} {cols}   trained on")
    for name, r in res["options"].items():
        print(f"{name[:36]:36s} " + " ".join(f"{r['sets'][s]['roc_auc']:14.3f}" for s in sets) + f"   {r['trained_on']}")
    for key, label, pkey in (("at_flag", "at the flag threshold (thr)", "flag_rate"),
                             ("at_prune", f"at the prune rule risk > {res['prune_threshold']}", "prune_rate"),
                             ("at_matched", "at the commons-matched threshold (<= 0.5 % of held-out literary paragraphs)",
                              "matched_rate")):
        print(f"\nTPR/FPR % {label}; clean prose flagged %\n{'option':30s} {'thr':>5s} {cols}  {pcols}")
        for name, r in res["options"].items():
            thr = r["flag_threshold"] if key == "at_flag" else res["prune_threshold"] if key == "at_prune" else r["matched_threshold"]
            cells = " ".join(f"{r['sets'][s][key]['tpr']*100:7.1f}/{r['sets'][s][key]['fpr']*100:4.1f}".rjust(14) for s in sets)
            pr = " ".join(f"{v[pkey]*100:9.2f}" for v in r["prose"].values())
            print(f"{name[:30]:30s} {thr:5.3f} {cells}  {pr}")
    print("\nspeed (docs/s over all sets and prose):", ", ".join(f"{n} {r['docs_per_s']:.0f}" for n, r in res["options"].items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="400 items per set, 150 prose documents per source")
    ap.add_argument("--options", default="", help="comma-separated prefixes: only the options whose names start with one")
    ap.add_argument("--minilm", action="store_true", help="also the MiniLM-embedding rows (slow: minutes to embed)")
    args = ap.parse_args()
    res = report(args.quick, [o for o in args.options.split(",") if o] or None, args.minilm)
    print_table(res)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"quality_risk{'_quick' if args.quick else ''}{'_minilm' if args.minilm else ''}.json"
    path.write_text(json.dumps(res, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
