"""Throughput of the ``lm`` tagger's scoring model: every CPU option for the loss, then loss + per-document gradient norm.

    .venv/bin/python bench/bench_lm.py [--docs 40] [--max-tokens 128] [--batch-size 8] [--reps 3] [--device auto]

Scores real paragraphs of the example corpus (the first documents of every shard, so every
source is in) with the packaged SmolLM2-135M.

**Options** (loss only, same documents, same process, ``--reps`` rounds interleaved so that
a shared machine's load falls on all of them alike; the ratio to fp32 is taken per round and
its median and spread reported):

- ``fp32``: float32 weights (the setting ``[taggers.lm] dtype = "float32"``);
- ``bf16``: bfloat16 weights (``dtype = "bfloat16"``; what ``auto`` picks on a CPU with AMX or
  AVX512-BF16, and on CUDA);
- ``int8-dynamic``: torch dynamic int8 quantisation of every ``nn.Linear`` (fp32 activations);
- ``bf16-compile``: the bf16 model through ``torch.compile`` (inductor, dynamic shapes;
  compile time reported apart, not in docs/s);
- ``fp32-1thread`` / ``bf16-1thread``: one torch thread (on a loaded machine two threads wait
  on each other).

Agreement with fp32: the largest and the mean relative difference of the per-document losses
(the bar for adopting an option: every loss within 1 %).

**Utility** (default dtype): ``loss_utility`` (loss plus the per-document gradient norm over
the default subset, last block + LM head, from one batched backward; ``models.lm``) and
``one_backward_per_doc`` (the naive GraNd baseline on a few documents: a plain backward per
document over the same subset, untied LM head). The bf16 utility's difference from the fp32
one is reported too.

Writes ``bench/results/bench_lm.json``. The machine is often shared: ``uptime``'s load
average before and after is recorded and printed with a QUIET / LOADED verdict (load
average per core above 0.5 before the run is LOADED: the ratios still hold, absolute docs/s
do not).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pyarrow.parquet as pq  # noqa: E402


def example_texts(n: int) -> list[str]:
    """``n`` paragraphs taken round-robin from the example shards (first rows of each)."""
    shards = sorted((REPO / "examples" / "commons").glob("night*/*.parquet"))
    columns = [pq.read_table(s, columns=["text"])["text"].to_pylist() for s in shards]
    out: list[str] = []
    row = 0
    while len(out) < n:
        out += [c[row] for c in columns if row < len(c)][: n - len(out)]
        row += 1
    return out


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    res = fn(*args, **kwargs)
    return res, time.perf_counter() - t0


def reference_model(sm, prefixes: list[str]) -> tuple:
    """A copy of the scoring model for the baseline, with gradients on the utility subset only
    (set up outside the timed part: the baseline is the backward passes, not this copy)."""
    import torch

    ref = copy.deepcopy(sm.model)
    if ref.config.tie_word_embeddings:
        ref.lm_head.weight = torch.nn.Parameter(ref.model.embed_tokens.weight.detach().clone())
    names = {n for n, _ in ref.named_parameters() if n.startswith(tuple(p + "." for p in prefixes))}
    for n, p in ref.named_parameters():
        p.requires_grad_(n in names)
    return ref, names


def naive_per_doc(sm, ref, names: set[str], ids: list[list[int]]) -> list[float]:
    """Per-document gradient norms the slow way: one backward per document."""
    import torch

    norms = []
    for x in ids:
        ref.zero_grad(set_to_none=True)
        t = torch.tensor([x], device=sm.device)
        ref(input_ids=t, labels=t).loss.backward()
        norms.append(float(sum(p.grad.float().pow(2).sum() for n, p in ref.named_parameters() if n in names)) ** 0.5)
    return norms


def load_state(load: tuple[float, float, float]) -> str:
    """QUIET or LOADED: the 1-minute load average per core, before the run, against 0.5 (the
    load after includes the benchmark's own threads)."""
    return "LOADED" if load[0] / (os.cpu_count() or 1) > 0.5 else "QUIET"


def option_models(sm, compile_: bool) -> dict:
    """name -> (model, torch threads or None, setup seconds): the loss options, built from the
    loaded fp32 model (a bf16 copy is what ``dtype = "bfloat16"`` loads)."""
    import torch

    base = sm.model
    bf16 = copy.deepcopy(base).to(torch.bfloat16)
    out = {"fp32": (base, None, 0.0), "bf16": (bf16, None, 0.0)}
    t0 = time.perf_counter()
    q = torch.ao.quantization.quantize_dynamic(copy.deepcopy(base), {torch.nn.Linear}, dtype=torch.qint8)
    out["int8-dynamic"] = (q, None, time.perf_counter() - t0)
    if compile_:
        out["bf16-compile"] = (torch.compile(bf16, dynamic=True), None, 0.0)
    out["fp32-1thread"] = (base, 1, 0.0)
    out["bf16-1thread"] = (bf16, 1, 0.0)
    return out


def score_with(sm, model, threads, texts, max_tokens, batch_size, subset=None):
    """``sm.score`` with ``model`` swapped in (and ``threads`` torch threads): (scores, seconds)."""
    import torch

    old_model, old_threads = sm.model, torch.get_num_threads()
    sm.model = model
    if threads:
        torch.set_num_threads(threads)
    try:
        return timed(sm.score, texts, max_tokens, batch_size, subset)
    finally:
        sm.model = old_model
        torch.set_num_threads(old_threads)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=40)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3, help="interleaved rounds of every option")
    ap.add_argument("--naive-docs", type=int, default=8, help="documents for the one-backward-per-doc baseline")
    ap.add_argument("--no-compile", action="store_true", help="leave out the torch.compile option")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "bench_lm.json")
    args = ap.parse_args()

    import numpy as np
    import torch

    from glia.models.lm import load_scoring_model

    load_before = os.getloadavg()
    sm, load_s = timed(load_scoring_model, "smollm2", None, args.device, "float32")
    texts = example_texts(args.docs)
    ids = sm.encode(texts, args.max_tokens)
    tokens = int(sum(len(x) for x in ids))

    options: dict[str, dict] = {}
    if sm.device == "cpu":
        models = option_models(sm, not args.no_compile)
        secs: dict[str, list[float]] = {name: [] for name in models}
        losses: dict[str, np.ndarray] = {}
        for name, (model, threads, _) in models.items():  # warm-up; for compile this is the compile
            _, s = score_with(sm, model, threads, texts[: args.batch_size], args.max_tokens, args.batch_size)
            models[name] = (model, threads, models[name][2] + (s if name == "bf16-compile" else 0.0))
        for _ in range(args.reps):
            for name, (model, threads, _) in models.items():
                res, s = score_with(sm, model, threads, texts, args.max_tokens, args.batch_size)
                secs[name].append(s)
                losses[name] = res.loss
        ref = losses["fp32"]
        for name in models:
            ratios = [f / o for f, o in zip(secs["fp32"], secs[name])]
            rel = np.abs(losses[name] - ref) / ref
            options[name] = {
                "docs_per_s": round(len(texts) / float(np.median(secs[name])), 2),
                "seconds_each": [round(x, 2) for x in secs[name]],
                "speedup_vs_fp32": round(float(np.median(ratios)), 2),
                "speedup_each": [round(r, 2) for r in ratios],
                "max_rel_loss_diff": round(float(np.nanmax(rel)), 5), "mean_rel_loss_diff": round(float(np.nanmean(rel)), 5),
                "within_1pct": bool(np.nanmax(rel) <= 0.01), "setup_seconds": round(models[name][2], 1),
            }
        del models

    # Utility at the default dtype, against the naive per-document backward.
    dsm = load_scoring_model("smollm2", None, args.device)
    subset = dsm.subset()
    dsm.score(texts[: args.batch_size], args.max_tokens, args.batch_size, subset)  # warm-up (allocator, kernels)
    results: dict[str, dict[str, float]] = {}
    loss_only, s = timed(dsm.score, texts, args.max_tokens, args.batch_size, None)
    results["loss"] = {"seconds": round(s, 3), "docs_per_s": round(len(texts) / s, 2), "tokens_per_s": round(tokens / s, 1)}
    full, s = timed(dsm.score, texts, args.max_tokens, args.batch_size, subset)
    results["loss_utility"] = {"seconds": round(s, 3), "docs_per_s": round(len(texts) / s, 2),
                               "tokens_per_s": round(tokens / s, 1)}
    utility_vs_fp32 = None
    if dsm is not sm:
        ref_util = sm.score(texts, args.max_tokens, args.batch_size, sm.subset()).utility
        rel = np.abs(full.utility - ref_util) / ref_util
        utility_vs_fp32 = {"max_rel_diff": round(float(np.nanmax(rel)), 5), "mean_rel_diff": round(float(np.nanmean(rel)), 5)}
    k = min(args.naive_docs, len(texts))
    ref, names = reference_model(dsm, list(subset.prefixes))
    naive_per_doc(dsm, ref, names, ids[:1])  # warm-up, as the batched passes had
    naive, s = timed(naive_per_doc, dsm, ref, names, ids[:k])
    naive_tokens = sum(len(x) for x in ids[:k])
    results["one_backward_per_doc"] = {"docs": k, "seconds": round(s, 3), "docs_per_s": round(k / s, 2),
                                       "tokens_per_s": round(naive_tokens / s, 1)}
    agree = float(np.max(np.abs(np.asarray(naive) - full.utility[:k]) / np.asarray(naive)))
    load_after = os.getloadavg()
    report = {
        "device": dsm.device, "default_dtype": dsm.dtype, "model_id": dsm.model_id,
        "gpu": torch.cuda.get_device_name(0) if dsm.device.startswith("cuda") else None,
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "docs": len(texts), "tokens": tokens, "max_tokens": args.max_tokens, "batch_size": args.batch_size,
        "reps": args.reps, "options": options,
        "utility_params": subset.label, "utility_n_params": subset.n_params,
        "model_load_seconds": round(load_s, 2), "results": results,
        "utility_overhead": round(results["loss_utility"]["seconds"] / results["loss"]["seconds"], 2),
        "speedup_vs_one_backward_per_doc": round(results["loss_utility"]["docs_per_s"] /
                                                 results["one_backward_per_doc"]["docs_per_s"], 2),
        "max_rel_diff_vs_one_backward_per_doc": agree, "default_utility_vs_fp32": utility_vs_fp32,
        "mean_loss": round(float(np.nanmean(loss_only.loss)), 4),
        "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in load_after],
        "machine": load_state(load_before),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"lm on {dsm.device}, {len(texts)} docs, {tokens} tokens (max {args.max_tokens}/doc), batch {args.batch_size}, "
          f"torch threads {torch.get_num_threads()}, {args.reps} interleaved rounds; load {load_before[0]:.1f} -> "
          f"{load_after[0]:.1f} on {os.cpu_count()} cores: {report['machine']}")
    if options:
        print(f"  {'option':14s} {'docs/s':>8s} {'x fp32':>7s} {'each':>20s} {'max rel':>8s} {'mean rel':>9s}  within 1 %")
        for name, o in options.items():
            print(f"  {name:14s} {o['docs_per_s']:8.2f} {o['speedup_vs_fp32']:7.2f} {str(o['speedup_each']):>20s} "
                  f"{o['max_rel_loss_diff']:8.4f} {o['mean_rel_loss_diff']:9.5f}  {o['within_1pct']}")
    print(f"default dtype {dsm.dtype}:")
    for name, r in results.items():
        print(f"  {name:22s} {r['docs_per_s']:8.2f} docs/s {r['tokens_per_s']:9.1f} tokens/s ({r['seconds']:.1f} s)")
    print(f"  utility costs {report['utility_overhead']}x the loss pass; batched is "
          f"{report['speedup_vs_one_backward_per_doc']}x one backward per document (max rel diff {agree:.1e})")
    if utility_vs_fp32:
        print(f"  {dsm.dtype} utility vs fp32: max rel diff {utility_vs_fp32['max_rel_diff']}, "
              f"mean {utility_vs_fp32['mean_rel_diff']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
