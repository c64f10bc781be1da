"""Planting duplicates with a known ground truth, shared by the example and bench corpora.

A planted near-duplicate is a copy of a real document with a few word edits; a
planted exact duplicate is a verbatim copy or one that differs only in case or
whitespace. The ground truth is then measured, not assumed: every pair of
documents whose true Jaccard similarity is at least ``MIN_JACCARD`` is found
exactly (prefix-filtered all-pairs search) and written to a CSV beside the
shards, tagged ``planted`` (a copy and its source), ``natural`` (two documents
from the sources themselves, e.g. near-identical Debian copyright files) or
``derived`` (a pair involving a planted copy that was not itself planted, e.g.
a copy and a natural near-duplicate of its source).

True Jaccard follows Glia's tokenisation: NFKC, lowercase, ``\\w+`` tokens,
word 5-gram shingles (a document with fewer than 5 tokens is one shingle).
"""

from __future__ import annotations

import csv
import random
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SHINGLE_SIZE = 5
# Pairs below this true Jaccard are not listed in the ground truth.
MIN_JACCARD = 0.5
# Most planted near-duplicates land in this Jaccard band ...
NEAR_BAND = (0.75, 0.97)
# ... and this share of them in a harder band just below it, to probe recall.
HARD_SHARE = 0.1
HARD_BAND = (0.6, 0.75)
# Share of words edited in a near-duplicate: first draw, then the limits that
# retries may rescale it to. Jaccard near 0.97 needs under 3 % on ~250 words.
EDIT_RATE_FIRST = (0.03, 0.10)
EDIT_RATE_LIMITS = (0.01, 0.15)

# Class label of each source, stored in the ``label`` column.
SOURCE_LABELS = {
    "austen": "literature",
    "kjv": "scripture",
    "shakespeare": "drama",
    "debian-copyright": "license",
    "jargon": "glossary",
    "devil": "satire",
    "gcide": "dictionary",
}

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("source", pa.string()),
        ("timestamp", pa.timestamp("us", tz="UTC")),
        ("label", pa.string()),
    ]
)

GROUND_TRUTH_COLUMNS = [
    "doc_id",
    "duplicate_of",
    "kind",
    "night_of_doc",
    "night_of_original",
    "jaccard",
    "origin",
]

_TOKEN = re.compile(r"\w+")
# Glia's exact-duplicate normaliser folds whitespace with RE2, whose \s is ASCII only.
_ASCII_SPACE = re.compile(r"[ \t\n\r\f\v]+")
_WHITESPACE = re.compile(r"(\s+)")
# A word with its surrounding punctuation: ("\"", "Dirty", ",").
_WORD_PARTS = re.compile(r"^(\W*)(.*?)(\W*)$", re.DOTALL)


@dataclass
class Doc:
    """One corpus row plus the night it belongs to."""

    id: str
    text: str
    source: str
    label: str
    timestamp: datetime
    night: int


@dataclass(frozen=True)
class Plant:
    """A planted copy: ``copy`` duplicates ``original`` (both are corpus ids)."""

    copy: str
    original: str
    kind: str  # "exact" or "near"


def normalize(text: str) -> str:
    """Glia's exact-duplicate normal form: NFKC, lowercase, whitespace folded, trimmed."""
    return _ASCII_SPACE.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def tokens(text: str) -> list[str]:
    """Glia's tokenisation: NFKC, lowercase, ``\\w+`` runs."""
    return _TOKEN.findall(unicodedata.normalize("NFKC", text).lower())


def shingles(text: str) -> set[tuple[str, ...]]:
    """Word 5-gram shingle set; a document of fewer than 5 tokens is one shingle."""
    toks = tokens(text)
    if len(toks) < SHINGLE_SIZE:
        return {tuple(toks)}
    return set(zip(*(toks[i:] for i in range(SHINGLE_SIZE)), strict=False))


def jaccard(a: set, b: set) -> float:
    """Jaccard similarity of two sets (1.0 for two empty sets)."""
    union = len(a | b)
    return len(a & b) / union if union else 1.0


def word_vocabulary(texts: Iterable[str]) -> list[str]:
    """Lowercase words of 3+ letters, with repeats, so draws follow real frequencies."""
    return [w.lower() for text in texts for w in re.findall(r"[A-Za-z]{3,}", text)]


