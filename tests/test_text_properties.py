"""Property tests for the vectorised text primitives in ``core.text``."""

from __future__ import annotations

import re
import unicodedata

import numpy as np
import pyarrow as pa
import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from glia.core.text import hash_strings, normalize, shingle_hashes, word_hashes

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Characters Python's unicodedata knows (Unicode 14 on Python 3.11): the oracle below uses
# Python's ``re``, whose idea of a letter follows that table; unassigned code points may be
# letters in the newer tables RE2 ships with.
assigned = st.characters(exclude_categories=("Cn", "Cs"))
texts = st.text(alphabet=assigned, max_size=60)
# Text with plenty of case, spacing and compatibility forms to normalise.
word = st.text(alphabet="aAbBéÉßﬁＡｂ1_", min_size=1, max_size=6)
gap = st.sampled_from([" ", "  ", "\t", "\n", "\r\n", "\v", "\x85", "\u2028", "\u00a0", "\u3000", "\u2003", ", ", " - "])
spaced = st.lists(st.tuples(word, gap), max_size=12).map(lambda xs: "".join(w + g for w, g in xs))
any_text = st.one_of(texts, spaced)


def norm1(s: str) -> str:
    return normalize(pa.array([s])).to_pylist()[0]


@SETTINGS
@given(st.lists(any_text, max_size=8))
def test_normalize_is_idempotent(values: list[str]) -> None:
    once = normalize(pa.array(values, pa.string()))
    twice = normalize(once)
    assert twice.to_pylist() == once.to_pylist()


@SETTINGS
@given(st.lists(any_text, max_size=8))
def test_normalize_gives_each_text_what_it_gets_alone(values: list[str]) -> None:
    # Space runs are folded over the whole buffer, across text boundaries.
    assert normalize(pa.array(values, pa.string())).to_pylist() == [norm1(v) for v in values]


@SETTINGS
@given(st.lists(any_text, max_size=8))
def test_word_hashes_give_each_text_what_it_gets_alone(values: list[str]) -> None:
    hashes, offsets = word_hashes(pa.array(values, pa.string()))
    for i, v in enumerate(values):
        alone, _ = word_hashes(pa.array([v], pa.string()))
        assert hashes[offsets[i]:offsets[i + 1]].tolist() == alone.tolist()


@SETTINGS
@given(any_text)
def test_normalize_output_is_lower_case_trimmed_with_single_spaces(s: str) -> None:
    n = norm1(s)
    assert n == n.strip()
    assert not re.search(r"[ \t\n\r\f]{2}|[\t\n\r\f]", n)
    assert n == n.lower()


@SETTINGS
@given(st.lists(any_text, min_size=1, max_size=8), st.randoms(use_true_random=False))
def test_hash_is_a_pure_function_of_each_text(values: list[str], rnd) -> None:
    """Same hash whatever else is in the batch and in which order: xxh3-64 of the UTF-8
    normal form, so stored hashes stay comparable across nights."""
    hashes = hash_strings(normalize(pa.array(values)))
    assert hashes.dtype == np.uint64
    assert hashes.tolist() == [xxhash.xxh3_64_intdigest(norm1(v).encode()) for v in values]
    order = list(range(len(values)))
    rnd.shuffle(order)
    shuffled = hash_strings(normalize(pa.array([values[i] for i in order])))
    assert shuffled.tolist() == [hashes[i] for i in order]
    # chunked input gives the same as a plain array
    chunked = pa.chunked_array([values[:1], values[1:]], pa.string())
    assert hash_strings(normalize(chunked)).tolist() == hashes.tolist()


@SETTINGS
@given(spaced)
def test_hash_ignores_case_and_spacing(s: str) -> None:
    variants = [s, s.upper(), "  " + s.replace(" ", "\n  \t") + "\r\n", "\u3000" + s + "\u00a0"]
    # str.upper is not always undone by lower-casing (German sharp s becomes SS): only
    # compare variants whose lower-cased NFKC forms agree once spacing is folded.
    base = " ".join(unicodedata.normalize("NFKC", s).lower().split())
    keep = [v for v in variants if " ".join(unicodedata.normalize("NFKC", v).lower().split()) == base]
    assert len(set(hash_strings(normalize(pa.array(keep))).tolist())) == 1


