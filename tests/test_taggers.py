"""The tagger interface and registry, and the exact / MinHash taggers' correctness on the
example corpus's real text (with planted.csv as ground truth)."""

from __future__ import annotations

import random
import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import xxhash
from datasketch import MinHash

from conftest import NIGHTS, PlantedPair, query, run_night
from glia.curation.dedup import NearDup
from glia.taggers import registry
from glia.taggers.base import Resources, Tagger
from glia.taggers.exact import ExactHashTagger
from glia.taggers.minhash import MinHashTagger
from glia.core.text import shingle_hashes, word_hashes

NO_WORDS = "!!! ... --- ???"


def py_words(text: str) -> list[str]:
    """The documented tokenisation: NFKC, lower-case, Python ``re`` ``\\w+`` runs."""
    return re.findall(r"\w+", unicodedata.normalize("NFKC", text).lower())


def py_shingles(text: str, n: int = 5) -> set[str]:
    w = py_words(text)
    return {" ".join(w[i : i + n]) for i in range(max(len(w) - n + 1, min(len(w), 1)))}


def real_batch(n: int = 200) -> pa.Table:
    """A tagger batch as the runner builds it: ``doc_id``, ``row``, ``text`` and the corpus's
    metadata, from real documents, plus one text without any word."""
    src = pq.read_table(NIGHTS[1] / "part-00000.parquet").slice(0, n)
    texts = src["text"].to_pylist()
    texts[5] = NO_WORDS
    return pa.table({
        "doc_id": src["id"], "row": pa.array(np.arange(n, dtype=np.int64)), "text": pa.array(texts),
        "source": src["source"], "timestamp": src["timestamp"], "label": src["label"],
    })


def by_id(t: pa.Table) -> pa.Table:
    return t.sort_by("doc_id")


class WordCountTagger(Tagger):
    """A third-party tagger written for the test: words per document. It hands back its
    rows in reverse order, which the interface allows (tags are keyed, not row-aligned)."""

    name: ClassVar[str] = "wordcount"
    version: ClassVar[str] = "1"
    resources: ClassVar[Resources] = Resources(batch_size=7)

    def schema(self) -> pa.Schema:
        return pa.schema([("doc_id", pa.string()), ("n_words", pa.int64())])

    def tag(self, batch: pa.Table) -> pa.Table:
        ids = batch["doc_id"].to_pylist()[::-1]
        counts = [len(py_words(t)) for t in batch["text"].to_pylist()[::-1]]
        return pa.table({"doc_id": ids, "n_words": pa.array(counts, pa.int64())}, schema=self.schema())


class ClashTagger(Tagger):
    """Writes a column the exact tagger already writes."""

    name: ClassVar[str] = "clash"
    version: ClassVar[str] = "1"

    def schema(self) -> pa.Schema:
        return pa.schema([("doc_id", pa.string()), ("text_hash", pa.uint64())])

    def tag(self, batch: pa.Table) -> pa.Table:
        return pa.table({"doc_id": batch["doc_id"], "text_hash": pa.array([0] * batch.num_rows, pa.uint64())})


@pytest.fixture
def isolated_registry() -> Iterator[None]:
    """Registrations made by a test are undone after it (the registry is module state)."""
    before = set(registry.available())
    yield
    for name in set(registry.available()) - before:
        registry.TAGGERS.unregister(name)


# -- interface and registry --------------------------------------------------------------------


def test_builtin_taggers_are_registered() -> None:
    assert registry.available() == ["decontaminate", "embedding", "exact", "lang", "lm", "minhash", "pii", "quality",
                                    "risk", "staleness"]


# The interface contract on every tagger cheap enough to run twice on 200 documents here; the
# model taggers (embedding, lm) check the same contract in their own test files on fewer rows.
CHEAP = ["exact", "minhash", "quality", "risk", "staleness", "pii", "decontaminate"]
# decontaminate with the demo's eval set (Debian fortunes), so that its tags are not all empty.
# risk on its numpy LSTM backend (the default's MiniLM pass is tested in test_risk_minilm.py).
CHEAP_PARAMS = {"risk": {"backend": "lstm"}, "decontaminate": {"sets": {"fortunes": {"path": str(Path(__file__).resolve().parents[1] / "examples"
                                                              / "eval" / "fortunes.parquet")}}}}


