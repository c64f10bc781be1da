"""Build a benchmark corpus of real text with planted duplicates and a measured ground truth.

Usage (from the repository root)::

    .venv/bin/python bench/make_bench_corpus.py --out bench/data/corpus-20k

Documents are ~``doc_chars``-character chunks of the same real sources as the
example corpus (Austen, the King James Bible, Shakespeare, Debian copyright
files, the Jargon File, The Devil's Dictionary), topped up with GCIDE dictionary
entries when those run short. Every source chunk is used at most once; only
planted copies repeat text: ~5 % near-duplicates (word edits) and ~2 % exact
copies (verbatim or case/whitespace only). ``planted.csv`` beside the shards
lists every pair with true Jaccard >= 0.5 (planted, natural or derived), in the
same format as ``examples/commons/planted.csv``; all night columns are 1.
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import planting
import sources
from planting import Doc, Plant

NEAR_SHARE = 0.05
EXACT_SHARE = 0.02
# One huge copyright file (a ~2 MB licence bundle) would otherwise fill the
# copyright share with chunks of a single package.
MAX_CHUNKS_PER_COPYRIGHT_FILE = 4
START = datetime(2024, 1, 1, tzinfo=UTC)
END = datetime(2025, 6, 30, 23, 59, 59, tzinfo=UTC)


def source_chunks(n_needed: int, doc_chars: int, rng: random.Random) -> list[sources.SourceDoc]:
    """At least ``n_needed`` distinct real-text chunks of ~``doc_chars`` characters.

    Chunks whose token sequences repeat (packages sharing one copyright file,
    the same licence paragraph in many files) are kept once, so every exact
    duplicate in the corpus is a planted one. GCIDE is only drawn on for the
    shortfall, so the other sources keep their share.
    """
    lo, hi = int(doc_chars * 0.8), int(doc_chars * 1.2)
    chunks = sources.austen(lo, hi) + sources.kjv(lo, hi) + sources.shakespeare(lo, hi)
    for doc in sources.debian_copyright():
        pieces = sources.group_paragraphs(sources.paragraphs(doc.text), lo, hi) or [doc.text]
        chunks += [doc._replace(text=t) for t in pieces[:MAX_CHUNKS_PER_COPYRIGHT_FILE]]
    chunks += sources.jargon(lo, hi) + sources.devil(lo, hi)
    chunks = _distinct(chunks)
    if len(chunks) < n_needed:
        extra = _distinct(sources.gcide(lo, hi))
        chunks += rng.sample(extra, min(len(extra), n_needed - len(chunks)))
    if len(chunks) < n_needed:
        raise RuntimeError(f"only {len(chunks)} distinct chunks of real text for {n_needed} documents")
    return chunks


def _distinct(chunks: list[sources.SourceDoc]) -> list[sources.SourceDoc]:
    """The chunks in order, keeping only the first of those with equal token sequences."""
    seen: set[int] = set()
    kept = []
    for chunk in chunks:
        key = hash(tuple(planting.tokens(chunk.text)))
        if key not in seen:
            seen.add(key)
            kept.append(chunk)
    return kept


def make_bench_corpus(
    out_dir: Path | str, n_docs: int = 20000, doc_chars: int = 1500, n_shards: int = 8, seed: int = 0
) -> Path:
    """Write ``n_docs`` documents as ``n_shards`` Parquet shards plus ``planted.csv``; return the CSV path."""
    out_dir = Path(out_dir)
    rng = random.Random(seed)
    n_near = round(n_docs * NEAR_SHARE)
    n_exact = round(n_docs * EXACT_SHARE)
    n_base = n_docs - n_near - n_exact
    chosen = rng.sample(source_chunks(n_base, doc_chars, rng), n_base)
    base = [
        Doc("", c.text, c.source, planting.SOURCE_LABELS[c.source], planting.random_time(rng, START, END), 1)
        for c in chosen
    ]
    by_source: dict[str, list[str]] = {}
    for doc in base:
        by_source.setdefault(doc.source, []).append(doc.text)
    vocab = {name: planting.word_vocabulary(texts) for name, texts in by_source.items()}

    copies: list[tuple[Doc, Doc, str]] = []  # (copy, original, kind); ids come later
    for kind, count in (("near", n_near), ("exact", n_exact)):
        for original in rng.sample(base, count):
            if kind == "near":
                band = planting.near_band(rng)
                text, _ = planting.near_copy(original.text, rng, vocab[original.source], band)
            else:
                text = planting.exact_copy(original.text, rng)
            stamp = planting.later_timestamp(rng, original.timestamp, START, END)
            copies.append((Doc("", text, original.source, original.label, stamp, 1), original, kind))

    docs = base + [copy for copy, _, _ in copies]
    # Shuffle before numbering so ids and row order do not reveal planted copies.
    rng.shuffle(docs)
    counters: Counter[str] = Counter()
    for doc in docs:
        doc.id = f"{doc.source}-{counters[doc.source]:06d}"
        counters[doc.source] += 1
    plants = [Plant(copy.id, original.id, kind) for copy, original, kind in copies]

    for old in out_dir.glob("part-*.parquet"):
        old.unlink()
    planting.write_shards(docs, out_dir, n_shards)
    rows = planting.ground_truth(docs, plants)
    csv_path = out_dir / "planted.csv"
    planting.write_ground_truth(rows, csv_path)
    return csv_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/data/corpus"), help="output directory")
    parser.add_argument("--n-docs", type=int, default=20000)
    parser.add_argument("--doc-chars", type=int, default=1500)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    csv_path = make_bench_corpus(args.out, args.n_docs, args.doc_chars, args.shards, args.seed)
    elapsed = time.perf_counter() - started
    _report(args.out, csv_path, elapsed)


def _report(out_dir: Path, csv_path: Path, elapsed: float) -> None:
    """Print counts, ground truth and Jaccard distributions, sizes and build time."""
    table = pq.read_table(sorted(out_dir.glob("part-*.parquet")), columns=["source", "text"])
    lengths = [len(t) for t in table.column("text").to_pylist()]
    print(
        f"{table.num_rows} docs, mean {sum(lengths) / len(lengths):.0f} chars, "
        f"sources: {dict(sorted(Counter(table.column('source').to_pylist()).items()))}"
    )
    with csv_path.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    groups = Counter((r["origin"], r["kind"]) for r in rows)
    print("ground truth pairs:", ", ".join(f"{o}/{k}={n}" for (o, k), n in sorted(groups.items())))
    for origin in ("planted", "natural", "derived"):
        near = [float(r["jaccard"]) for r in rows if r["origin"] == origin and r["kind"] == "near"]
        print(f"{origin} near jaccard:", planting.jaccard_summary(near))
    size = sum(p.stat().st_size for p in out_dir.glob("part-*.parquet"))
    print(f"shards: {size / 1e6:.1f} MB in {out_dir}; built in {elapsed:.1f} s")


if __name__ == "__main__":
    main()
