"""Near-duplicate quality on edited copies of text that no Glia default was built or tuned on.

    PYTHONPATH=$PWD .venv/bin/python bench/quality_near_dup.py [--quick] [--out bench/results]

The set (:func:`build_set`, deterministic: a fixed seed and string-seeded ``random.Random``)
is cut from FOLDOC, the Free On-line Dictionary of Computing (Debian ``dict-foldoc``, pinned
in ``examples/sources.py``; GFDL), which neither the example corpus nor the dedup benchmark
corpora use. Entries that FOLDOC took from the Jargon File are left out (the example corpus
has Jargon File entries). Consecutive entries are grouped into documents of 400-2000
characters, like every other corpus here. The full run also measures a second, larger set
cut the same way from GCIDE (``dict-gcide``, used by the dedup benchmark corpora as filler,
never to choose a near-dup setting).

Per set: originals, edited copies of them and hard negatives, spread over three nights:

- copies (``KINDS``): ``drop`` (2-8 % of the words removed), ``drop+swap`` (the same plus
  2-4 swapped neighbouring words), ``boilerplate`` (one boilerplate line inserted),
  ``case+space`` (case and whitespace changed: an exact duplicate after normalisation) and
  ``mixed`` (2-8 % drops, swaps, a boilerplate line and case changes at once). A copy lands
  in its original's night or a later one, so most copies must be matched against the stored
  history, not within their night.
- hard negatives: half of a document's words (a contiguous half) followed by half of a text
  that is in no other document: about half their content is shared with that document, and
  flagging them is a false positive.

Every night is a real ``engine.night.run_night`` on a temporary DuckDB (the path of
``glia run``), with the setting under test as ``[stages.dedup]``. Scores come from
``v_documents``: a document is *flagged* when it has ``exact_dup_of`` or ``near_dup_of``; a
flag is right when the survivor it names belongs to the same family (an original and its
copies). Precision = right flags / flags; recall = right flags / (documents that should be
flagged: every family member but one); F1 their harmonic mean.

The scale check (``scale``) rebuilds the shape of the 1M-document run that motivated this
(5 % copies with exactly 4 % of their words dropped, of documents of earlier nights) at
``--scale-docs`` documents per night over three nights, from GCIDE chunks of ~1.4k characters:
a 1M run does not fit a shared 2-core machine in minutes, and recall of a copy depends on its
length and edit rate and on how many history documents compete for its candidate slots, which
the proxy keeps (``max_history_candidates`` per document is the same at any size).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "examples")]

import planting  # noqa: E402
import sources  # noqa: E402

from glia.curation.dedup import NearDup  # noqa: E402
from glia.engine.config import GliaConfig  # noqa: E402
from glia.engine.night import ThreadExecutor, run_night  # noqa: E402
from glia.storage.catalog import Catalog  # noqa: E402

SEED = 12
NIGHTS = 3
KINDS = {"drop": 0.35, "drop+swap": 0.15, "boilerplate": 0.10, "case+space": 0.10, "mixed": 0.30}
# Lines of the kind sites and mirrors add to a page; each is 9-16 words.
BOILERPLATE = (
    "This page was last edited on 12 March 2021, at 14:02 and is mirrored here for reference.",
    "Copyright (c) the authors. Permission is granted to copy, distribute and modify this document.",
    "Retrieved from the online archive; see the original site for the most recent version.",
    "Share this article with your friends and colleagues using the buttons below.",
    "Please report errors and omissions to the editors, who will correct them promptly.",
    "Advertisement: subscribe to our newsletter for weekly updates on computing terms.",
)
# The settings measured besides the shipped default: (label, NearDup overrides).
SETTINGS: tuple[tuple[str, dict], ...] = (
    ("old default: word 5-gram, 16x7, est. J >= 0.75", dict(ngram=5, bands=16, rows=7, threshold=0.75)),
    ("word 5-gram, 16x7, est. J >= 0.5", dict(ngram=5, bands=16, rows=7, threshold=0.5)),
    ("word 5-gram, 32x4, est. J >= 0.5", dict(ngram=5, bands=32, rows=4, threshold=0.5)),
    ("word 5-gram, 32x4, est. J >= 0.4", dict(ngram=5, bands=32, rows=4, threshold=0.4)),
    ("word 3-gram, 16x7, est. J >= 0.75", dict(ngram=3, bands=16, rows=7, threshold=0.75)),
    ("word 3-gram, 16x7, est. J >= 0.6", dict(ngram=3, bands=16, rows=7, threshold=0.6)),
    ("word 3-gram, 20x5, est. J >= 0.55", dict(ngram=3, bands=20, rows=5, threshold=0.55)),
    ("word 3-gram, 28x4, est. J >= 0.5", dict(ngram=3, bands=28, rows=4, threshold=0.5)),
    ("word 3-gram, 32x4, est. J >= 0.6", dict(ngram=3, bands=32, rows=4, threshold=0.6)),
    ("word 3-gram, 32x4, est. J >= 0.55", dict(ngram=3, bands=32, rows=4, threshold=0.55)),
    ("word 3-gram, 32x4, est. J >= 0.5", dict(ngram=3, bands=32, rows=4, threshold=0.5)),
    ("word 3-gram, 32x4, est. J >= 0.45", dict(ngram=3, bands=32, rows=4, threshold=0.45)),
    ("word 2-gram, 32x4, est. J >= 0.55", dict(ngram=2, bands=32, rows=4, threshold=0.55)),
)


@dataclass(frozen=True)
class Doc:
    """One document of the set: ``family`` groups an original with its copies (a hard
    negative is a family of its own)."""

    doc_id: str
    night: int
    family: str
    kind: str  # original, a KINDS key, or hard-negative
    text: str
    drop_rate: float = 0.0


# -- the set ---------------------------------------------------------------------------------


def foldoc_texts(min_chars: int = 400, max_chars: int = 2000) -> list[str]:
    """FOLDOC entries (without those taken from the Jargon File), grouped into documents."""
    entries = [e for e in sources.dictd_entries("dict-foldoc", "foldoc") if "Jargon File" not in e]
    entries = ["\n\n".join(" ".join(p.split()) for p in sources.paragraphs(e)) for e in entries]
    return sources.group_paragraphs(entries, min_chars, max_chars)


def gcide_texts(min_chars: int = 400, max_chars: int = 2000) -> list[str]:
    """GCIDE entries grouped into documents (``examples/sources.py``)."""
    return [d.text for d in sources.gcide(min_chars, max_chars)]


_TOKEN = re.compile(r"\S+")


def _words(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in _TOKEN.finditer(text)]


def drop_words(text: str, rng: random.Random, rate: float) -> str:
    """Remove ``rate`` of the whitespace-separated words (at least one), each with the space after it."""
    spans = _words(text)
    k = max(1, round(rate * len(spans)))
    gone = set(rng.sample(range(len(spans)), min(k, len(spans) - 1)))
    out, pos = [], 0
    for i, (a, b) in enumerate(spans):
        if i in gone:
            out.append(text[pos:a])
            nxt = spans[i + 1][0] if i + 1 < len(spans) else len(text)
            pos = nxt
    out.append(text[pos:])
    return "".join(out)


def swap_words(text: str, rng: random.Random, n: int) -> str:
    """Swap ``n`` pairs of neighbouring words."""
    spans = _words(text)
    words = [text[a:b] for a, b in spans]
    for _ in range(n):
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
    out, pos = [], 0
    for (a, b), w in zip(spans, words, strict=True):
        out.append(text[pos:a])
        out.append(w)
        pos = b
    out.append(text[pos:])
    return "".join(out)


def insert_boilerplate(text: str, rng: random.Random) -> str:
    """One boilerplate line at the start, the end or between two paragraphs."""
    line = rng.choice(BOILERPLATE)
    paras = text.split("\n\n")
    at = rng.randint(0, len(paras))
    return "\n\n".join(paras[:at] + [line] + paras[at:])


def change_case_space(text: str, rng: random.Random) -> str:
    """Upper- or title-case some sentences and re-space the text (tabs, doubled spaces, one long line)."""
    parts = re.split(r"(?<=[.!?])\s+", text)
    for i in range(len(parts)):
        r = rng.random()
        if r < 0.2:
            parts[i] = parts[i].upper()
        elif r < 0.4:
            parts[i] = parts[i].title()
    sep = rng.choice(["  ", " \t", "\n"])
    return sep.join(parts).replace("\n\n", rng.choice([" ", "\n \n"]))


def edit(text: str, kind: str, rng: random.Random) -> tuple[str, float]:
    """An edited copy of ``text`` of the given kind; returns (copy, word drop rate)."""
    rate = 0.0
    if kind in ("drop", "drop+swap", "mixed"):
        rate = rng.uniform(0.02, 0.08)
        text = drop_words(text, rng, rate)
    if kind in ("drop+swap", "mixed"):
        text = swap_words(text, rng, rng.randint(2, 4))
    if kind in ("boilerplate", "mixed"):
        text = insert_boilerplate(text, rng)
    if kind == "mixed":
        parts = re.split(r"(?<=[.!?])\s+", text)
        i = rng.randrange(len(parts))
        parts[i] = parts[i].upper()
        text = " ".join(parts)
    if kind == "case+space":
        text = change_case_space(text, rng)
    return text, rate


def hard_negative(text: str, other: str, rng: random.Random) -> str:
    """A contiguous half of ``text``'s words, then half of ``other``'s: about half shared with ``text``."""
    a, b = text.split(), other.split()
    half = len(a) // 2
    start = rng.choice([0, len(a) - half])
    return " ".join(a[start : start + half] + b[: len(b) // 2])


def build_set(texts: Sequence[str], n_originals: int, seed: int = SEED, name: str = "set") -> list[Doc]:
    """Originals, copies and hard negatives over ``NIGHTS`` nights, from ``texts`` (in order).

    Originals are split 50/30/20 % over nights 1-3; each gets no copy (55 %), one (35 %) or
    two (10 %), of a kind drawn with ``KINDS``' weights, in its own night or a later one;
    15 % of the originals get a hard negative (its second half from a text kept out of the
    set), also in the same or a later night. Needs ``texts`` of at least 1.2 x ``n_originals``.
    """
    rng = random.Random(f"glia-quality-near-dup-{name}-{seed}")
    pool = list(texts)
    rng.shuffle(pool)
    if len(pool) < n_originals * 1.2:
        raise ValueError(f"{name}: {len(pool)} texts, need {int(n_originals * 1.2)} for {n_originals} originals")
    originals, spare = pool[:n_originals], pool[n_originals:]
    docs: list[Doc] = []
    kinds, weights = list(KINDS), list(KINDS.values())
    n_spare = 0
    for i, text in enumerate(originals):
        family = f"{name}-f{i:05d}"
        night = 1 if i < n_originals * 0.5 else 2 if i < n_originals * 0.8 else 3
        docs.append(Doc(f"{family}-o", night, family, "original", text))
        r = rng.random()
        for c in range(0 if r < 0.55 else 1 if r < 0.90 else 2):
            kind = rng.choices(kinds, weights)[0]
            copy, rate = edit(text, kind, rng)
            docs.append(Doc(f"{family}-c{c}", rng.randint(night, NIGHTS), family, kind, copy, rate))
        if rng.random() < 0.15:
            neg = hard_negative(text, spare[n_spare % len(spare)], rng)
            n_spare += 1
            docs.append(Doc(f"{family}-n", rng.randint(night, NIGHTS), f"{family}-n", "hard-negative", neg))
    return docs


def set_sha256(docs: Sequence[Doc]) -> str:
    """sha256 over the set's documents in order (night, id, kind, text, length-prefixed): two
    machines that report the same hash measured the same set."""
    import hashlib
    import struct

    digest = hashlib.sha256()
    for d in docs:
        for value in (str(d.night), d.doc_id, d.kind, d.text):
            data = value.encode("utf-8", "surrogatepass")
            digest.update(struct.pack("<Q", len(data)))
            digest.update(data)
    return digest.hexdigest()


def write_nights(docs: Sequence[Doc], root: Path, shards: int = 2) -> list[Path]:
    """Each night's documents, in a seeded shuffled order, as ``shards`` Parquet shards under ``root/nightN``."""
    rng = random.Random(f"glia-quality-near-dup-order-{len(docs)}")
    out = []
    for night in range(1, NIGHTS + 1):
        mine = [d for d in docs if d.night == night]
        rng.shuffle(mine)
        folder = root / f"night{night}"
        folder.mkdir(parents=True, exist_ok=True)
        table = pa.table({"id": [d.doc_id for d in mine], "text": [d.text for d in mine],
                          "source": [d.kind for d in mine]})
        step = -(-len(mine) // shards)
        for k in range(shards):
            pq.write_table(table.slice(k * step, step), folder / f"part-{k:05d}.parquet")
        out.append(folder)
    return out


# -- scoring -----------------------------------------------------------------------------------


def run_nights(nights: Sequence[Path], db: Path, near_dup: NearDup, workers: int = 2) -> tuple[dict[str, str], float]:
    """Every night through ``run_night`` on a fresh ``db``; doc_id -> survivor it was flagged as
    a duplicate of (documents not flagged are absent), and the nights' total seconds."""
    cfg = GliaConfig().with_stage_params("dedup", **asdict(near_dup))
    t0 = time.perf_counter()
    with ThreadExecutor(workers) as ex:
        for night in nights:
            run_night(night, db, cfg, executor=ex)
    seconds = time.perf_counter() - t0
    with Catalog(db, read_only=True) as cat:
        rows = cat.con.execute(
            "SELECT doc_id, coalesce(exact_dup_of, near_dup_of) FROM v_documents "
            "WHERE exact_dup_of IS NOT NULL OR near_dup_of IS NOT NULL").fetchall()
    return dict(rows), seconds


def score(docs: Sequence[Doc], flagged: dict[str, str]) -> dict:
    """Precision, recall and F1 of ``flagged`` against the families, with recall per copy kind
    and per drop rate, and how many hard negatives were flagged."""
    family = {d.doc_id: d.family for d in docs}
    sizes: dict[str, int] = {}
    for d in docs:
        sizes[d.family] = sizes.get(d.family, 0) + 1
    expected = sum(n - 1 for n in sizes.values())
    right = {d for d, s in flagged.items() if family.get(d) == family.get(s)}
    tp, n_flag = len(right), len(flagged)
    precision = tp / n_flag if n_flag else 1.0
    recall = tp / expected if expected else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    # A copy is found when it ends in its original's cluster (whichever of the two survived).
    # Survivors are followed to the end: an exact copy names its exact group's survivor, which
    # may itself be a near duplicate of the cluster's survivor.
    def root(d: str) -> str:
        seen = {d}
        while d in flagged and flagged[d] not in seen:
            d = flagged[d]
            seen.add(d)
        return d

    by_kind: dict[str, list[int]] = {}
    by_rate: dict[str, list[int]] = {}
    for d in docs:
        if d.kind in ("original", "hard-negative"):
            continue
        hit = int(root(d.doc_id) == root(d.family + "-o"))
        by_kind.setdefault(d.kind, []).append(hit)
        if d.drop_rate:
            lo = int(d.drop_rate * 100) // 2 * 2
            by_rate.setdefault(f"{lo}-{lo + 2}%", []).append(hit)
    negs = [d for d in docs if d.kind == "hard-negative"]
    return {
        "precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
        "flagged": n_flag, "right": tp, "expected": expected,
        "hard_negatives_flagged": sum(d.doc_id in flagged for d in negs), "hard_negatives": len(negs),
        "recall_by_kind": {k: round(sum(v) / len(v), 4) for k, v in sorted(by_kind.items())},
        "recall_by_drop_rate": {k: round(sum(v) / len(v), 4) for k, v in sorted(by_rate.items())},
    }


def true_jaccards(docs: Sequence[Doc], n: int) -> dict:
    """Word ``n``-gram Jaccard of every copy and hard negative with its original (quartiles per kind)."""
    original = {d.family: d.text for d in docs if d.kind == "original"}

    def grams(text: str) -> set:
        toks = planting.tokens(text)
        return set(zip(*(toks[i:] for i in range(n)), strict=False)) if len(toks) >= n else {tuple(toks)}

    per: dict[str, list[float]] = {}
    for d in docs:
        if d.kind == "original":
            continue
        base = original[d.family.removesuffix("-n")]
        per.setdefault(d.kind, []).append(planting.jaccard(grams(d.text), grams(base)))
    out = {}
    for kind, vals in sorted(per.items()):
        vals.sort()
        out[kind] = [round(vals[int(q * (len(vals) - 1))], 3) for q in (0.0, 0.25, 0.5, 0.75, 1.0)]
    return out


def measure(docs: Sequence[Doc], settings: Iterable[tuple[str, NearDup]], work: Path) -> list[dict]:
    """Every setting over the same three nights, each on a fresh database."""
    nights = write_nights(docs, work / "shards")
    rows = []
    for k, (label, nd) in enumerate(settings):
        db = work / f"db{k}" / "glia.duckdb"
        flagged, seconds = run_nights(nights, db, nd)
        rows.append({"setting": label, "near_dup": {"ngram": nd.ngram, "bands": nd.bands, "rows": nd.rows,
                                                     "threshold": nd.threshold},
                     "seconds": round(seconds, 2), **score(docs, flagged)})
        shutil.rmtree(db.parent, ignore_errors=True)
        print(f"  {label:<48} P {rows[-1]['precision']:.4f}  R {rows[-1]['recall']:.4f}  F1 {rows[-1]['f1']:.4f}"
              f"  ({seconds:.1f} s)", flush=True)
    return rows


# -- the 1M-style scale proxy -----------------------------------------------------------------


def scale_set(texts: Sequence[str], per_night: int, copy_share: float = 0.05, rate: float = 0.04,
              seed: int = SEED) -> list[Doc]:
    """``NIGHTS`` nights of ``per_night`` documents; from night 2 on ``copy_share`` of them are
    copies, with exactly ``rate`` of their words dropped, of documents drawn from earlier nights."""
    rng = random.Random(f"glia-quality-near-dup-scale-{seed}")
    pool = list(texts)
    rng.shuffle(pool)
    n_copies = round(per_night * copy_share)
    need = per_night + (NIGHTS - 1) * (per_night - n_copies)
    if len(pool) < need:
        raise ValueError(f"scale set: {len(pool)} texts, need {need}")
    docs: list[Doc] = []
    take = iter(pool)
    for night in range(1, NIGHTS + 1):
        earlier = [d for d in docs if d.kind == "original"]
        copies = rng.sample(earlier, n_copies) if night > 1 else []
        for i in range(per_night - len(copies)):
            fam = f"s{night}-{i:06d}"
            docs.append(Doc(fam + "-o", night, fam, "original", next(take)))
        for j, orig in enumerate(copies):
            docs.append(Doc(f"{orig.family}-c{night}{j}", night, orig.family, "drop",
                            drop_words(orig.text, rng, rate), rate))
    return docs


def scale_from_corpus(corpus: Path, nights: int, copy_share: float = 0.05, rate: float = 0.04,
                      seed: int = SEED) -> list[Doc]:
    """Nights 1..``nights`` of a ``bench/make_scale_corpus.py`` corpus (real sentences from the
    pinned bench inputs), its own planted copies (``copies.csv``) left out, and from night 2 on
    ``copy_share`` of each night replaced by copies, with exactly ``rate`` of their words
    dropped, of documents drawn from earlier nights: the 1M run's construction."""
    import csv

    rng = random.Random(f"glia-quality-near-dup-scale-corpus-{seed}")
    docs: list[Doc] = []
    for night in range(1, nights + 1):
        folder = corpus / f"night{night:02d}"
        with (folder / "copies.csv").open(encoding="utf-8") as fh:
            theirs = {r["doc_id"] for r in csv.DictReader(fh)}
        t = pq.read_table(sorted(folder.glob("part-*.parquet")), columns=["id", "text"])
        rows = [(i, x) for i, x in zip(t["id"].to_pylist(), t["text"].to_pylist(), strict=True) if i not in theirs]
        n_copies = round(len(rows) * copy_share) if night > 1 else 0
        copies = rng.sample([d for d in docs if d.kind == "original"], n_copies) if n_copies else []
        docs += [Doc(i, night, i, "original", x) for i, x in rows[: len(rows) - n_copies]]
        docs += [Doc(f"{o.doc_id}-copy{night}", night, o.family, "drop", drop_words(o.text, rng, rate), rate)
                 for o in copies]
    return docs


def scale_recall(docs: Sequence[Doc], flagged: dict[str, str]) -> dict:
    """Share of the planted copies flagged as a duplicate of their own original."""
    family = {d.doc_id: d.family for d in docs}
    copies = [d for d in docs if d.kind == "drop"]
    hit = sum(family.get(flagged.get(d.doc_id, ""), None) == d.family for d in copies)
    wrong = sum(1 for d, s in flagged.items() if family[d] != family.get(s))
    return {"copies": len(copies), "found": hit, "recall": round(hit / max(len(copies), 1), 4),
            "wrong_flags": wrong, "documents": len(docs)}


# -- report ----------------------------------------------------------------------------------


def settings_to_try() -> list[tuple[str, NearDup]]:
    """The shipped default first, then ``SETTINGS``."""
    default = NearDup()
    label = (f"shipped default: word {default.ngram}-gram, {default.bands}x{default.rows}, "
             f"est. J >= {default.threshold}")
    return [(label, default)] + [(lab, replace(default, **kw)) for lab, kw in SETTINGS]


def report(quick: bool, scale_corpus: Path | None = None, sets_too: bool = True) -> dict:
    """Build the sets, run every setting, and return the figures (``quick``: FOLDOC only, a
    smaller set, the shipped default and the old default only, a 3 x 3k scale proxy).

    ``scale_corpus``: a ``bench/make_scale_corpus.py`` corpus folder to cut the scale check
    from (its first three nights); without one (or when it is not built) the GCIDE proxy.
    ``sets_too=False`` runs only the scale check."""
    t0 = time.perf_counter()
    out: dict = {"source": "dict-foldoc " + sources.DEBIAN_PINS["dict-foldoc"], "quick": quick, "sets": {}}
    settings = settings_to_try()
    if quick:
        settings = settings[:2]
    work = Path(tempfile.mkdtemp(prefix="glia-quality-nd-"))
    try:
        sets = {"foldoc": (foldoc_texts, 1200 if quick else 2700)} if sets_too else {}
        if not quick and sets_too:
            sets["gcide"] = (gcide_texts, 4000)
        for name, (load, n_orig) in sets.items():
            docs = build_set(load(), n_orig, name=name)
            kinds: dict[str, int] = {}
            for d in docs:
                kinds[d.kind] = kinds.get(d.kind, 0) + 1
            print(f"{name}: {len(docs)} documents over {NIGHTS} nights {kinds}, sha256 {set_sha256(docs)}", flush=True)
            out["sets"][name] = {
                "documents": len(docs), "by_kind": kinds, "sha256": set_sha256(docs),
                "cross_night_copies": sum(1 for d in docs if d.kind in KINDS and d.night > int(
                    next(o.night for o in docs if o.family == d.family and o.kind == "original"))),
                "true_jaccard_word5_quartiles": true_jaccards(docs, 5),
                "true_jaccard_word3_quartiles": true_jaccards(docs, 3),
                "settings": measure(docs, settings, work / name),
            }
        if scale_corpus is not None and (scale_corpus / "night01").exists():
            scale_docs = scale_from_corpus(scale_corpus, NIGHTS)
            proxy = (f"{NIGHTS} nights of {scale_corpus.name} (bench/make_scale_corpus.py), {len(scale_docs)} documents, "
                     "its planted copies left out, 5 % copies of earlier nights with 4 % of words dropped")
        else:
            per_night = 3000 if quick else 7500
            scale_docs = scale_set(gcide_texts(1000, 1800), per_night)
            proxy = (f"{NIGHTS} nights x {per_night} GCIDE documents of 1.0-1.8k chars, "
                     "5 % copies of earlier nights with 4 % of words dropped")
        nights = write_nights(scale_docs, work / "scale" / "shards", shards=4)
        out["scale"] = {"proxy": proxy, "sha256": set_sha256(scale_docs), "results": []}
        print(f"scale: {proxy}", flush=True)
        for label, nd in settings[:2]:
            db = work / "scale" / label.split(":")[0].replace(" ", "_") / "glia.duckdb"
            flagged, seconds = run_nights(nights, db, nd)
            res = {"setting": label, "seconds": round(seconds, 2), **scale_recall(scale_docs, flagged)}
            out["scale"]["results"].append(res)
            print(f"  scale {label:<42} recall {res['recall']:.4f} ({res['found']}/{res['copies']}), "
                  f"wrong flags {res['wrong_flags']} ({seconds:.1f} s)", flush=True)
            shutil.rmtree(db.parent, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def print_table(res: dict) -> None:
    for name, s in res["sets"].items():
        print(f"\n{name}: {s['documents']} documents, {s['cross_night_copies']} copies in a later night than their "
              "original")
        print(f"{'setting':<50} {'P':>7} {'R':>7} {'F1':>7} {'hard neg':>9}  recall by kind")
        for r in s["settings"]:
            print(f"{r['setting']:<50} {r['precision']:7.4f} {r['recall']:7.4f} {r['f1']:7.4f} "
                  f"{r['hard_negatives_flagged']:>4}/{r['hard_negatives']:<4}  {r['recall_by_kind']}")
    for r in res.get("scale", {}).get("results", []):
        print(f"scale ({res['scale']['proxy']}): {r['setting']}: recall {r['recall']} "
              f"({r['found']}/{r['copies']}), wrong flags {r['wrong_flags']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller set, shipped and old default only")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--scale-corpus", type=Path, default=None,
                    help="a bench/make_scale_corpus.py corpus (e.g. bench/data/scale-100000) for the scale check; "
                         "default: the GCIDE proxy")
    ap.add_argument("--scale-only", action="store_true", help="only the scale check")
    args = ap.parse_args()
    res = report(args.quick, args.scale_corpus, sets_too=not args.scale_only)
    print_table(res)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"quality_near_dup{'_quick' if args.quick else ''}{'_scale' if args.scale_only else ''}.json"
    path.write_text(json.dumps(res, indent=2))
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
