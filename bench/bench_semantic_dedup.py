"""docs/s of the ``semantic_dedup`` resolution (search + survivor rule) at several night sizes.

Usage (from the repository root)::

    .venv/bin/python bench/lang_corpus.py                            # texts: build/lang_bench.parquet
    .venv/bin/python bench/bench_semantic_dedup.py --sizes 10000 20000 50000 200000

Vectors: the ``embedding`` tagger's static model (``model = "static"``, what a CPU night at
scale uses) over the 52k Debian fortunes and Devil's Dictionary entries of
``bench/lang_corpus.py``; sizes beyond that are filled with copies jittered by Gaussian noise
(cosine ~0.8 to their source, so they are neighbours but rarely duplicates). The embedding
itself is the tagger's cost and is reported separately (``embed docs/s``). Each size runs the
stage's default parameters (exact search up to ``exact_max`` = 10,000, IVF above), single
process, on this machine's cores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT / "build" / "lang_bench.parquet"))
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 20_000, 50_000, 200_000])
    p.add_argument("--eps", type=float, default=None)
    a = p.parse_args(argv)
    from glia.curation.semantic_dedup import normalize, resolve
    from glia.stages.semantic_dedup import SemanticDedupStage
    from glia.taggers.embedding import EmbeddingTagger

    params = SemanticDedupStage.Params()
    eps = a.eps if a.eps is not None else params.eps
    t = pq.read_table(a.data, columns=["doc_id", "text"])
    tagger = EmbeddingTagger(model="static")
    tagger.tag(t.slice(0, 10))
    t0 = time.perf_counter()
    out = tagger.tag(t)
    embed_s = time.perf_counter() - t0
    base = normalize(np.asarray(out["_embedding"].combine_chunks().flatten().to_numpy(zero_copy_only=False)).reshape(t.num_rows, -1))
    print(json.dumps({"texts": t.num_rows, "dim": base.shape[1], "embed_docs_per_s": round(t.num_rows / embed_s)}))
    rng = np.random.default_rng(0)
    for n in a.sizes:
        reps = -(-n // len(base))
        parts = [base] + [normalize(base + rng.normal(scale=0.08, size=base.shape).astype(np.float32)) for _ in range(reps - 1)]
        v = np.ascontiguousarray(np.concatenate(parts)[:n])
        t0 = time.perf_counter()
        r = resolve(v, np.full(n, np.nan, np.float32), 1 - eps, params.k, params.exact_max, params.nprobe, params.seed)
        dt = time.perf_counter() - t0
        print(json.dumps({"docs": n, "exact": r.exact, "seconds": round(dt, 2), "docs_per_s": round(n / dt),
                          "dups": int((~r.kept).sum()), "saturated": r.saturated}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
