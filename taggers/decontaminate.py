"""Eval-set decontamination: which documents share word n-grams with a benchmark's items.

Training on a benchmark's test items invalidates the evaluation, so every serious pipeline
checks for it (GPT-3's 13-gram overlap, datatrove's n-gram decontamination, Dolma's Bloom
filter). Here it is a **tagger**, not a night stage: the check is a pure function of one
document and the (fixed) eval sets, so it runs per shard, in parallel, and is cached and
resumed like every other tagger; a stage would see the whole night at once, which this does
not need and which would not scale with the corpus.

Eval sets (``[taggers.decontaminate.sets.<name>]``) are Parquet, JSONL or text files: one item
per row (Parquet/JSONL: the ``fields`` columns, e.g. ``["question", "answer"]``, each hashed
on its own, and an ``id_field``) or per paragraph (text: items separated by blank lines, ids
``1, 2, ...``). A set in the catalog (e.g. the documents of the explicit ``eval_set`` stratum)
is exported to Parquet first, e.g. ``glia sql "COPY (SELECT doc_id AS id, text FROM ...) TO
'eval.parquet'"``: a tagger never reads the catalog.

Each set's n-grams are hashed once into a sorted ``uint64`` array on disk
(``<index_dir>/<set>-<key>/``, keyed by the file's bytes and the parameters, written to a
temporary folder and renamed, so a crash never leaves half an index) and memory-mapped, so
the cost per night is a binary search per document n-gram: it scales with the corpus, not the
eval sets. Words are the ``\\w+`` runs of NFKC, lower-cased text (the normalisation of the
dedup taggers, ``core.text``); n-grams are ``n`` consecutive words (default 13, as GPT-3 and
datatrove). An eval item with fewer than ``n`` words has no n-gram and cannot be detected
(counted as ``short_items`` in the index's metadata; lower ``n`` for short items).

Tags: ``contaminated_by`` (``<set>:<item id>`` of the item sharing the most n-grams with the
document, ties to the earliest item; null when fewer than ``min_matches`` match), ``contam_ngrams`` (the
document's n-grams found in that set) and ``contam_share`` (their share of the document's
n-grams). The rule term ``contaminated`` (``curation.rules``) prunes on ``contaminated_by``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
import pyarrow.parquet as pq
import xxhash

from glia.core.params import ConfigError
from glia.core.text import shingle_hashes, word_hashes
from glia.taggers.base import Resources, Tagger

INDEX_FORMAT = "2"  # bump when the index layout or the normalisation changes


@dataclass(frozen=True)
class EvalSet:
    """One named eval set: a file and how to read its items."""

    path: str = ""  # Parquet (.parquet), JSONL (.jsonl/.json) or text (anything else)
    fields: tuple[str, ...] = ("text",)  # Parquet/JSONL: text columns, each hashed on its own (question, answer)
    id_field: str | None = "id"  # Parquet/JSONL: the item id column (None or missing: the row number, from 1)
    split: Literal["paragraph", "line"] = "paragraph"  # text files: items are paragraphs or lines

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("path: name the eval set's file (Parquet, JSONL or text)")
        if not self.fields:
            raise ValueError("fields: name at least one text column")


def load_items(es: EvalSet) -> tuple[list[str], list[int], list[str]]:
    """``(texts, item index of each text, item ids)`` of an eval set's file."""
    path = Path(es.path)
    if not path.is_file():
        raise FileNotFoundError(f"eval set file {es.path!r} does not exist (paths are relative to the working directory)")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".jsonl", ".json"):
        table = pq.read_table(path) if suffix == ".parquet" else pajson.read_json(path)
        missing = [f for f in es.fields if f not in table.column_names]
        if missing:
            raise ValueError(f"eval set {es.path!r} has no column(s) {', '.join(missing)}; it has "
                             f"{', '.join(table.column_names)} (set fields = [...])")
        if es.id_field and es.id_field in table.column_names:
            ids = [str(v) for v in table[es.id_field].to_pylist()]
        else:
            ids = [str(i + 1) for i in range(table.num_rows)]
        texts, items = [], []
        for f in es.fields:
            col = pc.fill_null(table[f].cast(pa.string()), "").to_pylist()
            texts += col
            items += list(range(table.num_rows))
        return texts, items, ids
    raw = path.read_text(encoding="utf-8", errors="replace")
    parts = raw.splitlines() if es.split == "line" else raw.split("\n\n")
    parts = [p.strip() for p in parts if p.strip()]
    return parts, list(range(len(parts))), [str(i + 1) for i in range(len(parts))]