def test_null_hashes_like_the_empty_string() -> None:
    assert hash_strings(pa.array([None, ""], pa.string())).tolist() == [xxhash.xxh3_64_intdigest(b"")] * 2


def py_tokens(text: str) -> list[str]:
    return re.findall(r"\w+", unicodedata.normalize("NFKC", text).lower())


@SETTINGS
@given(texts)
def test_words_are_the_documented_tokens(value: str) -> None:
    """Words are Python ``re`` ``\\w+`` runs of the NFKC, lower-cased text, hashed with xxh3-64."""
    hashes, offsets = word_hashes(pa.array([value], pa.string()))
    assert offsets.tolist() == [0, len(hashes)]
    assert hashes.tolist() == [xxhash.xxh3_64_intdigest(w.encode()) for w in py_tokens(value)]


@SETTINGS
@given(st.lists(st.text(alphabet="ab .,", max_size=30), max_size=6))
def test_word_offsets_split_a_batch_per_document(values: list[str]) -> None:
    hashes, offsets = word_hashes(pa.array(values, pa.string()))
    assert offsets[0] == 0 and len(offsets) == len(values) + 1 and offsets[-1] == len(hashes)
    assert np.diff(offsets).tolist() == [len(py_tokens(v)) for v in values]


def test_word_hashes_are_deterministic_in_a_mixed_batch() -> None:
    """An ASCII text of 64*k bytes ending in punctuation, batched with a non-ASCII text."""
    wrong = []
    for k in range(1, 9):
        text = ("Word " * 200)[: 64 * k - 1] + "."
        expected = [xxhash.xxh3_64_intdigest(w.encode()) for w in py_tokens(text)]
        for neighbour in ("na\u00efve", "\u00bb", "caf\u00e9 au lait"):
            for _ in range(40):
                hashes, offsets = word_hashes(pa.array([neighbour, text]))
                got = hashes[offsets[1] : offsets[2]].tolist()
                if got != expected:
                    wrong.append((k, neighbour))
    assert wrong == []


@SETTINGS
@given(texts)
def test_normal_form_is_nfkc_lower_case_with_whitespace_runs_folded(value: str) -> None:
    """The exact hash's normal form: NFKC, lower-case, Unicode whitespace runs -> one space."""
    assert norm1(value) == " ".join(unicodedata.normalize("NFKC", value).lower().split())


word_lists = st.lists(st.lists(st.integers(0, 2**64 - 1), max_size=12), max_size=10)


def flat(docs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    words = np.array([w for d in docs for w in d], dtype=np.uint64)
    offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    np.cumsum([len(d) for d in docs], out=offsets[1:])
    return words, offsets


@SETTINGS
@given(word_lists, st.integers(1, 6))
def test_shingle_offsets_are_consistent(docs: list[list[int]], n: int) -> None:
    words, offsets = flat(docs)
    out, out_offsets = shingle_hashes(words, offsets, n)
    assert out.dtype == np.uint64
    assert len(out_offsets) == len(docs) + 1 and out_offsets[0] == 0 and out_offsets[-1] == len(out)
    counts = np.diff(out_offsets).tolist()
    assert counts == [max(len(d) - n + 1, min(len(d), 1)) for d in docs]


@SETTINGS
@given(word_lists, st.integers(1, 6))
def test_shingles_of_a_document_do_not_depend_on_its_neighbours(docs: list[list[int]], n: int) -> None:
    """Each document's shingles equal those computed for it alone (no window crosses a
    document boundary), and equal word windows give equal shingles."""
    words, offsets = flat(docs)
    out, out_offsets = shingle_hashes(words, offsets, n)
    for k, d in enumerate(docs):
        alone, _ = shingle_hashes(*flat([d]), n)
        assert out[out_offsets[k] : out_offsets[k + 1]].tolist() == alone.tolist()
        if len(d) >= n:
            windows = [tuple(d[i : i + n]) for i in range(len(d) - n + 1)]
            by_window: dict[tuple, int] = {}
            for w, h in zip(windows, alone.tolist()):
                assert by_window.setdefault(w, h) == h


def test_shingle_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="n-gram size must be >= 1"):
        shingle_hashes(np.array([1], np.uint64), np.array([0, 1]), 0)
