"""Build a benchmark corpus of real text with planted duplicates and a measured ground truth.

Usage (from the repository root)::

    .venv/bin/python bench/make_bench_corpus.py --out bench/data/corpus-20k

Documents are ~``doc_chars``-character chunks of real text from pinned inputs only
(``bench/corpus_inputs.py``: Austen, the King James Bible, Shakespeare, the Jargon
File, The Devil's Dictionary), topped up with GCIDE dictionary entries when those
run short; nothing comes from the machine's own files, so every machine builds the
same corpus. Every source chunk is used at most once; only planted copies repeat
text: ~5 % near-duplicates (word edits) and ~2 % exact copies (verbatim or
case/whitespace only). ``planted.csv`` beside the shards lists every pair with true
Jaccard >= 0.5 (planted, natural, e.g. the KJV's parallel passages, or derived), in
the same format as ``examples/commons/planted.csv``; all night columns are 1.

``corpus.json`` beside them records the parameters, the content hash (sha256 over
the ordered documents) and each input's hash; the build stops if they differ from
``bench/corpus_hashes.json`` (``--allow-mismatch`` keeps going), naming the inputs
that differ.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpus_inputs
import planting
import sources
from planting import Doc, Plant

NEAR_SHARE = 0.05
EXACT_SHARE = 0.02
# GCIDE is two thirds of the inputs' text: it only fills what the other sources lack.
FILLER = "gcide"
START = datetime(2024, 1, 1, tzinfo=UTC)
END = datetime(2025, 6, 30, 23, 59, 59, tzinfo=UTC)


def source_chunks(
    n_needed: int, by_source: dict[str, list[sources.SourceDoc]], rng: random.Random
) -> list[sources.SourceDoc]:
    """At least ``n_needed`` distinct real-text chunks from ``by_source`` (see :func:`corpus_inputs.load_chunks`).

    Chunks whose token sequences repeat (a verse or dictionary entry that occurs
    twice) are kept once, so every exact duplicate in the corpus is a planted one.
    The filler source is only drawn on for the shortfall, so the others keep their share.
    """
    chunks = _distinct([c for name, docs in by_source.items() if name != FILLER for c in docs])
    if len(chunks) < n_needed:
        extra = _distinct(by_source[FILLER])
        chunks += rng.sample(extra, min(len(extra), n_needed - len(chunks)))
    if len(chunks) < n_needed:
        raise RuntimeError(f"only {len(chunks)} distinct chunks of real text for {n_needed} documents")
    return chunks


def _distinct(chunks: list[sources.SourceDoc]) -> list[sources.SourceDoc]:
    """The chunks in order, keeping only the first of those with equal token sequences."""
    # The token tuples themselves, not their hash(): a hash collision would drop a chunk, and
    # str hashes change with every process, so the corpus would not be the same on every build.
    seen: set[tuple[str, ...]] = set()
    kept = []
    for chunk in chunks:
        key = tuple(planting.tokens(chunk.text))
        if key not in seen:
            seen.add(key)
            kept.append(chunk)
    return kept


def corpus_key(n_docs: int, doc_chars: int, n_shards: int, seed: int) -> str:
    """The parameters that fix a bench corpus, as its key in ``bench/corpus_hashes.json``."""
    return f"n_docs={n_docs} doc_chars={doc_chars} shards={n_shards} seed={seed}"


def make_bench_corpus(
    out_dir: Path | str,
    n_docs: int = 20000,
    doc_chars: int = 1500,
    n_shards: int = 8,
    seed: int = 0,
    allow_mismatch: bool = False,
    update_expected: bool = False,
) -> Path:
    """Write ``n_docs`` documents as ``n_shards`` Parquet shards plus ``planted.csv`` and ``corpus.json``.

    Returns the CSV path. Raises :class:`corpus_inputs.CorpusMismatch` (after writing
    everything, the verdict included in ``corpus.json``) when the content hash differs
    from the committed one, unless ``allow_mismatch``; ``update_expected`` records
    this build's hashes as the committed ones instead of checking them.
    """
    out_dir = Path(out_dir)
    rng = random.Random(seed)
    n_near = round(n_docs * NEAR_SHARE)
    n_exact = round(n_docs * EXACT_SHARE)
    n_base = n_docs - n_near - n_exact
    by_source = corpus_inputs.load_chunks(int(doc_chars * 0.8), int(doc_chars * 1.2))
    inputs = corpus_inputs.input_report(by_source)
    chosen = rng.sample(source_chunks(n_base, by_source, rng), n_base)
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

    key = corpus_key(n_docs, doc_chars, n_shards, seed)
    sha = corpus_inputs.shards_sha256(sorted(out_dir.glob("part-*.parquet")))
    manifest = {"builder": "bench/make_bench_corpus.py", "key": key,
                "params": {"n_docs": n_docs, "doc_chars": doc_chars, "n_shards": n_shards, "seed": seed},
                "sha256": sha, "inputs": inputs}
    mismatch = None
    if update_expected:
        corpus_inputs.record("bench", key, {"all": sha}, inputs)
        manifest["check"] = "recorded as the committed hash"
    else:
        try:
            manifest["check"] = corpus_inputs.check("bench", key, {"all": sha}, inputs)
        except corpus_inputs.CorpusMismatch as exc:
            mismatch, manifest["check"] = exc, f"MISMATCH: {exc}"
    (out_dir / "corpus.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    print(f"corpus sha256 {sha} ({key}): {manifest['check']}", flush=True)
    if mismatch is not None and not allow_mismatch:
        raise mismatch
    return csv_path


def read_manifest(out_dir: Path, n_docs: int, doc_chars: int, n_shards: int, seed: int) -> dict | None:
    """The manifest of an existing corpus built with these parameters whose shards still hash as recorded, else None."""
    path = Path(out_dir) / "corpus.json"
    if not path.exists() or not (Path(out_dir) / "planted.csv").exists():
        return None
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("key") != corpus_key(n_docs, doc_chars, n_shards, seed):
        return None
    if corpus_inputs.shards_sha256(sorted(Path(out_dir).glob("part-*.parquet"))) != manifest.get("sha256"):
        return None
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/data/corpus"), help="output directory")
    parser.add_argument("--n-docs", type=int, default=20000)
    parser.add_argument("--doc-chars", type=int, default=1500)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--allow-mismatch", action="store_true", help="keep a corpus whose hash differs from the committed one")
    parser.add_argument("--update-expected", action="store_true",
                        help="record this build's hashes in bench/corpus_hashes.json (after a deliberate change)")
    args = parser.parse_args()
    started = time.perf_counter()
    try:
        csv_path = make_bench_corpus(args.out, args.n_docs, args.doc_chars, args.shards, args.seed,
                                     args.allow_mismatch, args.update_expected)
    except corpus_inputs.CorpusMismatch as exc:
        raise SystemExit(f"{exc}\n(--allow-mismatch keeps this corpus; its manifest is {args.out / 'corpus.json'})") from None
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