def build_index(name: str, es: EvalSet, n: int, index_dir: Path, max_items: int = 16) -> Path:
    """The folder of ``name``'s hashed n-gram set (built if absent): ``hashes.npy`` (sorted uint64,
    one entry per distinct (n-gram, item) pair), ``items.npy`` (int32, the item of each entry),
    ``ids.json``, ``meta.json``."""
    digest = xxhash.xxh3_64()
    with open(es.path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    digest.update(json.dumps([INDEX_FORMAT, n, list(es.fields), es.id_field, es.split, max_items]).encode())
    folder = index_dir / f"{name}-{digest.hexdigest()}"
    if (folder / "meta.json").is_file():
        return folder
    texts, items, ids = load_items(es)
    words, offsets = word_hashes(pa.array(texts, pa.string()))
    counts = np.diff(offsets)
    sh, so = shingle_hashes(words, offsets, n)
    long_enough = np.repeat(counts >= n, np.diff(so))  # a short item's one shingle is not an n-gram
    item_of = np.repeat(np.asarray(items, dtype=np.int32), np.diff(so))[long_enough]
    sh = sh[long_enough]
    order = np.lexsort((item_of, sh))  # by hash, then item; each (hash, item) pair once
    sh, item_of = sh[order], item_of[order]
    first = np.ones(len(sh), dtype=bool)
    first[1:] = (sh[1:] != sh[:-1]) | (item_of[1:] != item_of[:-1])
    sh, item_of = sh[first], item_of[first]
    # Boilerplate shared by many items (a licence paragraph in hundreds of them) would make every
    # document that holds it pay for hundreds of pairs: keep the earliest max_items per n-gram.
    new_hash = np.ones(len(sh), dtype=bool)
    new_hash[1:] = sh[1:] != sh[:-1]
    starts = np.flatnonzero(new_hash)
    rank = np.arange(len(sh)) - np.repeat(starts, np.diff(np.append(starts, len(sh))))
    first = rank < max_items
    short = len(set(items)) - len(set(np.asarray(items)[counts >= n].tolist())) if items else 0
    index_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=index_dir))
    np.save(tmp / "hashes.npy", sh[first])
    np.save(tmp / "items.npy", item_of[first])
    (tmp / "ids.json").write_text(json.dumps(ids))
    (tmp / "meta.json").write_text(json.dumps({"set": name, "path": es.path, "n": n, "items": len(ids),
                                                "ngrams": int(len(np.unique(sh))), "entries": int(first.sum()), "short_items": short}))
    try:
        os.rename(tmp, folder)
    except OSError:  # another process built it first: theirs is the same
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


@dataclass(frozen=True)
class _Index:
    name: str
    hashes: np.ndarray
    items: np.ndarray
    ids: list[str]
    # A one-hash Bloom filter in memory (Dolma-style): a flag per value of a hash's top ``bits``
    # bits, ~16 slots per n-gram. Nearly every document n-gram is absent, and one gather rules it
    # out; only the few that pass pay for the binary search in the (memory-mapped) sorted array.
    present: np.ndarray
    shift: np.uint64


def _prefilter(hashes: np.ndarray) -> tuple[np.ndarray, np.uint64]:
    bits = int(min(max(np.ceil(np.log2(max(len(hashes), 1) * 16)), 16), 32))
    shift = np.uint64(64 - bits)
    present = np.zeros(1 << bits, dtype=bool)
    for start in range(0, len(hashes), 1 << 24):  # in slices: the mapped array is never read whole
        present[np.asarray(hashes[start:start + (1 << 24)]) >> shift] = True
    return present, shift


_LOADED: dict[str, _Index] = {}
_LOCK = threading.Lock()


def _load(name: str, folder: Path) -> _Index:
    key = str(folder.resolve())
    with _LOCK:
        if key not in _LOADED:
            hashes = np.load(folder / "hashes.npy", mmap_mode="r")
            _LOADED[key] = _Index(name, hashes, np.load(folder / "items.npy", mmap_mode="r"),
                                  json.loads((folder / "ids.json").read_text()), *_prefilter(hashes))
        return _LOADED[key]


