"""Build Glia's example corpus: three nights of Parquet shards with known duplicates.

Run from the repository root::

    .venv/bin/python examples/build_example_corpus.py

It writes ``examples/commons/night{1,2,3}/part-*.parquet`` and
``examples/commons/planted.csv``. The build is deterministic for a given machine
(fixed seed, sorted inputs); only the Debian copyright files depend on which
packages the machine has installed.

What is in it (see ``examples/commons/README.md``):

* real text: Austen, the King James Bible, Shakespeare, Debian copyright files,
  and two rare sources (the Jargon File, The Devil's Dictionary);
* natural near-duplicates among the Debian copyright files, spread over nights;
* planted near-duplicates (word edits) and exact duplicates (verbatim, or only
  case/whitespace changed) within and across nights;
* ``timestamp``: ingest times, every night later than the one before, a copy
  always later than its source.
"""

from __future__ import annotations

import random
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))

import planting
import sources
from planting import Doc, Plant

K = TypeVar("K")

SEED = 20250101
OUT_DIR = Path(__file__).resolve().parent / "commons"

# Copyright files longer than this are left out to keep the shards small.
MAX_COPYRIGHT_CHARS = 12_000
# Packages of one source often ship the same copyright file; keeping a few
# copies keeps natural exact duplicates without letting them dominate.
MAX_COPYRIGHT_COPIES = 2
# Share of the selected copyright files that goes to each night.
COPYRIGHT_SHARE = {1: 0.5, 2: 0.25, 3: 0.25}


@dataclass
class Night:
    """One nightly delivery: its size, shards, ingest window and source mix."""

    size: int
    shards: int
    start: datetime
    end: datetime
    # Shares of the common sources, after copyright files and rare sources.
    mix: dict[str, float]
    # Exact numbers of documents from the rare sources.
    rare: dict[str, int]
    # Planted copies: (kind, night the originals come from, how many).
    plants: list[tuple[str, int, int]]


# The mix drifts towards Shakespeare night by night, so novelty and
# distribution-shift signals have something to find.
NIGHTS = {
    1: Night(
        size=1500,
        shards=3,
        start=datetime(2023, 1, 1, tzinfo=UTC),
        end=datetime(2024, 12, 31, 23, 59, 59, tzinfo=UTC),
        mix={"austen": 0.4, "kjv": 0.3, "shakespeare": 0.3},
        rare={"jargon": 20, "devil": 5},
        plants=[("near", 1, 45), ("exact", 1, 24)],
    ),
    2: Night(
        size=800,
        shards=2,
        start=datetime(2025, 1, 1, tzinfo=UTC),
        end=datetime(2025, 3, 31, 23, 59, 59, tzinfo=UTC),
        mix={"austen": 0.3, "kjv": 0.3, "shakespeare": 0.4},
        rare={"jargon": 10, "devil": 3},
        plants=[("near", 1, 30), ("near", 2, 10), ("exact", 1, 16), ("exact", 2, 8)],
    ),
    3: Night(
        size=800,
        shards=2,
        start=datetime(2025, 4, 1, tzinfo=UTC),
        end=datetime(2025, 6, 30, 23, 59, 59, tzinfo=UTC),
        mix={"austen": 0.25, "kjv": 0.25, "shakespeare": 0.5},
        rare={"jargon": 10, "devil": 2},
        plants=[
            ("near", 1, 15),
            ("near", 2, 15),
            ("near", 3, 8),
            ("exact", 1, 10),
            ("exact", 2, 8),
            ("exact", 3, 6),
        ],
    ),
}


def load_sources() -> dict[str, list[sources.SourceDoc]]:
    """All source documents, keyed by source name, in loader order."""
    return {
        "austen": sources.austen(),
        "kjv": sources.kjv(),
        "shakespeare": sources.shakespeare(),
        "debian-copyright": select_copyright(sources.debian_copyright()),
        "jargon": sources.jargon(),
        "devil": sources.devil(),
    }


def select_copyright(docs: list[sources.SourceDoc]) -> list[sources.SourceDoc]:
    """Copyright files short enough for the example, at most a few copies of each text."""
    seen: Counter[tuple[str, ...]] = Counter()
    kept = []
    for doc in docs:
        key = tuple(planting.tokens(doc.text))
        if len(doc.text) <= MAX_COPYRIGHT_CHARS and seen[key] < MAX_COPYRIGHT_COPIES:
            seen[key] += 1
            kept.append(doc)
    return kept


def base_counts(night: Night, n_copyright: int) -> dict[str, int]:
    """How many source documents of each source a night draws (before planting)."""
    n_base = night.size - sum(n for _, _, n in night.plants)
    counts = {"debian-copyright": n_copyright, **night.rare}
    return counts | split_counts(n_base - sum(counts.values()), night.mix)


