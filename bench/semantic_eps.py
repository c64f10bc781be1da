"""Choosing ``[stages.semantic_dedup] eps``: pairs found at each eps on the example corpus.

Usage (from the repository root)::

    .venv/bin/python bench/semantic_eps.py --model minilm            # the table, and build/semantic_pairs_<model>.csv
    .venv/bin/python bench/semantic_eps.py --model static --sample 40 --eps 0.05

Embeds every document of ``examples/commons`` (three nights) with the ``embedding`` tagger,
finds every pair at cosine >= 1 - eps (exact search), and compares them with
``examples/commons/planted.csv`` (the near and exact copies planted on purpose): ``planted
found`` is the share of planted pairs (both documents present) found; ``other pairs`` are
pairs the corpus did not plant. ``--sample N`` writes N of the other pairs at ``--eps`` to a
CSV with both texts, for labelling by reading (the labels and the precision are in the README).
"""

from __future__ import annotations

import argparse
import csv
import glob
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
EPS = (0.01, 0.02, 0.03, 0.05, 0.08, 0.1, 0.15)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="minilm")
    p.add_argument("--eps", type=float, default=0.05)
    p.add_argument("--sample", type=int, default=40)
    a = p.parse_args(argv)
    from glia.taggers.embedding import EmbeddingTagger
    from glia.curation.semantic_dedup import normalize

    t = pa.concat_tables([pq.read_table(f, columns=["id", "text"]) for f in
                          sorted(glob.glob(str(ROOT / "examples/commons/night*/*.parquet")))])
    ids = np.array(t["id"].to_pylist())
    cache = ROOT / "build" / f"semantic_eps_{a.model}.npy"  # embeddings, reused by a second run (other --eps)
    if cache.exists() and np.load(cache).shape[0] == t.num_rows:
        v = np.load(cache)
    else:
        tagger = EmbeddingTagger(model=a.model, device="cpu")
        vecs = []
        for off in range(0, t.num_rows, 256):
            b = t.slice(off, 256)
            out = tagger.tag(pa.table({"doc_id": b["id"], "text": b["text"]}))
            vecs.append(np.asarray(out["_embedding"].combine_chunks().flatten().to_numpy(zero_copy_only=False)).reshape(b.num_rows, -1))
        v = normalize(np.concatenate(vecs))
        cache.parent.mkdir(exist_ok=True)
        np.save(cache, v)
    sim = v @ v.T
    iu = np.triu_indices(len(ids), 1)
    s = sim[iu]
    pos = {i: n for n, i in enumerate(ids)}
    planted = {}
    with open(ROOT / "examples/commons/planted.csv") as f:
        for r in csv.DictReader(f):
            if r["doc_id"] in pos and r["duplicate_of"] in pos:
                planted[frozenset((r["doc_id"], r["duplicate_of"]))] = r["kind"]
    print(f"{len(ids)} documents, {len(planted)} planted pairs ({sum(k == 'near' for k in planted.values())} near), model {a.model}")
    print("eps    threshold  pairs  planted_found  near_found  other_pairs")
    for eps in EPS:
        m = s >= 1 - eps
        pairs = {frozenset((ids[i], ids[j])) for i, j in zip(iu[0][m], iu[1][m])}
        found = [k for k in planted if k in pairs]
        near = [k for k in found if planted[k] == "near"]
        print(f"{eps:<6} {1 - eps:<10.3f} {len(pairs):<6} {len(found) / max(len(planted), 1):<14.3f} "
              f"{len(near) / max(sum(k == 'near' for k in planted.values()), 1):<11.3f} {len(pairs - set(planted))}")
    m = s >= 1 - a.eps
    others = [(float(s[x]), ids[iu[0][x]], ids[iu[1][x]]) for x in np.flatnonzero(m)
              if frozenset((ids[iu[0][x]], ids[iu[1][x]])) not in planted]
    rng = np.random.default_rng(0)
    pick = [others[i] for i in sorted(rng.choice(len(others), min(a.sample, len(others)), replace=False))] if others else []
    text = dict(zip(ids, t["text"].to_pylist()))
    out = ROOT / "build" / f"semantic_pairs_{a.model}_eps{a.eps:g}.csv"
    out.parent.mkdir(exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["similarity", "a", "b", "text_a", "text_b"])
        for sv, x, y in pick:
            w.writerow([f"{sv:.4f}", x, y, text[x][:400], text[y][:400]])
    by_source: dict[str, int] = {}
    for _, x, y in others:
        key = "+".join(sorted({x.rsplit("-", 1)[0], y.rsplit("-", 1)[0]}))
        by_source[key] = by_source.get(key, 0) + 1
    print(f"{len(others)} unplanted pairs at eps {a.eps} by source {by_source}; {len(pick)} sampled -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
