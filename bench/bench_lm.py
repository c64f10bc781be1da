"""Throughput of the ``lm`` tagger's scoring model: loss only, and loss + per-document gradient norm.

    .venv/bin/python bench/bench_lm.py [--docs 40] [--max-tokens 128] [--batch-size 8] [--device auto]

Scores real paragraphs of the example corpus (the first documents of every shard, so every
source is in) with the packaged SmolLM2-135M, on CUDA when torch sees a GPU (bf16) and on CPU
otherwise (fp32), and reports docs/s and tokens/s for

- ``loss``: the forward pass only;
- ``loss_utility``: loss plus the per-document gradient norm over the default subset (last
  block + LM head) from one batched backward (``models.lm``);
- ``one_backward_per_doc``: the naive GraNd baseline on a few documents: a plain backward per
  document over the same subset (untied LM head), the way the utility would be computed
  without the batched identity. Same documents, same model, same process.

Writes ``bench/results/bench_lm.json``. The machine is often shared: the load average before
and after is recorded so a reader can tell a quiet measurement from a contended one.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=40)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--naive-docs", type=int, default=8, help="documents for the one-backward-per-doc baseline")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "bench_lm.json")
    args = ap.parse_args()

    import numpy as np
    import torch

    from glia.models.lm import load_scoring_model

    load_before = os.getloadavg()
    sm, load_s = timed(load_scoring_model, "smollm2", None, args.device)
    texts = example_texts(args.docs)
    subset = sm.subset()
    ids = sm.encode(texts, args.max_tokens)
    tokens = int(sum(len(x) for x in ids))
    sm.score(texts[: args.batch_size], args.max_tokens, args.batch_size, subset)  # warm-up (allocator, kernels)

    results: dict[str, dict[str, float]] = {}
    loss_only, s = timed(sm.score, texts, args.max_tokens, args.batch_size, None)
    results["loss"] = {"seconds": round(s, 3), "docs_per_s": round(len(texts) / s, 2), "tokens_per_s": round(tokens / s, 1)}
    full, s = timed(sm.score, texts, args.max_tokens, args.batch_size, subset)
    results["loss_utility"] = {"seconds": round(s, 3), "docs_per_s": round(len(texts) / s, 2),
                               "tokens_per_s": round(tokens / s, 1)}
    k = min(args.naive_docs, len(texts))
    ref, names = reference_model(sm, list(subset.prefixes))
    naive_per_doc(sm, ref, names, ids[:1])  # warm-up, as the batched passes had
    naive, s = timed(naive_per_doc, sm, ref, names, ids[:k])
    naive_tokens = sum(len(x) for x in ids[:k])
    results["one_backward_per_doc"] = {"docs": k, "seconds": round(s, 3), "docs_per_s": round(k / s, 2),
                                       "tokens_per_s": round(naive_tokens / s, 1)}
    agree = float(np.max(np.abs(np.asarray(naive) - full.utility[:k]) / np.asarray(naive)))
    report = {
        "device": sm.device, "dtype": sm.dtype, "model_id": sm.model_id,
        "gpu": torch.cuda.get_device_name(0) if sm.device.startswith("cuda") else None,
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "docs": len(texts), "tokens": tokens, "max_tokens": args.max_tokens, "batch_size": args.batch_size,
        "utility_params": subset.label, "utility_n_params": subset.n_params,
        "model_load_seconds": round(load_s, 2), "results": results,
        "utility_overhead": round(results["loss_utility"]["seconds"] / results["loss"]["seconds"], 2),
        "speedup_vs_one_backward_per_doc": round(results["loss_utility"]["docs_per_s"] /
                                                 results["one_backward_per_doc"]["docs_per_s"], 2),
        "max_rel_diff_vs_one_backward_per_doc": agree,
        "mean_loss": round(float(np.nanmean(loss_only.loss)), 4),
        "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"lm on {sm.device} ({sm.dtype}), {len(texts)} docs, {tokens} tokens (max {args.max_tokens}/doc), "
          f"batch {args.batch_size}, torch threads {torch.get_num_threads()}, load {load_before[0]:.1f}")
    for name, r in results.items():
        print(f"  {name:22s} {r['docs_per_s']:8.2f} docs/s {r['tokens_per_s']:9.1f} tokens/s ({r['seconds']:.1f} s)")
    print(f"  utility costs {report['utility_overhead']}x the loss pass; batched is "
          f"{report['speedup_vs_one_backward_per_doc']}x one backward per document (max rel diff {agree:.1e})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
