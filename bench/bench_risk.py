"""Benchmark: the ``risk`` tagger's default toxicity head on data it was not trained on.

    .venv/bin/python bench/bench_risk.py [--out bench/results] [--no-loso]

- Training: the default head trained from scratch in this process and stored in the model cache.
- ROC-AUC on Davidson et al. 2017's held-out ``test`` split (4,957 tweets, stratified, stored in
  ``models/data/davidson-2017/labeled_data.parquet``; toxic = hate speech or offensive, clean =
  neither), overall and for hate-only and offensive-only against neither; rates at the flag
  threshold.
- Clean-prose false-positive rate: share of held-out literary paragraphs (nights 2-3 of the
  example corpus, Austen, KJV, Shakespeare, Jargon File, Devil's Dictionary, minus every copy of
  a night-1 document) whose risk reaches the threshold; the head trained on night 1's prose.
- Leave-one-source-out (``--no-loso`` skips it): the head retrained with the prose of every night
  except one source's, scored on that source: how the prose negatives carry to an unseen style.
  And an ablation: the head trained on the tweets alone, without prose negatives.
- Speed: documents per second of ``RiskTagger.tag`` on the 3,100 example documents (~1.3k
  characters) and on the held-out tweets, one process.
- alt-profanity-check, only if it is installed (it is not a dependency), per chunk as well.

Results go to stdout and ``<out>/bench_risk.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from glia.models import risk_head as rm  # noqa: E402
from glia.taggers.risk import RiskTagger  # noqa: E402


def rates(scores: np.ndarray, toxic: np.ndarray, threshold: float) -> dict[str, float]:
    return {"tpr": float(np.mean(scores[toxic == 1] >= threshold)), "fpr": float(np.mean(scores[toxic == 0] >= threshold))}


def tweet_metrics(scores: np.ndarray, threshold: float) -> dict[str, float]:
    cls = pq.read_table(rm.DAVIDSON, columns=["class", "split"])
    cls = cls.filter(pc.equal(pc.cast(cls["split"], pa.string()), "test"))["class"].to_numpy()
    toxic = (cls != 2).astype(np.int8)
    hate, off = cls != 1, cls != 0  # each against "neither"
    return {
        "roc_auc": rm.roc_auc(toxic, scores),
        "roc_auc_hate_vs_neither": rm.roc_auc(toxic[hate], scores[hate]),
        "roc_auc_offensive_vs_neither": rm.roc_auc(toxic[off], scores[off]),
        **{f"tweet_{k}_at_threshold": v for k, v in rates(scores, toxic, threshold).items()},
        **{f"tweet_{k}_at_0.5": v for k, v in rates(scores, toxic, 0.5).items()},
    }


def prose_metrics(scores: np.ndarray, sources: np.ndarray, threshold: float) -> dict[str, object]:
    return {
        "prose_fpr_at_threshold": float(np.mean(scores >= threshold)),
        "prose_fpr_at_0.5": float(np.mean(scores >= 0.5)),
        "prose_max_risk": float(scores.max()),
        "prose_fpr_by_source": {s: float(np.mean(scores[sources == s] >= threshold)) for s in sorted(set(sources))},
        "n_prose": len(scores),
    }


def loso(threshold: float) -> dict[str, dict[str, float]]:
    """Train without one literary source (all nights), score that source's documents."""
    every = pa.concat_tables([pq.read_table(f, columns=["id", "text", "source"])
                              for f in sorted(rm.COMMONS.glob("night*/*.parquet"))])
    pairs = pacsv.read_csv(rm.COMMONS / "planted.csv")
    out = {}
    for held in ("austen", "kjv", "shakespeare"):
        is_held = pc.equal(every["source"], held)
        held_ids = every["id"].filter(is_held)
        # Also keep out any training document that is a copy of (or copied by) a held-out one.
        linked = pc.or_(pc.is_in(pairs["doc_id"], held_ids), pc.is_in(pairs["duplicate_of"], held_ids))
        related = pa.concat_arrays([pairs["doc_id"].filter(linked).combine_chunks(),
                                    pairs["duplicate_of"].filter(linked).combine_chunks()])
        train = every.filter(pc.and_(pc.invert(is_held), pc.invert(pc.is_in(every["id"], related))))
        t0 = time.perf_counter()
        head = rm.train(rm.Recipe(), prose=train["text"].combine_chunks())
        secs = time.perf_counter() - t0
        s = head.score(every["text"].filter(is_held))
        tweets, toxic = rm.davidson("test")
        p = head.score(tweets)
        out[held] = {"prose_fpr_at_threshold": float(np.mean(s >= threshold)), "prose_fpr_at_0.5": float(np.mean(s >= 0.5)),
                     "prose_max_risk": float(s.max()), "n_prose": len(s), "roc_auc": rm.roc_auc(toxic, p),
                     "tweet_tpr_at_threshold": float(np.mean(p[toxic == 1] >= threshold)), "train_seconds": round(secs, 1)}
        print(f"  LOSO {held}: {out[held]}", flush=True)
    return out