@pytest.mark.parametrize("name", CHEAP)
def test_tagger_returns_one_keyed_row_per_document_matching_its_schema(name: str) -> None:
    (tagger,) = registry.build([name], CHEAP_PARAMS)
    batch = real_batch()
    out = tagger.tag(batch)
    assert out.schema.equals(tagger.schema()), (out.schema, tagger.schema())
    assert tagger.schema().names[0] == "doc_id"
    assert pa.types.is_string(tagger.schema().field("doc_id").type)
    assert out.num_rows == batch.num_rows
    assert sorted(out["doc_id"].to_pylist()) == sorted(batch["doc_id"].to_pylist())
    assert pc.count_distinct(out["doc_id"]).as_py() == batch.num_rows
    assert tagger.key == f"{tagger.name}@{tagger.version}"


@pytest.mark.parametrize("name", CHEAP)
def test_tagger_output_does_not_depend_on_row_order_or_batching(name: str) -> None:
    (tagger,) = registry.build([name], CHEAP_PARAMS)
    batch = real_batch()
    reference = by_id(tagger.tag(batch))
    perm = np.random.default_rng(7).permutation(batch.num_rows)
    shuffled = by_id(tagger.tag(batch.take(pa.array(perm))))
    assert shuffled.equals(reference)
    pieces = [tagger.tag(batch.slice(a, 37)) for a in range(0, batch.num_rows, 37)]
    assert by_id(pa.concat_tables(pieces)).equals(reference)


def test_build_passes_each_tagger_its_own_parameters() -> None:
    exact, minhash = registry.build(["exact", "minhash"], {"minhash": {"num_perm": 16, "ngram": 3}})
    assert isinstance(exact, ExactHashTagger) and isinstance(minhash, MinHashTagger)
    assert minhash.schema().field("_minhash").type == pa.list_(pa.uint32(), 16)
    assert minhash.config() == {"num_perm": 16, "ngram": 3, "seed": 1}


def test_build_rejects_unknown_tagger_naming_it_and_the_known_ones() -> None:
    with pytest.raises(KeyError) as err:
        registry.build(["exact", "langid"])
    msg = str(err.value)
    assert "'langid'" in msg and "exact" in msg and "minhash" in msg


@pytest.mark.usefixtures("isolated_registry")
def test_build_rejects_two_taggers_writing_the_same_column() -> None:
    registry.register("clash", ClashTagger)
    with pytest.raises(ValueError, match=r"'exact' and 'clash' both write column 'text_hash'"):
        registry.build(["exact", "clash"])


@pytest.mark.usefixtures("isolated_registry")
def test_register_rejects_a_taken_name() -> None:
    with pytest.raises(ValueError, match="'minhash' is already registered"):
        registry.register("minhash", WordCountTagger)
    assert registry.build(["minhash"])[0].__class__ is MinHashTagger


@pytest.mark.usefixtures("isolated_registry")
def test_registering_a_tagger_is_one_call_and_the_nightly_run_uses_it(tmp_path) -> None:
    registry.register("wordcount", WordCountTagger)  # the one call
    assert "wordcount" in registry.available()
    (wc,) = registry.build(["wordcount"])
    batch = real_batch(60)
    out = wc.tag(batch)
    assert out.schema.equals(wc.schema())
    assert dict(zip(out["doc_id"].to_pylist(), out["n_words"].to_pylist())) == {
        d: len(py_words(t)) for d, t in zip(batch["doc_id"].to_pylist(), batch["text"].to_pylist())
    }

    # ... and a rules file naming it is all a nightly run needs to tag with it.
    shards = tmp_path / "shards"
    shards.mkdir()
    src = pq.read_table(NIGHTS[1] / "part-00001.parquet").slice(0, 40)
    pq.write_table(src, shards / "part-00000.parquet")
    rules = tmp_path / "glia.toml"
    rules.write_text('[run]\ntaggers = ["exact", "minhash", "wordcount"]\n')
    db = tmp_path / "glia.duckdb"
    outcome = run_night(shards, db, rules=rules)
    assert outcome.status == "completed"
    assert outcome.counts["docs"] == 40
    got = dict(query(db, "SELECT doc_id, n_words FROM v_documents"))
    expected = {d: len(py_words(t)) for d, t in zip(src["id"].to_pylist(), src["text"].to_pylist())}
    assert got == expected  # keyed join: the reversed rows land on the right documents
    assert query(db, "SELECT count(*) FROM tags_wordcount") == [(40,)]
    assert query(db, "SELECT DISTINCT tagger, version FROM tag_files WHERE tagger = 'wordcount'") == [("wordcount", "1")]