def edit_words(text: str, rng: random.Random, vocab: Sequence[str], rate: float) -> str:
    """Substitute, delete or insert about ``rate`` of the words, in short bursts.

    Edits come in bursts of 1-6 adjacent words, as when a sentence is reworded;
    scattered single-word edits would each break 5 shingles and push every
    copy's Jaccard down to where real near-duplicates rarely are. Punctuation
    and capitalisation around a substituted word are kept, and whitespace is
    preserved, so the copy still reads like the original.
    """
    parts = _WHITESPACE.split(text)
    words, gaps = parts[0::2], [*parts[1::2], ""]
    n = len(words)
    positions: set[int] = set()
    n_edits = max(1, round(rate * n))
    while len(positions) < min(n_edits, n):
        start = rng.randrange(n)
        positions.update(range(start, min(n, start + rng.randint(1, 6))))
    out: list[str] = []
    for i, (word, gap) in enumerate(zip(words, gaps, strict=True)):
        if i not in positions:
            out += [word, gap]
            continue
        op = rng.choices(("substitute", "delete", "insert"), weights=(2, 1, 1))[0]
        if op == "delete":
            continue
        if op == "insert":
            out += [rng.choice(vocab), " ", word, gap]
            continue
        # The pattern matches any string; the ignore is for the Optional return type.
        lead, core, trail = _WORD_PARTS.match(word).groups()  # type: ignore[union-attr]
        new = rng.choice(vocab)
        if core[:1].isupper():
            new = new.upper() if core.isupper() and len(core) > 1 else new.capitalize()
        out += [lead, new, trail, gap]
    edited = "".join(out)
    # A deleted last word leaves the previous gap dangling at the end.
    return edited if text[-1:].isspace() else edited.rstrip()


def near_copy(
    text: str, rng: random.Random, vocab: Sequence[str], band: tuple[float, float], tries: int = 12
) -> tuple[str, float]:
    """A word-edited copy of ``text`` and its true Jaccard with ``text``.

    A target Jaccard is drawn uniformly from ``band`` so planted pairs spread
    over it rather than bunching where one edit rate happens to land. The first
    edit rate is drawn from :data:`EDIT_RATE_FIRST`; since ``1 - J`` grows
    roughly in proportion to the rate, each retry rescales it (within
    :data:`EDIT_RATE_LIMITS`) towards the target. The closest copy is kept when
    none lands within 0.02 (a short text changes in coarse steps).
    """
    original = shingles(text)
    target = rng.uniform(*band)
    rate = rng.uniform(*EDIT_RATE_FIRST)
    best: tuple[float, str, float] | None = None
    for _ in range(tries):
        candidate = edit_words(text, rng, vocab, rate)
        j = jaccard(original, shingles(candidate))
        if candidate != text and (best is None or abs(j - target) < best[0]):
            best = (abs(j - target), candidate, j)
        if abs(j - target) <= 0.02:
            break
        low, high = EDIT_RATE_LIMITS
        rate = min(high, max(low, rate * (1 - target) / max(1 - j, 1e-3)))
    if best is None:
        raise ValueError("could not edit text into a near-duplicate")
    return best[1], best[2]


def near_band(rng: random.Random) -> tuple[float, float]:
    """The Jaccard band for one planted near-duplicate."""
    return HARD_BAND if rng.random() < HARD_SHARE else NEAR_BAND


def exact_copy(text: str, rng: random.Random) -> str:
    """A verbatim copy, or one that differs only in case and/or whitespace.

    A variant whose normal form would change (``ß`` uppercases to ``SS``) falls
    back to the verbatim text, so every exact copy has the original's
    :func:`normalize` form, the key Glia's exact-duplicate tagger hashes.
    """
    variant = text
    if rng.random() < 0.5:
        variant = variant.upper() if rng.random() < 0.5 else variant.lower()
    if rng.random() < 0.5:
        style = rng.randrange(3)
        if style == 0:
            variant = " ".join(variant.split())
        elif style == 1:
            variant = variant.replace(" ", "  ")
        else:
            variant = "\n" + variant.replace("\n", "\r\n") + "\n\n"
    return variant if normalize(variant) == normalize(text) else text


def later_timestamp(rng: random.Random, after: datetime, start: datetime, end: datetime) -> datetime:
    """A time in ``[start, end]`` strictly after ``after``: a copy is ingested after its source."""
    low = max(after + timedelta(seconds=1), start)
    if low >= end:
        return low
    return random_time(rng, low, end)


def random_time(rng: random.Random, start: datetime, end: datetime) -> datetime:
    """A uniform time between ``start`` and ``end``, whole seconds."""
    return start + timedelta(seconds=rng.randrange(int((end - start).total_seconds())))