def speed(tagger: RiskTagger) -> dict[str, float]:
    corpus = pa.concat_tables([pq.read_table(f, columns=["id", "text"]) for f in sorted(rm.COMMONS.glob("night*/*.parquet"))])
    corpus = pa.table({"doc_id": corpus["id"], "text": corpus["text"]})
    tweets, _ = rm.davidson("test")
    tw = pa.table({"doc_id": pa.array([str(i) for i in range(len(tweets))]), "text": tweets})
    tagger.tag(corpus.slice(0, 10))  # loaded, not timed
    out = {}
    for name, batch in (("example_corpus", corpus), ("tweets", tw)):
        t0 = time.perf_counter()
        tagger.tag(batch)
        secs = time.perf_counter() - t0
        n_chars = int(pc.sum(pc.utf8_length(batch["text"])).as_py())
        out[f"{name}_docs_per_s"] = batch.num_rows / secs
        out[f"{name}_mb_per_s"] = n_chars / secs / 1e6
        out[f"{name}_docs"] = batch.num_rows
    return out


def profanity_check(threshold: float = 0.5) -> dict[str, float] | None:
    """alt-profanity-check's ``predict_prob``, per chunk, max per document (if installed)."""
    if importlib.util.find_spec("profanity_check") is None:
        return None
    from profanity_check import predict_prob

    def score(texts: pa.Array, max_chars: int = 300) -> np.ndarray:
        chunks, owner = rm.chunk(texts, max_chars)
        return rm.max_by_owner(np.asarray(predict_prob(chunks.to_pylist()), np.float32), owner, len(texts))

    tweets, _ = rm.davidson("test")
    prose = rm.heldout_prose()
    s = score(prose["text"])
    return {**tweet_metrics(score(tweets), threshold),
            **prose_metrics(s, np.asarray(prose["source"].to_pylist()), threshold), "threshold": threshold}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--no-loso", action="store_true", help="skip the three leave-one-source-out trainings")
    args = ap.parse_args()

    recipe = rm.Recipe()
    t0 = time.perf_counter()
    head, _ = rm.build(recipe=recipe)  # trained from scratch and stored where the tagger finds it
    train_s = time.perf_counter() - t0
    thr = head.threshold
    tweets, _ = rm.davidson("test")
    prose = rm.heldout_prose()
    result: dict[str, object] = {
        "model": f"default@{head.key}", "recipe": head.info | {"threshold": thr}, "train_seconds": round(train_s, 2),
        **tweet_metrics(head.score(tweets), thr),
        **prose_metrics(head.score(prose["text"]), np.asarray(prose["source"].to_pylist()), thr),
    }
    print(json.dumps(result, indent=2), flush=True)
    tagger = RiskTagger(backend="ngram")  # this benchmark measures the n-gram head
    result["speed"] = speed(tagger)
    if not args.no_loso:
        result["leave_one_source_out"] = loso(thr)
        alone = rm.train(recipe, prose=pa.array([], pa.string()))
        result["ablation_tweets_only"] = {
            **tweet_metrics(alone.score(tweets), thr),
            **prose_metrics(alone.score(prose["text"]), np.asarray(prose["source"].to_pylist()), thr)}
    result["alt_profanity_check"] = profanity_check() or "not installed"

    rows = [("default head (n-gram TF-IDF + LR)", result)]
    if isinstance(result["alt_profanity_check"], dict):
        rows.append(("alt-profanity-check 1.x (thr 0.5)", result["alt_profanity_check"]))
    if "ablation_tweets_only" in result:
        rows.append(("  trained on tweets only (ablation)", result["ablation_tweets_only"]))
    print(f"\n{'model':38} {'ROC-AUC':>8} {'tweet TPR':>9} {'tweet FPR':>9} {'prose FPR':>9} {'n prose':>7}")
    for name, r in rows:
        print(f"{name:38} {r['roc_auc']:8.4f} {r['tweet_tpr_at_threshold']:9.3f} {r['tweet_fpr_at_threshold']:9.3f} "
              f"{r['prose_fpr_at_threshold']:9.4f} {r['n_prose']:7d}")
    for held, r in (result.get("leave_one_source_out") or {}).items():
        print(f"{'  trained without ' + held:38} {r['roc_auc']:8.4f} {r['tweet_tpr_at_threshold']:9.3f} {'':>9} "
              f"{r['prose_fpr_at_threshold']:9.4f} {r['n_prose']:7d}")
    sp = result["speed"]
    print(f"threshold {thr}; training {train_s:.1f} s; tagging {sp['example_corpus_docs_per_s']:,.0f} docs/s "
          f"({sp['example_corpus_mb_per_s']:.2f} MB/s) on the example corpus, {sp['tweets_docs_per_s']:,.0f} tweets/s")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_risk.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out / 'bench_risk.json'}")


if __name__ == "__main__":
    main()