# -- exact hash ----------------------------------------------------------------------------------


def exact_hashes(texts: list[str]) -> list[int]:
    out = ExactHashTagger().tag(pa.table({"doc_id": [str(i) for i in range(len(texts))], "text": texts}))
    return out["text_hash"].to_pylist()


def ascii_corpus_text() -> str:
    texts = pq.read_table(NIGHTS[1] / "part-00000.parquet", columns=["text"])["text"].to_pylist()
    return next(t for t in texts if t.isascii() and len(t.split()) > 40)


def test_exact_hash_is_equal_for_case_and_whitespace_variants() -> None:
    text = ascii_corpus_text()
    words = text.split()
    rng = random.Random(3)
    spaces = [" ", "  ", "\t", "\n", "\r\n", " \n\t ", "\v", "\x85", "\u2028", "\u00a0", "\u2003", "\u3000"]
    respaced = "".join(w + rng.choice(spaces) for w in words)
    variants = [
        text,
        text.upper(),
        text.lower(),
        "  \n" + text + "\t \n",
        respaced,
        respaced.upper(),
        " ".join(words).swapcase(),
        "\uff34\uff28\uff25 cat",  # fullwidth "THE": NFKC makes it ASCII
    ]
    hashes = exact_hashes(variants)
    assert len(set(hashes[:-1])) == 1
    # The stored hash is xxh3-64 of the normal form, here simply lower-case, single spaces.
    assert hashes[0] == xxhash.xxh3_64_intdigest(" ".join(text.lower().split()).encode())
    assert hashes[-1] == exact_hashes(["the CAT"])[0]


def test_exact_hash_differs_for_different_text() -> None:
    text = ascii_corpus_text()
    words = text.split()
    changed_word = " ".join(words[:10] + ["zebra"] + words[11:])
    swapped = " ".join(words[1:2] + words[0:1] + words[2:])
    punct = text.rstrip(".!?;:,") + " ?!"
    truncated = " ".join(words[:-1])
    hashes = exact_hashes([text, changed_word, swapped, punct, truncated])
    assert len(set(hashes)) == 5


def test_exact_n_chars_counts_code_points() -> None:
    out = ExactHashTagger().tag(pa.table({"doc_id": ["a", "b"], "text": ["caf\u00e9 \u2615", "x"]}))
    assert out["n_chars"].to_pylist() == [6, 1]


def test_exact_hash_agrees_with_planted_kinds(planted: list[PlantedPair], corpus_texts: dict[str, str]) -> None:
    """planted.csv calls a pair exact iff both texts have the same normal form."""
    ids = sorted(corpus_texts)
    h = dict(zip(ids, exact_hashes([corpus_texts[i] for i in ids])))
    exact = [p for p in planted if p.kind == "exact"]
    near = [p for p in planted if p.kind == "near"]
    assert len(exact) == 164 and len(near) == 669
    assert [p for p in exact if h[p.doc_id] != h[p.duplicate_of]] == []
    assert [p for p in near if h[p.doc_id] == h[p.duplicate_of]] == []


# -- MinHash ---------------------------------------------------------------------------------------


def test_shingle_sets_reproduce_the_ground_truth_jaccard(planted: list[PlantedPair], corpus_texts: dict[str, str]) -> None:
    """The word 5-gram hashes give exactly planted.csv's true Jaccard, and so does the
    documented tokenisation written out in plain Python."""
    ids = sorted({p.doc_id for p in planted} | {p.duplicate_of for p in planted})
    words, offsets = word_hashes(pa.array([corpus_texts[i] for i in ids]))
    sh, s_off = shingle_hashes(words, offsets, 5)
    sets = {d: set(sh[s_off[k] : s_off[k + 1]].tolist()) for k, d in enumerate(ids)}
    bad = []
    for p in planted:
        a, b = sets[p.doc_id], sets[p.duplicate_of]
        if abs(len(a & b) / len(a | b) - p.jaccard) > 0.00005 + 1e-9:
            bad.append((p, len(a & b) / len(a | b)))
    assert bad == []
    for p in planted[::25]:  # the plain-Python tokenisation, on a sample
        a, b = py_shingles(corpus_texts[p.doc_id]), py_shingles(corpus_texts[p.duplicate_of])
        assert round(len(a & b) / len(a | b), 4) == pytest.approx(p.jaccard, abs=1e-9)