def similar_pairs(texts: Sequence[str], min_jaccard: float = MIN_JACCARD) -> list[tuple[int, int, float]]:
    """All index pairs ``(i, j, jaccard)`` with ``i < j`` and true Jaccard >= ``min_jaccard``.

    Exact, not approximate: prefix filtering (Bayardo et al., "Scaling up all
    pairs similarity search") orders each shingle set rarest shingle first; two
    sets with Jaccard >= t must share a shingle among the first
    ``|A| - ceil(t |A|) + 1`` of each, so only those prefixes are indexed and the
    few candidates they yield are verified with exact set intersection.
    """
    sets = [np.unique(np.fromiter((hash(s) for s in shingles(t)), dtype=np.int64)) for t in texts]
    sizes = np.array([len(s) for s in sets])
    doc_of = np.repeat(np.arange(len(sets)), sizes)
    _, rank, counts = np.unique(np.concatenate(sets), return_inverse=True, return_counts=True)
    # Sort each document's shingles by (global frequency, shingle) and keep its prefix.
    order = np.lexsort((rank, counts[rank], doc_of))
    position = np.arange(len(order)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    prefix_len = sizes - np.ceil(min_jaccard * sizes).astype(int) + 1
    keep = order[position < prefix_len[doc_of[order]]]
    tok, doc = rank[keep], doc_of[keep]
    by_token = np.lexsort((doc, tok))
    tok, doc = tok[by_token], doc[by_token]
    starts = np.flatnonzero(np.r_[True, tok[1:] != tok[:-1]])
    ends = np.r_[starts[1:], len(tok)]
    candidates: set[tuple[int, int]] = set()
    for start, end in zip(starts[ends - starts > 1], ends[ends - starts > 1], strict=True):
        members = doc[start:end].tolist()
        candidates.update((a, b) for k, a in enumerate(members) for b in members[k + 1 :])
    as_sets: dict[int, set[int]] = {}
    pairs = []
    for a, b in sorted(candidates):
        sa = as_sets.setdefault(a, set(sets[a].tolist()))
        sb = as_sets.setdefault(b, set(sets[b].tolist()))
        j = jaccard(sa, sb)
        if j >= min_jaccard:
            pairs.append((a, b, j))
    return pairs


def ground_truth(docs: Sequence[Doc], plants: Iterable[Plant], min_jaccard: float = MIN_JACCARD) -> list[dict]:
    """Ground-truth rows for every similar pair and every planted pair.

    The later document (by timestamp, then id) is ``doc_id`` and the earlier
    one ``duplicate_of``; a planted copy is always later than its source.
    ``kind`` is ``exact`` when both have the same :func:`normalize` form, else
    ``near`` (so texts that differ only in punctuation are ``near`` with Jaccard 1.0).
    """
    index = {d.id: i for i, d in enumerate(docs)}
    plants = list(plants)
    planted = {(index[p.original], index[p.copy]) for p in plants}
    copies = {p.copy for p in plants}
    found = {(a, b): j for a, b, j in similar_pairs([d.text for d in docs], min_jaccard)}
    for a, b in planted:
        key = (min(a, b), max(a, b))
        if key not in found:  # A planted pair below the listing threshold is still listed.
            found[key] = jaccard(shingles(docs[a].text), shingles(docs[b].text))
    rows = []
    for (a, b), j in found.items():
        old, new = sorted((docs[a], docs[b]), key=lambda d: (d.timestamp, d.id))
        pair = (index[old.id], index[new.id])
        if pair in planted:
            origin = "planted"
        elif old.id in copies or new.id in copies:
            origin = "derived"
        else:
            origin = "natural"
        rows.append(
            {
                "doc_id": new.id,
                "duplicate_of": old.id,
                "kind": "exact" if normalize(old.text) == normalize(new.text) else "near",
                "night_of_doc": new.night,
                "night_of_original": old.night,
                "jaccard": round(j, 4),
                "origin": origin,
            }
        )
    rows.sort(key=lambda r: (r["doc_id"], r["duplicate_of"]))
    return rows


def write_ground_truth(rows: Sequence[dict], path: Path) -> None:
    """Write ground-truth rows as CSV with :data:`GROUND_TRUTH_COLUMNS`."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=GROUND_TRUTH_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def write_shards(docs: Sequence[Doc], directory: Path, n_shards: int) -> list[Path]:
    """Write docs, in order, as ``n_shards`` near-equal zstd Parquet files."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, chunk in enumerate(np.array_split(np.arange(len(docs)), n_shards)):
        rows = [docs[i] for i in chunk]
        table = pa.table(
            {
                "id": [d.id for d in rows],
                "text": [d.text for d in rows],
                "source": [d.source for d in rows],
                "timestamp": [d.timestamp for d in rows],
                "label": [d.label for d in rows],
            },
            schema=SCHEMA,
        )
        path = directory / f"part-{k:05d}.parquet"
        pq.write_table(table, path, compression="zstd")
        paths.append(path)
    return paths


def jaccard_summary(values: Sequence[float]) -> str:
    """A one-line distribution of Jaccard values for build logs."""
    if not values:
        return "none"
    edges = [0.0, 0.5, 0.6, 0.75, 0.85, 0.9, 0.97, 1.0, 1.01]
    counts, _ = np.histogram(values, bins=edges)
    bins = ", ".join(
        f"[{lo:.2f},{hi:.2f}): {c}" if hi <= 1.0 else f"1.0: {c}"
        for lo, hi, c in zip(edges[:-1], edges[1:], counts, strict=True)
        if c
    )
    q = np.percentile(values, [5, 50, 95])
    return f"n={len(values)} p5={q[0]:.3f} median={q[1]:.3f} p95={q[2]:.3f} | {bins}"