def build(out_dir: Path = OUT_DIR, seed: int = SEED) -> tuple[list[Doc], list[Plant]]:
    """Build the corpus in memory, write shards and ground truth, return both."""
    rng = random.Random(seed)
    pools = load_sources()
    vocab = {name: planting.word_vocabulary(d.text for d in docs) for name, docs in pools.items()}
    queues = {name: rng.sample(docs, len(docs)) for name, docs in pools.items()}
    copyright_split = split_counts(len(pools["debian-copyright"]), COPYRIGHT_SHARE)

    by_night: dict[int, list[Doc]] = {}
    copies: list[tuple[Doc, Doc, str]] = []  # (copy, original, kind); ids come later
    for number, night in NIGHTS.items():
        docs = []
        for name, count in base_counts(night, copyright_split[number]).items():
            if count > len(queues[name]):
                raise RuntimeError(f"source {name!r} has too few documents for night {number}")
            for item in queues[name][:count]:
                docs.append(
                    Doc(
                        "",
                        item.text,
                        name,
                        planting.SOURCE_LABELS[name],
                        planting.random_time(rng, night.start, night.end),
                        number,
                    )
                )
            del queues[name][:count]
        by_night[number] = docs
        planted: list[Doc] = []
        for kind, from_night, count in night.plants:
            for original in rng.sample(by_night[from_night], count):
                if kind == "near":
                    band = planting.near_band(rng)
                    text, _ = planting.near_copy(original.text, rng, vocab[original.source], band)
                else:
                    text = planting.exact_copy(original.text, rng)
                stamp = planting.later_timestamp(rng, original.timestamp, night.start, night.end)
                copy = Doc("", text, original.source, original.label, stamp, number)
                planted.append(copy)
                copies.append((copy, original, kind))
        docs.extend(planted)

    # Shuffle each night before numbering, so ids and row order do not reveal
    # which documents are planted copies.
    counters: Counter[str] = Counter()
    for docs in by_night.values():
        rng.shuffle(docs)
        for doc in docs:
            doc.id = f"{doc.source}-{counters[doc.source]:06d}"
            counters[doc.source] += 1
    plants = [Plant(copy.id, original.id, kind) for copy, original, kind in copies]

    for old in out_dir.glob("night*"):
        shutil.rmtree(old)
    for number, night in NIGHTS.items():
        planting.write_shards(by_night[number], out_dir / f"night{number}", night.shards)
    all_docs = [d for number in NIGHTS for d in by_night[number]]
    rows = planting.ground_truth(all_docs, plants)
    planting.write_ground_truth(rows, out_dir / "planted.csv")
    _report(all_docs, rows, out_dir)
    return all_docs, plants


def split_counts(total: int, shares: dict[K, float]) -> dict[K, int]:
    """Split ``total`` items by ``shares``; the last key takes the rounding remainder."""
    keys = list(shares)
    counts = {k: round(total * shares[k]) for k in keys[:-1]}
    counts[keys[-1]] = total - sum(counts.values())
    return counts


def _report(docs: list[Doc], rows: list[dict], out_dir: Path) -> None:
    """Print what was built: counts, ground truth and Jaccard distributions, sizes."""
    for number in NIGHTS:
        night_docs = [d for d in docs if d.night == number]
        mix = Counter(d.source for d in night_docs)
        print(f"night{number}: {len(night_docs)} docs  " + ", ".join(f"{k}={v}" for k, v in sorted(mix.items())))
    print(f"total: {len(docs)} docs, labels: {dict(sorted(Counter(d.label for d in docs).items()))}")
    groups = Counter((r["origin"], r["kind"]) for r in rows)
    print("ground truth pairs:", ", ".join(f"{o}/{k}={n}" for (o, k), n in sorted(groups.items())))
    planted_near = [r for r in rows if r["origin"] == "planted" and r["kind"] == "near"]
    cross = sum(r["night_of_doc"] != r["night_of_original"] for r in planted_near)
    print(f"planted near-duplicates: {len(planted_near)} ({cross} cross-night)")
    print("  jaccard:", planting.jaccard_summary([r["jaccard"] for r in planted_near]))
    for origin in ("natural", "derived"):
        near = [r["jaccard"] for r in rows if r["origin"] == origin and r["kind"] == "near"]
        print(f"{origin} near pairs (jaccard >= {planting.MIN_JACCARD}):", planting.jaccard_summary(near))
    files = sorted(out_dir.glob("night*/*.parquet"))
    sizes = [p.stat().st_size for p in files]
    print(f"{len(files)} shards, {sum(sizes) / 1e6:.2f} MB in all, largest {max(sizes) / 1e6:.2f} MB")


if __name__ == "__main__":
    build()
