"""Build the scale benchmark's corpus: N nights of M documents of real text, with edited copies of earlier nights.

Usage (from the repository root)::

    .venv/bin/python bench/make_scale_corpus.py --nights 10 --docs 100000   # -> bench/data/scale-100000/night01 ...

A million documents need far more text than the pinned inputs hold (``bench/corpus_inputs.py``:
~50 MB, ~32k chunks of 1.5k characters), so every fresh document here is a new arrangement of
real sentences: its source is drawn with probability proportional to the square root of the
source's size (GCIDE, two thirds of the text, would otherwise make most documents dictionary
entries), its length uniformly from 0.8-1.2 x ``--doc-chars``, and its sentences uniformly
from that source's sentence pool. Two fresh documents share a sentence now and then, never
enough to be near-duplicates. From night 2 on, ``--copy-share`` of each night's documents
are word-edited copies (``planting.near_copy``: true Jaccard mostly 0.75-0.97, a tenth in
0.6-0.75) of documents drawn uniformly from all earlier nights, so the dedup path always has
matches in the history to find; ``nightNN/copies.csv`` lists them.

Each night's content is fixed by (``--docs``, ``--doc-chars``, ``--shards``,
``--copy-share``, ``--seed``) and the night number, not by ``--nights``: a 10-night corpus
starts with the 5-night one, and nights already built with the same parameters (and still
hashing as recorded) are kept. Random draws come straight from numpy's PCG64 bit stream and
Python's string-seeded ``random.Random``, whose outputs do not change between versions.
``corpus.json`` records each night's content hash (sha256 over its ordered documents) and
each input's hash; both are checked against ``bench/corpus_hashes.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "examples"), str(ROOT / "bench")]

import corpus_inputs  # noqa: E402
import planting  # noqa: E402

START = datetime(2025, 1, 1, tzinfo=UTC)
# Full stops only (examples/sources.py also cuts at ; and :, which leaves clauses that read as
# fragments once shuffled); line breaks inside a sentence become spaces.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
MIN_SENTENCE_CHARS = 15
# Words drawn into edited copies come from this many chunks per source: enough for real word
# frequencies without holding all of GCIDE's words.
VOCAB_CHUNKS = 1000


class SentencePool:
    """One source's sentences in loader order, with their lengths (plus the joining space)."""

    def __init__(self, chunks: list, max_chars: int) -> None:
        sentences = []
        for chunk in chunks:
            for raw in _SENTENCE_END.split(chunk.text):
                sentence = " ".join(raw.split())
                # Short fragments ("Exit.") add nothing; long ones are kept out so that every
                # document gets at least one sentence of its own (see fresh_documents).
                if MIN_SENTENCE_CHARS <= len(sentence) <= max_chars:
                    sentences.append(sentence)
        self.sentences = sentences
        self.lengths = np.fromiter((len(s) + 1 for s in sentences), dtype=np.int64, count=len(sentences))