class DecontaminateTagger(Tagger):
    """``contaminated_by``, ``contam_ngrams``, ``contam_share``: overlap with configured eval sets."""

    name: ClassVar[str] = "decontaminate"
    version: ClassVar[str] = "1"
    resources: ClassVar[Resources] = Resources(batch_size=20_000)

    @dataclass(frozen=True)
    class Params:
        sets: Mapping[str, EvalSet] = field(default_factory=dict)  # [taggers.decontaminate.sets.<name>]
        n: int = 13  # words per n-gram (GPT-3, datatrove)
        min_matches: int = 1  # n-grams a document must share with one set to be tagged contaminated_by
        index_dir: str = ".glia/decontaminate"  # where the hashed n-gram sets are kept
        max_items_per_ngram: int = 16  # an n-gram in more eval items counts for its earliest this many

        def __post_init__(self) -> None:
            if self.n < 1:
                raise ValueError(f"n must be >= 1, got {self.n!r}")
            if self.max_items_per_ngram < 1:
                raise ValueError(f"max_items_per_ngram must be >= 1, got {self.max_items_per_ngram!r}")
            if self.min_matches < 1:
                raise ValueError(f"min_matches must be >= 1, got {self.min_matches!r}")
            bad = [s for s in self.sets if not s.replace("_", "").replace("-", "").isalnum()]
            if bad:
                raise ValueError(f"sets: names must be letters, digits, '_' or '-', got {bad!r}")
            missing = [f"{s}: {es.path!r}" for s, es in self.sets.items() if not Path(es.path).is_file()]
            if missing:
                raise ValueError(f"sets: eval set file(s) not found: {'; '.join(missing)} "
                                 "(paths are relative to the working directory)")

    def __init__(self, **params: Any) -> None:
        self.configure(params)
        self._indexes: list[_Index] | None = None
        self._keys = {}
        for s, es in sorted(self.params.sets.items()):
            try:
                self._keys[s] = build_index(s, es, self.params.n, Path(self.params.index_dir),
                                            self.params.max_items_per_ngram).name
            except (OSError, ValueError, pa.ArrowException) as exc:  # a bad file fails at config load, named
                raise ConfigError(f"[taggers.decontaminate.sets.{s}]: cannot read eval set {es.path!r}: {exc}") from exc

    def _loaded(self) -> list[_Index]:
        if self._indexes is None:
            index_dir = Path(self.params.index_dir)
            self._indexes = [_load(s, build_index(s, self.params.sets[s], self.params.n, index_dir,
                                                  self.params.max_items_per_ngram))
                             for s in sorted(self.params.sets)]
        return self._indexes

    def schema(self) -> pa.Schema:
        return pa.schema([("doc_id", pa.string()), ("contaminated_by", pa.string()),
                          ("contam_ngrams", pa.int32()), ("contam_share", pa.float32())])

    def tag(self, batch: pa.Table) -> pa.Table:
        n_docs = batch.num_rows
        words, offsets = word_hashes(batch.column("text"))
        sh, so = shingle_hashes(words, offsets, self.params.n)
        per_doc = np.diff(so)
        doc_of = np.repeat(np.arange(n_docs), per_doc)
        best_n = np.zeros(n_docs, dtype=np.int64)
        best_label = np.full(n_docs, None, dtype=object)
        for idx in self._loaded():
            if not len(idx.hashes) or not len(sh):
                continue
            maybe = np.flatnonzero(idx.present[sh >> idx.shift])
            q = sh[maybe]
            left = np.searchsorted(idx.hashes, q, "left")
            cnt = np.searchsorted(idx.hashes, q, "right") - left  # eval items holding each n-gram
            hit = cnt > 0
            if not hit.any():
                continue
            hit_doc = doc_of[maybe[hit]]
            matched = np.bincount(hit_doc, minlength=n_docs)
            # Every (document n-gram, eval item) pair: an n-gram shared by several items counts for each.
            c = cnt[hit]
            entry = np.repeat(left[hit], c) + (np.arange(c.sum()) - np.repeat(np.cumsum(c) - c, c))
            docs, items = np.repeat(hit_doc, c), np.asarray(idx.items[entry], dtype=np.int64)
            # The item with most shared n-grams per document (ties: the earliest item).
            pair, cnt = np.unique(docs * (len(idx.ids) + 1) + items, return_counts=True)
            pd, pi = pair // (len(idx.ids) + 1), pair % (len(idx.ids) + 1)
            order = np.lexsort((pi, -cnt, pd))
            pd, pi = pd[order], pi[order]
            lead = np.ones(len(pd), dtype=bool)
            lead[1:] = pd[1:] != pd[:-1]
            better = matched > best_n  # a later set wins only with more n-grams
            for d, i in zip(pd[lead].tolist(), pi[lead].tolist()):  # one per matched document: few
                if better[d]:
                    best_label[d] = f"{idx.name}:{idx.ids[i]}"
            best_n = np.where(better, matched, best_n)
        tagged = best_n >= self.params.min_matches
        share = np.divide(best_n, per_doc, out=np.zeros(n_docs), where=per_doc > 0)
        label = pa.array(np.where(tagged, best_label, None).tolist(), pa.string())
        return pa.table({"doc_id": batch.column("doc_id"), "contaminated_by": label,
                         "contam_ngrams": pa.array(best_n.astype(np.int32)),
                         "contam_share": pa.array(share.astype(np.float32))}, schema=self.schema())

    def stats(self, tags: pa.Table) -> dict[str, float]:
        return {"contaminated": float(tags.num_rows - tags["contaminated_by"].null_count)}

    def config(self) -> dict[str, object]:
        # The index folder names hash each file's bytes: a changed eval set changes the cache key.
        return {"n": self.params.n, "min_matches": self.params.min_matches, "indexes": self._keys}