def test_minhash_estimate_is_close_to_true_jaccard_for_planted_near_pairs(
    planted: list[PlantedPair], corpus_texts: dict[str, str]
) -> None:
    nd = NearDup()
    # planted.csv's Jaccard is over word 5-grams: estimate that, at the default permutations.
    tagger = MinHashTagger(num_perm=nd.num_perm, ngram=5, seed=nd.seed)
    pairs = [p for p in planted if p.origin == "planted" and p.kind == "near"]
    assert len(pairs) == 123
    ids = sorted({p.doc_id for p in pairs} | {p.duplicate_of for p in pairs})
    out = tagger.tag(pa.table({"doc_id": ids, "text": [corpus_texts[i] for i in ids]}))
    sig = dict(zip(out["doc_id"].to_pylist(), np.asarray(out["_minhash"].to_pylist(), dtype=np.uint32)))
    err = np.array([(sig[p.doc_id] == sig[p.duplicate_of]).mean() - p.jaccard for p in pairs])
    assert np.abs(err).max() <= 0.12, sorted(zip(np.abs(err), pairs), key=lambda x: -x[0])[:3]
    assert np.abs(err).mean() < 0.04
    assert abs(err.mean()) < 0.02  # no bias


def test_minhash_estimate_agrees_with_datasketch(planted: list[PlantedPair], corpus_texts: dict[str, str]) -> None:
    pairs = [p for p in planted if p.origin == "planted" and p.kind == "near"][:25]
    ids = sorted({p.doc_id for p in pairs} | {p.duplicate_of for p in pairs})
    sig, _ = MinHashTagger(ngram=5).signatures(pa.array([corpus_texts[i] for i in ids]))  # py_shingles: 5-grams
    pos = {d: k for k, d in enumerate(ids)}

    def datasketch_minhash(text: str) -> MinHash:
        m = MinHash(num_perm=256, seed=1)
        for s in sorted(py_shingles(text)):
            m.update(s.encode())
        return m

    for p in pairs:
        glia = float((sig[pos[p.doc_id]] == sig[pos[p.duplicate_of]]).mean())
        ds = datasketch_minhash(corpus_texts[p.doc_id]).jaccard(datasketch_minhash(corpus_texts[p.duplicate_of]))
        assert abs(ds - p.jaccard) <= 0.12, (p, ds)
        assert abs(glia - ds) <= 0.12, (p, glia, ds)


def test_minhash_signature_is_null_for_texts_without_words() -> None:
    texts = [NO_WORDS, "\u2014", "Hello", "one two three four five six", "  ...  ", "one two three four five six"]
    out = MinHashTagger().tag(pa.table({"doc_id": [f"d{i}" for i in range(len(texts))], "text": texts}))
    assert out["_minhash"].is_null().to_pylist() == [True, True, False, False, True, False]
    assert out["n_shingles"].to_pylist() == [0, 0, 1, 4, 0, 4]  # default word 3-grams
    sigs = out["_minhash"].to_pylist()
    assert sigs[3] == sigs[5] and len(sigs[3]) == NearDup().num_perm


def test_minhash_n_shingles_matches_the_documented_tokenisation() -> None:
    batch = real_batch()
    tagger = MinHashTagger()
    out = by_id(tagger.tag(batch))
    texts = dict(zip(batch["doc_id"].to_pylist(), batch["text"].to_pylist()))
    expected = []
    for d in out["doc_id"].to_pylist():
        w = len(py_words(texts[d]))
        expected.append(max(w - tagger.ngram + 1, min(w, 1)))
    assert out["n_shingles"].to_pylist() == expected


def test_minhash_signature_values_are_pinned() -> None:
    """Signatures are compared with the stored history of earlier nights: a change in the
    hashing, shingling or MinHash engine must come with a version bump. These values were
    recorded from the released tagger."""
    tagger = MinHashTagger(num_perm=8, ngram=5)  # recorded with word 5-grams
    sig, n = tagger.signatures(pa.array(["It is a truth universally acknowledged, that a single man"]))
    assert n.tolist() == [6]
    assert sig[0].tolist() == PINNED_SIG
    assert MinHashTagger.version == "1-r2"
    h = exact_hashes(["It is a truth universally acknowledged"])[0]
    assert h == PINNED_EXACT


PINNED_SIG = [1483950370, 993486257, 348193165, 797291275, 89824045, 3432162680, 1308356042, 693909292]
# xxh3-64 of b"it is a truth universally acknowledged"
PINNED_EXACT = 8894184736323703663