def uniforms(bits: np.random.PCG64, n: int) -> np.ndarray:
    """``n`` floats in [0, 1) from the top 53 bits of PCG64's raw outputs (stable across numpy versions)."""
    return (bits.random_raw(n) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def fresh_documents(
    n: int, pools: dict[str, SentencePool], shares: np.ndarray, doc_chars: int, bits: np.random.PCG64
) -> tuple[list[str], list[str]]:
    """``n`` documents of random real sentences: (sources, texts), in draw order.

    Each source's documents are cut from one long stream of its sentences: document ``j``
    ends at the first sentence where the stream's length passes the sum of the first ``j``
    targets, so lengths follow the targets within a sentence. Every sentence is shorter than
    the smallest target (``SentencePool``), so no document comes out empty.
    """
    names = list(pools)
    which = np.searchsorted(np.cumsum(shares), uniforms(bits, n), side="right").clip(0, len(names) - 1)
    targets = doc_chars * (0.8 + 0.4 * uniforms(bits, n))
    texts: list[str] = [""] * n
    for k, name in enumerate(names):
        docs = np.flatnonzero(which == k)
        if not len(docs):
            continue
        pool = pools[name]
        goals = np.cumsum(targets[docs])
        picks = np.empty(0, dtype=np.int64)
        lengths = np.empty(0, dtype=np.int64)
        while not len(lengths) or lengths.sum() < goals[-1]:
            more = int((goals[-1] - lengths.sum()) / pool.lengths.mean() * 1.2) + 64
            new = (uniforms(bits, more) * len(pool.sentences)).astype(np.int64)
            picks, lengths = np.concatenate([picks, new]), np.concatenate([lengths, pool.lengths[new]])
        ends = np.searchsorted(np.cumsum(lengths), goals, side="left") + 1
        starts = np.concatenate([[0], ends[:-1]])
        sentences = pool.sentences
        for doc, a, b in zip(docs.tolist(), starts.tolist(), ends.tolist(), strict=True):
            texts[doc] = " ".join([sentences[i] for i in picks[a:b].tolist()])
    return [names[k] for k in which.tolist()], texts


def night_dir(out: Path, night: int) -> Path:
    """The shard folder of one night."""
    return out / f"night{night:02d}"


def read_rows(out: Path, night: int, rows: np.ndarray) -> pa.Table:
    """Rows (positions in the night's shard order) of an earlier night: id, text, source."""
    table = pq.read_table(sorted(night_dir(out, night).glob("part-*.parquet")), columns=["id", "text", "source"])
    return table.take(pa.array(rows))


def build_night(
    out: Path, night: int, args: argparse.Namespace, pools: dict[str, SentencePool], shares: np.ndarray,
    vocab: dict[str, list[str]],
) -> dict:
    """Write one night's shards and ``copies.csv``; return its manifest entry."""
    bits = np.random.PCG64(np.random.SeedSequence([args.seed, night]))
    rng = random.Random(f"glia-scale-{args.seed}-{night}")
    n_copies = round(args.docs * args.copy_share) if night > 1 else 0
    sources, texts = fresh_documents(args.docs - n_copies, pools, shares, args.doc_chars, bits)

    copies = []
    if n_copies:
        earlier = (night - 1) * args.docs
        drawn = (uniforms(bits, 2 * n_copies) * earlier).astype(np.int64)
        _, first = np.unique(drawn, return_index=True)
        originals = drawn[np.sort(first)][:n_copies]  # distinct, in draw order
        for k in range(1, night):
            mine = originals[(originals // args.docs) == k - 1]
            if not len(mine):
                continue
            table = read_rows(out, k, mine % args.docs)
            for orig_id, text, source in zip(*(table.column(c).to_pylist() for c in ("id", "text", "source")), strict=True):
                copy, jaccard = planting.near_copy(text, rng, vocab[source], planting.near_band(rng))
                copies.append((orig_id, source, copy, jaccard))
        sources += [c[1] for c in copies]
        texts += [c[2] for c in copies]

    order = np.argsort(uniforms(bits, len(texts)), kind="stable")
    day = START + timedelta(days=night - 1)
    seconds = np.sort((uniforms(bits, len(texts)) * 86400).astype(np.int64))
    ids = [f"n{night:02d}-{i:07d}" for i in range(len(texts))]
    src = [sources[i] for i in order.tolist()]
    table = pa.table(
        {
            "id": ids,
            "text": [texts[i] for i in order.tolist()],
            "source": src,
            "timestamp": [day + timedelta(seconds=int(s)) for s in seconds.tolist()],
            "label": [planting.SOURCE_LABELS[s] for s in src],
        },
        schema=planting.SCHEMA,
    )
    folder = night_dir(out, night)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("part-*.parquet"):
        old.unlink()
    for k, rows in enumerate(np.array_split(np.arange(len(ids)), args.shards)):
        pq.write_table(table.slice(int(rows[0]), len(rows)), folder / f"part-{k:05d}.parquet", compression="zstd")
    n_fresh = args.docs - n_copies
    position = np.empty(len(order), dtype=np.int64)
    position[order] = np.arange(len(order))
    with (folder / "copies.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["doc_id", "duplicate_of", "jaccard"])
        for k, (orig_id, _, _, jaccard) in enumerate(copies):
            writer.writerow([ids[position[n_fresh + k]], orig_id, round(jaccard, 4)])
    return {
        "sha256": corpus_inputs.shards_sha256(sorted(folder.glob("part-*.parquet"))),
        "docs": len(ids),
        "copies": len(copies),
        "chars": int(sum(len(t) for t in texts)),
    }


def corpus_key(args: argparse.Namespace) -> str:
    """The parameters that fix every night's content, as the key in ``bench/corpus_hashes.json``."""
    return f"docs={args.docs} doc_chars={args.doc_chars} shards={args.shards} copy_share={args.copy_share} seed={args.seed}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nights", type=int, default=10)
    ap.add_argument("--docs", type=int, default=100000, help="documents per night")
    ap.add_argument("--doc-chars", type=int, default=1400, help="mean document length (characters)")
    ap.add_argument("--shards", type=int, default=8, help="Parquet shards per night")
    ap.add_argument("--copy-share", type=float, default=0.05, help="share of edited copies of earlier nights (night 2 on)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="output folder (default bench/data/scale-<docs>)")
    ap.add_argument("--allow-mismatch", action="store_true", help="keep going when a hash differs from the committed one")
    ap.add_argument("--update-expected", action="store_true",
                    help="record this corpus's hashes in bench/corpus_hashes.json (after a deliberate change)")
    args = ap.parse_args()
    out = args.out or ROOT / "bench" / "data" / f"scale-{args.docs}"
    out.mkdir(parents=True, exist_ok=True)
    key = corpus_key(args)
    manifest_path = out / "corpus.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.exists() else {}
    if manifest.get("key") != key:
        manifest = {"builder": "bench/make_scale_corpus.py", "key": key, "nights": {}}
    manifest["params"] = {k: v for k, v in vars(args).items() if k in ("docs", "doc_chars", "shards", "copy_share", "seed")}

    t0 = time.perf_counter()
    lo, hi = int(args.doc_chars * 0.8), int(args.doc_chars * 1.2)
    chunks = corpus_inputs.load_chunks(lo, hi)
    manifest["inputs"] = corpus_inputs.input_report(chunks)
    pools = {name: SentencePool(docs, lo // 2) for name, docs in chunks.items()}
    sizes = np.array([p.lengths.sum() for p in pools.values()], dtype=np.float64)
    shares = np.sqrt(sizes) / np.sqrt(sizes).sum()
    vocab = {name: planting.word_vocabulary(c.text for c in docs[:VOCAB_CHUNKS]) for name, docs in chunks.items()}
    print("sentence pools: " + ", ".join(
        f"{name} {len(p.sentences)} ({share:.1%})" for (name, p), share in zip(pools.items(), shares, strict=True)
    ), flush=True)

    for night in range(1, args.nights + 1):
        label = f"night{night:02d}"
        known = manifest["nights"].get(label)
        paths = sorted(night_dir(out, night).glob("part-*.parquet"))
        if known and paths and corpus_inputs.shards_sha256(paths) == known["sha256"]:
            print(f"{label}: kept ({known['docs']} docs, sha256 {known['sha256']})", flush=True)
            continue
        started = time.perf_counter()
        manifest["nights"][label] = build_night(out, night, args, pools, shares, vocab)
        entry = manifest["nights"][label]
        # Written after every night, so an interrupted build keeps the nights it finished.
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        print(f"{label}: {entry['docs']} docs ({entry['copies']} edited copies), {entry['chars'] / entry['docs']:.0f} "
              f"chars/doc, sha256 {entry['sha256']}, {time.perf_counter() - started:.1f} s", flush=True)

    content = {label: manifest["nights"][label]["sha256"] for label in (f"night{n:02d}" for n in range(1, args.nights + 1))}
    mismatch = None
    if args.update_expected:
        corpus_inputs.record("scale", key, content, manifest["inputs"])
        manifest["check"] = "recorded as the committed hash"
    else:
        try:
            manifest["check"] = corpus_inputs.check("scale", key, content, manifest["inputs"])
        except corpus_inputs.CorpusMismatch as exc:
            mismatch, manifest["check"] = exc, f"MISMATCH: {exc}"
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    print(f"corpus {out} ({key}), {args.nights} nights in {time.perf_counter() - t0:.0f} s: {manifest['check']}")
    if mismatch is not None and not args.allow_mismatch:
        raise SystemExit(f"{mismatch}\n(--allow-mismatch keeps this corpus)")


if __name__ == "__main__":
    main()
