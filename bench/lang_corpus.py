"""A small multilingual set for measuring language identifiers, built from text Debian ships.

Usage (from the repository root)::

    .venv/bin/python bench/lang_corpus.py                       # build/lang_bench.parquet (all entries)
    .venv/bin/python bench/lang_corpus.py --per-lang 25 --out tests/data/lang_sample.parquet

Every text is a fortune cookie from Debian's ``fortunes-<lang>`` packages (Spanish, Italian,
German, Polish, Russian, Czech, Esperanto), at the versions pinned in :data:`PINS`, or an
entry of The Devil's Dictionary (``dict-devil``, English, pinned in ``examples/sources.py``).
Packages are fetched with ``apt-get download PKG=VERSION`` and unpacked with ``dpkg -x``
into ``build/sources`` (``examples/sources.fetch_deb``); nothing is installed.

Columns: ``doc_id``, ``text``, ``lang`` (ISO 639-1 of the package the text came from: the
label is the package's, so a quoted English line in a Spanish fortune file counts as Spanish;
that noise is the same for every candidate). Texts shorter than ``--min-chars`` are dropped.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import sources  # noqa: E402

# Debian 12 (bookworm) versions. No bookworm package ships French fortunes.
PINS = {
    "fortunes-es": "1.36",
    "fortunes-it": "1.99-4.1",
    "fortunes-de": "0.35-1",
    "fortunes-pl": "0.0.20130525-3",
    "fortunes-ru": "1.52-3.1",
    "fortunes-cs": "2.0.9-1.1",
    "fortunes-eo": "20020729b-1.1",
}
LANG_OF = {"fortunes-es": "es", "fortunes-it": "it", "fortunes-de": "de", "fortunes-pl": "pl",
           "fortunes-ru": "ru", "fortunes-cs": "cs", "fortunes-eo": "eo"}


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def fortunes(package: str) -> list[str]:
    """The fortunes of one package: every fortune file (the ones with a ``.dat`` index) split at ``%`` lines."""
    sources.DEBIAN_PINS.setdefault(package, PINS[package])
    root = sources.fetch_deb(package)
    out: list[str] = []
    for dat in sorted(root.rglob("*.dat")):
        path = dat.with_suffix("")
        if not path.is_file() or path.is_symlink():
            continue
        for entry in _decode(path.read_bytes()).split("\n%\n"):
            text = " ".join(entry.replace("%", " ").split())
            if text:
                out.append(text)
    return out


def english() -> list[str]:
    """Entries of The Devil's Dictionary, whitespace-folded."""
    return [" ".join(e.split()) for e in sources.dictd_entries("dict-devil", "devil")]


def build(per_lang: int | None, min_chars: int, seed: int) -> pa.Table:
    """The set: up to ``per_lang`` texts of each language (all when None), in a fixed sampled order."""
    rng = random.Random(seed)
    ids, texts, langs = [], [], []
    groups = [("en", english())] + [(LANG_OF[p], fortunes(p)) for p in sorted(PINS)]
    for lang, items in groups:
        items = sorted({t for t in items if len(t) >= min_chars})
        rng.shuffle(items)
        for i, t in enumerate(items[:per_lang] if per_lang else items):
            ids.append(f"{lang}-{i:05d}")
            texts.append(t)
            langs.append(lang)
    return pa.table({"doc_id": ids, "text": texts, "lang": langs})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "build" / "lang_bench.parquet"))
    p.add_argument("--per-lang", type=int, default=None, help="texts per language (default: all)")
    p.add_argument("--min-chars", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    t = build(a.per_lang, a.min_chars, a.seed)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(t, a.out)
    counts = t.group_by("lang").aggregate([("lang", "count")]).sort_by("lang")
    print(f"{t.num_rows} texts -> {a.out}:", dict(zip(counts["lang"].to_pylist(), counts["lang_count"].to_pylist())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
