"""Build the pruning benchmark's corpus: three nights of real text with the junk real crawls have.

Usage (from the repository root; ``make bench-pruning`` runs it)::

    .venv/bin/python bench/make_pruning_corpus.py --seed 22         # build/pruning/corpus-s22 (~3,100 documents)
    .venv/bin/python bench/make_pruning_corpus.py --scale 0.125 --out tests/data/pruning_quick   # the --quick corpus

Everything comes from the pinned bench inputs (``bench/corpus_inputs.py``: Austen, the King
James Bible, Shakespeare, the Jargon File, The Devil's Dictionary), Debian's ``fortunes-es``,
``fortunes-it`` and ``fortunes-pl`` (pinned in ``bench/lang_corpus.py``), the committed
Davidson et al. (2017) tweets (``models/data/davidson-2017``, MIT; its held-out ``test`` split,
hate speech or offensive language) and the committed eval set ``examples/eval/fortunes.parquet``.
Nothing from ETHOS. The build is deterministic (fixed seed, sorted inputs).

Each night delivers

- **clean text** of five sources: Austen, KJV and Shakespeare (200 documents each), and two
  rare but valuable ones, the Jargon File (24, ~2.3 % of the night) and The Devil's Dictionary
  (12, ~1.2 %);
- and a **web crawl** (source ``web``, about a third of the documents) with what a real crawl carries:

  ====================  ===========================================================================
  kind                  what
  ====================  ===========================================================================
  ``exact_copy``        copies of clean documents with a long-tailed count (6 % of them get 1-10
                        more copies, P(k) ~ k^-1.6), in the same or a later night, verbatim or in
                        another case/whitespace; half re-delivered under their own source
  ``near_copy``         word-edited copies (``examples/planting.py``, Jaccard 0.6-0.97)
  ``boilerplate``       four pages (cookie banner, navigation/login, 404, newsletter) repeated
                        200/110/70/50 times over the nights, a quarter with the site name changed
  ``spam``              templated "click here" pages: keyword lists, prices, contact details
  ``repetitive``        machine text: one sentence repeated, lists of numbers
  ``encoding``          clean passages garbled by mojibake and HTML entities
  ``gibberish``         keyboard mash and base64-like blobs
  ``toxic``             forum pages of 4-8 hateful or offensive tweets
  ``contaminated``      a page quoting 1-2 items of the eval set verbatim
  ``non_english``       Spanish, Italian and Polish fortunes
  ====================  ===========================================================================

Written under ``--out`` (the shards are all Glia sees; the rest is the benchmark's):

- ``night{1,2,3}/part-0000{0,1}.parquet``: ``id, text, source, label, timestamp``;
- ``truth.parquet``: every training document's ``kind`` and ``origin`` (the copied document,
  the eval item, the page template): the ground truth, never shown to Glia;
- ``heldout.parquet``: clean documents of every source, never trained on and never shown to
  Glia, for the held-out losses;
- ``eval.parquet``: the eval set (``id, text, planted``) the decontamination tagger indexes;
- ``do_not_forget.txt``: ids of 40 night-1 training documents (Austen, KJV) a user protects;
- ``corpus.json``: the counts, the parameters, each input's sha256 and the content hash.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import random
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "bench"))

import corpus_inputs  # noqa: E402
import lang_corpus  # noqa: E402
import planting  # noqa: E402

DAVIDSON = ROOT / "models" / "data" / "davidson-2017" / "labeled_data.parquet"
EVAL_SET = ROOT / "examples" / "eval" / "fortunes.parquet"
NIGHTS = (1, 2, 3)
MIN_CHARS, MAX_CHARS = 400, 1000
LABELS = {"austen": "literature", "kjv": "scripture", "shakespeare": "drama", "jargon": "glossary", "devil": "satire",
          "web": "web"}
CLEAN = {"austen": 200, "kjv": 200, "shakespeare": 200, "jargon": 24, "devil": 12}  # per night
HELD_OUT = {"austen": 60, "kjv": 60, "shakespeare": 60, "jargon": 40, "devil": 40}
RARE = ("jargon", "devil")
# Web documents per night, by kind (exact copies follow from COPY_SHARE and the long tail).
WEB = {"near_copy": 40, "spam": 40, "repetitive": 15, "encoding": 10, "gibberish": 10, "toxic": 25,
       "contaminated": 12, "non_english": 20}
COPY_SHARE = 0.06  # clean documents that get extra exact copies
COPY_MAX = 10
BOILERPLATE_COPIES = (200, 110, 70, 50)  # over all nights, one count per page
DO_NOT_FORGET = {"austen": 20, "kjv": 20}
NON_ENGLISH = ("fortunes-es", "fortunes-it", "fortunes-pl")
WINDOWS = {1: (datetime(2023, 1, 1, tzinfo=UTC), datetime(2024, 12, 31, tzinfo=UTC)),
           2: (datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 3, 31, tzinfo=UTC)),
           3: (datetime(2025, 4, 1, tzinfo=UTC), datetime(2025, 6, 30, tzinfo=UTC))}
JUNK_KINDS = ("boilerplate", "spam", "repetitive", "encoding", "gibberish", "toxic", "contaminated", "non_english")

# -- the web's templates -----------------------------------------------------------------------

SITES = ("dailyfinder", "newsnet24", "shopworld", "bestdeals", "myportal", "infohub", "cityguide", "techzone")
NAV = ("Home | News | Sports | Business | Entertainment | Lifestyle | Weather | Video | Contact | About us | "
       "Advertise | Careers | Sitemap")
FOOTER = ("Copyright (c) 2024 {site}.com. All rights reserved. Privacy Policy | Terms of Use | Cookie Settings | "
          "Accessibility | Contact Us | Do Not Sell My Personal Information")
BOILERPLATE = (
    "{site}.com uses cookies\n\nWe and our partners use cookies and similar technologies to improve your experience, "
    "to personalise content and ads, to provide social media features and to analyse our traffic. We also share "
    "information about your use of our site with our social media, advertising and analytics partners who may "
    "combine it with other information that you have provided to them. By clicking \"Accept all\" you agree to "
    "the storing of cookies on your device.\n\nAccept all cookies\nReject non-essential cookies\nManage "
    "preferences\n\nLearn more in our Cookie Policy.\n\n" + FOOTER,
    NAV + "\n\nSign in to your {site} account\n\nEmail address\nPassword\nRemember me\nForgot your password?\n"
    "Sign in\n\nNew to {site}? Create an account. It only takes a minute and it is free. By signing in you accept "
    "our Terms of Use and acknowledge our Privacy Policy.\n\nTrending: Top stories | Most read | Most shared | "
    "Latest videos | Newsletters | Podcasts\n\n" + FOOTER,
    "404 - Page not found\n\nSorry, the page you are looking for might have been removed, had its name changed, "
    "or is temporarily unavailable. Please check the address for typing errors, or go back to the {site} home "
    "page. You can also try searching our site or browse one of the sections below.\n\n" + NAV + "\n\n"
    "Popular searches: weather, deals, horoscope, lottery results, recipes, live scores\n\n" + FOOTER,
    "Subscribe to the {site} newsletter!\n\nGet the best stories, exclusive offers and the latest news delivered "
    "straight to your inbox every morning. Enter your email address below and click Subscribe. You can "
    "unsubscribe at any time by clicking the link in the footer of our emails.\n\nEmail: ____________ "
    "[Subscribe]\n\nFollow us on Facebook | Twitter | Instagram | YouTube | Pinterest | LinkedIn\n\n" + FOOTER,
)
PRODUCTS = ("viagra", "cheap watches", "replica handbags", "car insurance", "payday loans", "weight loss pills",
            "casino bonus", "forex signals", "seo services", "crypto mining", "phone cases", "diet tea")
SPAM_ADJ = ("cheap", "best", "discount", "top", "genuine", "free", "fast", "online", "lowest price", "2024")
SPAM_LINES = (
    "Buy {p} online at the lowest price!!!", "CLICK HERE to order {p} now", "{a} {p} | {a} {p} | {a} {p}",
    "Free shipping worldwide on all {p} orders", "Limited offer: {n}% off {p} today only",
    "Best {p} deals - compare {p} prices - {p} reviews - {p} coupons", "100% satisfaction guaranteed, order {p}",
    "Call now: +1-555-{d4} or email sales@{site}.com", "Tags: {p}, {a} {p}, buy {p}, {p} sale, {p} store",
    "Click here >>> www.{site}.com/{slug} <<< click here", "Why pay more? Get {p} for ${n}.99",
)
SENTENCES = ("The quick brown fox jumps over the lazy dog.", "Lorem ipsum dolor sit amet, consectetur adipiscing elit.",
             "This product is great and I recommend it to everyone.", "Click the button below to continue.",
             "Thank you for visiting our website.", "All items are in stock and ready to ship.")
MOJIBAKE = ("Ã©", "â€™", "Ã¨", "ï¿½", "&#8217;", "&amp;nbsp;", "Ã¢â‚¬Å“", "\ufffd", "Ã±", "â€\"", "&lt;br&gt;")


def _boilerplate(rng: random.Random, page: int, vary: bool) -> str:
    site = rng.choice(SITES[1:]) if vary else SITES[0]
    return BOILERPLATE[page].format(site=site)


def _spam(rng: random.Random) -> str:
    p, site = rng.choice(PRODUCTS), rng.choice(SITES)
    lines: list[str] = []
    while sum(map(len, lines)) < rng.randint(MIN_CHARS, MAX_CHARS - 120):
        line = rng.choice(SPAM_LINES)
        lines.append(line.format(p=p, a=rng.choice(SPAM_ADJ), n=rng.randint(10, 90), d4=f"{rng.randint(0, 9999):04d}",
                                 site=site, slug=p.replace(" ", "-")))
    return "\n".join(lines)


def _repetitive(rng: random.Random) -> str:
    if rng.random() < 0.5:
        sentence = rng.choice(SENTENCES)
        return " ".join([sentence] * (rng.randint(MIN_CHARS, MAX_CHARS) // (len(sentence) + 1) + 1))
    start, step = rng.randint(0, 90000), rng.choice((1, 2, 5, 10, 100))
    out, k = [], 0
    while len(" ".join(out)) < rng.randint(MIN_CHARS, MAX_CHARS):
        out.append(str(start + k * step) if rng.random() < 0.7 else f"{rng.random():.4f}")
        k += 1
    sep = rng.choice((" ", ", ", "\n", " | "))
    return sep.join(out)


def _encoding(rng: random.Random, text: str) -> str:
    words = text.split(" ")
    for i in range(len(words)):
        if rng.random() < 0.35:
            w = words[i]
            cut = rng.randint(0, len(w))
            words[i] = w[:cut] + rng.choice(MOJIBAKE) + w[cut + 1:]
    return " ".join(words)


def _gibberish(rng: random.Random) -> str:
    n = rng.randint(MIN_CHARS, MAX_CHARS)
    if rng.random() < 0.5:
        return base64.b64encode(rng.randbytes(n * 3 // 4)).decode()
    rows = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
    words = []
    while len(" ".join(words)) < n:
        row = rng.choice(rows)
        words.append("".join(rng.choice(row) for _ in range(rng.randint(2, 9))))
    return " ".join(words)


def _pages(items: list[str], rng: random.Random, lo: int, hi: int, sep: str) -> str:
    out: list[str] = []
    while len(sep.join(out)) < rng.randint(lo, hi) and items:
        out.append(items.pop())
    return sep.join(out)


# -- the build ---------------------------------------------------------------------------------


def _distinct(docs: list, rng: random.Random) -> list[str]:
    """Each chunk once (a repeated verse or entry is kept once), long enough, shuffled."""
    seen, keep = set(), []
    for d in docs:
        key = " ".join(d.text.split()).lower()
        if len(d.text) >= MIN_CHARS and key not in seen:
            seen.add(key)
            keep.append(d.text)
    rng.shuffle(keep)
    return keep


def _toxic_posts(rng: random.Random) -> list[str]:
    t = pq.read_table(DAVIDSON, columns=["tweet", "class", "split"]).to_pylist()
    posts = sorted({r["tweet"] for r in t if str(r["split"]) == "test" and r["class"] in (0, 1)})
    rng.shuffle(posts)
    return posts


def _eval_items(rng: random.Random) -> pa.Table:
    """The eval set: the committed fortunes with at least 20 words (13-gram decontamination needs them)."""
    t = pq.read_table(EVAL_SET)
    return t.filter(pa.array([len(x.split()) >= 20 for x in t["text"].to_pylist()]))


def _scaled(n: int, scale: float) -> int:
    return max(1, round(n * scale)) if n else 0


def build(out: Path, scale: float = 1.0, seed: int = 21) -> dict:
    """Write the corpus under ``out`` and return its manifest."""
    rng = random.Random(seed)
    chunks = corpus_inputs.load_chunks(MIN_CHARS, MAX_CHARS, list(CLEAN))
    pools = {name: _distinct(docs, rng) for name, docs in chunks.items()}
    foreign = {p: [t for t in lang_corpus.fortunes(p)] for p in NON_ENGLISH}
    for items in foreign.values():
        rng.shuffle(items)
    toxic = _toxic_posts(rng)
    eval_set = _eval_items(rng)
    eval_ids = eval_set["id"].to_pylist()
    eval_text = dict(zip(eval_ids, eval_set["text"].to_pylist()))
    order = list(eval_ids)
    rng.shuffle(order)
    vocab = {name: planting.word_vocabulary(texts[:400]) for name, texts in pools.items()}

    rows: dict[int, list[dict]] = {n: [] for n in NIGHTS}
    held: list[dict] = []

    def add(night: int, text: str, source: str, kind: str, origin: str | None = None,
            after: datetime | None = None) -> dict:
        lo, hi = WINDOWS[night]
        stamp = planting.later_timestamp(rng, after, lo, hi) if after else planting.random_time(rng, lo, hi)
        row = {"text": text, "source": source, "label": LABELS[source], "timestamp": stamp, "night": night,
               "kind": kind, "origin": origin}
        rows[night].append(row)
        return row

    for source, n_held in HELD_OUT.items():
        for _ in range(_scaled(n_held, scale)):
            held.append({"text": pools[source].pop(), "source": source})
    clean_by_night: dict[int, list[dict]] = {}
    for night in NIGHTS:
        clean_by_night[night] = [add(night, pools[s].pop(), s, "clean")
                                 for s, n in CLEAN.items() for _ in range(_scaled(n, scale))]
    # Ids are given after shuffling, so a copy can only point at its original by the row itself.
    links: list[tuple[dict, dict]] = []
    weights = [k ** -1.6 for k in range(1, COPY_MAX + 1)]
    for night in NIGHTS:
        clean = clean_by_night[night]
        for original in rng.sample(clean, max(1, round(COPY_SHARE * len(clean)))):
            for _ in range(rng.choices(range(1, COPY_MAX + 1), weights)[0]):
                to = rng.randint(night, NIGHTS[-1])
                source = original["source"] if rng.random() < 0.5 else "web"
                links.append((add(to, planting.exact_copy(original["text"], rng), source, "exact_copy",
                                  after=original["timestamp"]), original))
        earlier = [d for n in NIGHTS if n <= night for d in clean_by_night[n]]
        for original in rng.sample(earlier, _scaled(WEB["near_copy"], scale)):
            text, _ = planting.near_copy(original["text"], rng, vocab[original["source"]], planting.near_band(rng))
            source = original["source"] if rng.random() < 0.5 else "web"
            links.append((add(night, text, source, "near_copy", after=original["timestamp"]), original))
    for page, total in enumerate(BOILERPLATE_COPIES):
        for _ in range(_scaled(total, scale)):
            vary = rng.random() < 0.25
            add(rng.choice(NIGHTS), _boilerplate(rng, page, vary), "web", "boilerplate", f"page{page}")
    planted: list[str] = []
    for night in NIGHTS:
        for _ in range(_scaled(WEB["spam"], scale)):
            add(night, _spam(rng), "web", "spam")
        for _ in range(_scaled(WEB["repetitive"], scale)):
            add(night, _repetitive(rng), "web", "repetitive")
        for _ in range(_scaled(WEB["encoding"], scale)):
            add(night, _encoding(rng, pools[rng.choice(("austen", "kjv", "shakespeare"))].pop()), "web", "encoding")
        for _ in range(_scaled(WEB["gibberish"], scale)):
            add(night, _gibberish(rng), "web", "gibberish")
        for _ in range(_scaled(WEB["toxic"], scale)):
            add(night, _pages(toxic, rng, MIN_CHARS, MAX_CHARS - 150, "\n\n"), "web", "toxic")
        for _ in range(_scaled(WEB["contaminated"], scale)):
            items = [order.pop() for _ in range(rng.choice((1, 1, 2)))]
            planted += items
            body = "\n\n".join(eval_text[i] for i in items)
            site = rng.choice(SITES)
            text = (f"Quote of the day | {site}.com\n\n{body}\n\nShare this quote: Facebook | Twitter | Email\n\n"
                    + FOOTER.format(site=site))
            add(night, text, "web", "contaminated", ",".join(items))
        for k in range(_scaled(WEB["non_english"], scale)):
            package = NON_ENGLISH[k % len(NON_ENGLISH)]
            add(night, _pages(foreign[package], rng, MIN_CHARS, MAX_CHARS - 200, "\n"), "web", "non_english", package)

    # Ids: numbered per source after a shuffle, so neither ids nor row order reveal a kind.
    counters: Counter[str] = Counter()
    every = [r for n in NIGHTS for r in rows[n]]
    for night in NIGHTS:
        rng.shuffle(rows[night])
    for r in [r for n in NIGHTS for r in rows[n]]:
        counters[r["source"]] += 1
        r["id"] = f"{r['source']}-{counters[r['source']]:06d}"
    for copy, original in links:
        copy["origin"] = original["id"]
    for i, h in enumerate(held):
        h["id"] = f"heldout-{h['source']}-{i:04d}"

    out.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("source", pa.string()), ("label", pa.string()),
                        ("timestamp", pa.timestamp("us", tz="UTC"))])
    manifest: dict = {"builder": "bench/make_pruning_corpus.py", "scale": scale, "seed": seed,
                      "chars": [MIN_CHARS, MAX_CHARS], "nights": {}, "kinds": {}}
    shard_paths = []
    for night in NIGHTS:
        table = pa.Table.from_pylist([{k: r[k] for k in schema.names} for r in rows[night]], schema=schema)
        folder = out / f"night{night}"
        folder.mkdir(exist_ok=True)
        for old in folder.glob("*.parquet"):
            old.unlink()
        half = table.num_rows // 2
        for k, part in enumerate((table.slice(0, half), table.slice(half))):
            path = folder / f"part-{k:05d}.parquet"
            pq.write_table(part, path, compression="zstd")
            shard_paths.append(path)
        manifest["nights"][night] = dict(sorted(Counter(r["source"] for r in rows[night]).items()))
    truth = pa.Table.from_pylist([{"id": r["id"], "night": r["night"], "source": r["source"], "kind": r["kind"],
                                   "origin": r["origin"], "chars": len(r["text"])} for r in every])
    pq.write_table(truth.sort_by("id"), out / "truth.parquet", compression="zstd")
    pq.write_table(pa.Table.from_pylist(held), out / "heldout.parquet", compression="zstd")
    planted_set = set(planted)
    pq.write_table(eval_set.append_column("planted", pa.array([i in planted_set for i in eval_ids])),
                   out / "eval.parquet", compression="zstd")
    dnf = []
    for source, n in DO_NOT_FORGET.items():
        dnf += sorted(r["id"] for r in rows[1] if r["source"] == source and r["kind"] == "clean")[:_scaled(n, scale)]
    (out / "do_not_forget.txt").write_text("# night-1 training documents a user asks Glia to protect\n"
                                           + "\n".join(sorted(dnf)) + "\n")
    kinds = Counter(r["kind"] for r in every)
    chars = Counter()
    for r in every:
        chars[r["kind"]] += len(r["text"])
    total = sum(chars.values())
    manifest["kinds"] = {k: {"docs": kinds[k], "char_share": round(chars[k] / total, 4)} for k in sorted(kinds)}
    manifest["junk_char_share"] = round(sum(chars[k] for k in JUNK_KINDS) / total, 4)
    manifest["heldout"] = dict(sorted(Counter(h["source"] for h in held).items()))
    manifest["eval"] = {"items": eval_set.num_rows, "planted": len(planted_set)}
    manifest["do_not_forget"] = len(dnf)
    manifest["inputs"] = {name: {"sha256": corpus_inputs.chunks_sha256(docs), "chunks": len(docs)}
                          for name, docs in chunks.items()}
    manifest["inputs"].update({p: {"sha256": hashlib.sha256("\n%\n".join(sorted(lang_corpus.fortunes(p))).encode())
                                   .hexdigest()} for p in NON_ENGLISH})
    manifest["sha256"] = corpus_inputs.shards_sha256(shard_paths)
    (out / "corpus.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="default: build/pruning/corpus-s<seed>")
    ap.add_argument("--scale", type=float, default=1.0, help="document counts times this (0.125: the --quick corpus)")
    ap.add_argument("--seed", type=int, default=21)
    args = ap.parse_args(argv)
    args.out = args.out or ROOT / "build" / "pruning" / f"corpus-s{args.seed}"
    m = build(args.out, args.scale, args.seed)
    print(json.dumps({k: m[k] for k in ("nights", "kinds", "junk_char_share", "heldout", "eval", "do_not_forget",
                                         "sha256")}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
