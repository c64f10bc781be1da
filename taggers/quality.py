"""Quality tagger: datatrove's offline heuristic filters as tags, not as silent drops.

Four filter families from datatrove 0.10.1, unchanged (two run by default, see Defaults below):

* ``gopher_quality``: ``GopherQualityFilter`` (word count, mean word length, ``#`` and
  ellipsis per word, bullet and ellipsis lines, words with a letter, stop words);
* ``gopher_repetition``: ``GopherRepetitionFilter`` (duplicate paragraphs and lines, top
  n-gram and duplicated n-gram character fractions);
* ``c4``: ``C4QualityFilter`` (lorem ipsum, curly brackets, too few sentences after C4's
  line cleaning). ``C4BadWordsFilter`` is left out: it downloads its word list at run time;
* ``fineweb``: ``FineWebQualityFilter`` (lines ending in punctuation, short lines,
  duplicated line characters, newlines per word).

A datatrove filter stops at the first rule that fails. To name *every* rule that fires, the
tagger asks the filter again with that one rule switched off (on a copy, so the shared
instance never changes under another thread) until it passes. Only failing documents pay
for the extra calls. One exception: datatrove ties its ``#`` and ellipsis rules to one
threshold (``max_symbol_word_ratio``), so after ``gopher_too_many_hashes`` the ellipsis rule
is not asked again; ``q_ellipsis_word_ratio`` still shows its value.

Defaults (tagger version 2). The rules were written for web pages and judged with spaCy's
tokens; on this tagger's tokens two families and one threshold misfire on clean text, so the
defaults, chosen on the example corpus's clean sources and then measured on the pruning
benchmark's corpus (``docs/pruning.md``), are:

* ``families = ["gopher_quality", "gopher_repetition"]``. C4's and FineWeb's line rules fail
  verse, dialogue and glossaries: on the example corpus ``fineweb:char_dup_ratio`` fired on
  76 % of the Shakespeare documents (speaker names repeat as lines), ``c4:curly_bracket`` on
  90 % of the Jargon File (its ``{cross-references}``), ``c4:too_few_sentences`` on 26 % of
  the KJV. Both stay available (``families = [...]``) for corpora of web pages.
* ``[taggers.quality.gopher_quality] max_non_alpha_words_ratio = 0.7`` instead of datatrove's
  0.8. Gopher asks that 80 % of the *words* hold a letter; this tokenizer makes every
  punctuation mark a token of its own (as spaCy does), about 0.2 of them per word in prose, so
  0.8 of the words is about 0.8 / 1.2 ~ 0.67 of the tokens. At 0.8 the rule failed 13.5 % of
  Austen, 43 % of Shakespeare and 81 % of the Jargon File; at 0.7, 0.1 %, 0.4 % and 14 %.

With both, ``quality_pass`` is false for 0.9 % of the example corpus's Austen documents, 4.7 %
of the KJV, 4.5 % of Shakespeare, 14 % of the Jargon File, none of The Devil's Dictionary and
72 % of the Debian copyright files (licence boilerplate: file globs, e-mail addresses, licence
blocks repeated), against 37 %, 27 %, 86 %, 98 %, 40 % and 98 % with datatrove's defaults and
every family (all three nights). A rules file that sets ``families`` or a threshold gets exactly what it says.

Tokenisation. datatrove's English word tokenizer is spaCy's (not installed, and slow); its
``WhitespaceTokenizer`` fallback loads spaCy too. :class:`RegexWordTokenizer` subclasses that
fallback, keeps its regex sentence splitter (C4 counts sentences with it) and splits words
with a regex in spaCy's spirit: runs of word characters (with inner apostrophes), ``...``,
and every other non-space character as a token of its own. Punctuation tokens matter:
Gopher divides by the token count (``#`` per word, share of words with a letter).

The scores recorded beside the verdicts are computed with datatrove's own helpers
(``find_duplicates``, ``find_top_duplicate``, ``find_all_duplicate``, its punctuation sets)
on the same tokens the filters saw, so ``q_n_words < min_doc_words`` is exactly when
``gopher_short_doc`` fires. Scores of a disabled family are null. Per-document Python is
unavoidable here (the filters are per-document Python); see ``bench/bench_cheap_taggers.py``.
"""

from __future__ import annotations

import copy
import inspect
import re
import threading
from collections.abc import Callable, Mapping
from importlib.metadata import version as _dist_version
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.filters.c4_filters import C4QualityFilter
from datatrove.pipeline.filters.fineweb_quality_filter import FineWebQualityFilter
from datatrove.pipeline.filters.gopher_quality_filter import GopherQualityFilter
from datatrove.pipeline.filters.gopher_repetition_filter import (
    GopherRepetitionFilter, find_all_duplicate, find_duplicates, find_top_duplicate, get_n_grams,
)
from datatrove.utils.text import PUNCTUATION_SET, split_into_words
from datatrove.utils.word_tokenizers import WhitespaceTokenizer

from glia.taggers.base import Resources, Tagger

DATATROVE_VERSION = _dist_version("datatrove")

FAMILIES: dict[str, type[BaseFilter]] = {
    "gopher_quality": GopherQualityFilter,
    "gopher_repetition": GopherRepetitionFilter,
    "c4": C4QualityFilter,
    "fineweb": FineWebQualityFilter,
}
# Constructor arguments the tagger sets itself: no exclusion writer (nothing is dropped) and
# always the offline tokenizer.
_RESERVED = {"exclusion_writer", "language"}
# The families a tagger runs unless ``families`` says otherwise, and Glia's own defaults where
# they differ from datatrove's (see the module docstring for the measurements behind both).
DEFAULT_FAMILIES = ("gopher_quality", "gopher_repetition")
GLIA_DEFAULTS: dict[str, dict[str, Any]] = {"gopher_quality": {"max_non_alpha_words_ratio": 0.7}}

# One-entry memo per thread: the four filters and the scores tokenise the same text, and
# datatrove's own cache (5 entries, shared by all threads) is flushed by C4's per-line calls.
_MEMO = threading.local()


class RegexWordTokenizer(WhitespaceTokenizer):
    """datatrove's ``WhitespaceTokenizer`` (regex sentence splitting) with regex word splitting
    instead of spaCy's ``xx`` model, so it works offline and without spaCy."""

    PATTERN: ClassVar[str] = r"\w+(?:['’]\w+)*|\.\.\.|[^\w\s]"
    _WORD: ClassVar[re.Pattern[str]] = re.compile(PATTERN)

    def word_tokenize(self, text: str) -> list[str]:
        if getattr(_MEMO, "text", None) is text:
            return _MEMO.words
        words = self._WORD.findall(text)
        _MEMO.text, _MEMO.words = text, words
        return words

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.PATTERN!r})"


# -- the scores -------------------------------------------------------------------------------

# (column, Arrow type, family): the columns of each family are null when it is disabled.
SCORES: tuple[tuple[str, pa.DataType, str], ...] = (
    ("q_n_words", pa.int32(), "gopher_quality"),  # words with a non-punctuation character
    ("q_mean_word_len", pa.float32(), "gopher_quality"),  # mean length of those words
    ("q_hash_word_ratio", pa.float32(), "gopher_quality"),  # '#' per token
    ("q_ellipsis_word_ratio", pa.float32(), "gopher_quality"),  # '...' and '…' per token
    ("q_bullet_lines_frac", pa.float32(), "gopher_quality"),  # lines starting with '•' or '-'
    ("q_ellipsis_lines_frac", pa.float32(), "gopher_quality"),  # lines ending with an ellipsis
    ("q_alpha_words_frac", pa.float32(), "gopher_quality"),  # tokens with a letter
    ("q_stop_words", pa.int32(), "gopher_quality"),  # distinct Gopher stop words present
    ("q_dup_para_frac", pa.float32(), "gopher_repetition"),  # paragraphs that repeat an earlier one
    ("q_dup_para_char_frac", pa.float32(), "gopher_repetition"),  # their characters / text length
    ("q_dup_line_frac", pa.float32(), "gopher_repetition"),  # lines that repeat an earlier one
    ("q_dup_line_char_frac", pa.float32(), "gopher_repetition"),
    ("q_top_2gram_char_frac", pa.float32(), "gopher_repetition"),  # most frequent word 2-gram's characters
    ("q_dup_5gram_char_frac", pa.float32(), "gopher_repetition"),  # characters in repeated word 5-grams
    ("q_line_punct_frac", pa.float32(), "fineweb"),  # non-blank lines ending in terminal punctuation
    ("q_short_line_frac", pa.float32(), "fineweb"),  # non-blank lines of <= short_line_length chars
    ("q_char_dup_frac", pa.float32(), "fineweb"),  # characters of repeated non-blank lines
    ("q_newline_word_ratio", pa.float32(), "fineweb"),  # newlines per token
    ("q_c4_lines_kept_frac", pa.float32(), "c4"),  # lines C4's line cleaning keeps
    ("q_c4_lines_no_punct_frac", pa.float32(), "c4"),  # lines C4 drops for lacking end punctuation
)
_COLUMN = {name: i for i, (name, _, _) in enumerate(SCORES)}


def _ratio(num: float, den: float) -> float:
    return num / den if den else float("nan")


def _gopher_quality_scores(f: GopherQualityFilter, text: str, words: list[str], out: list[float]) -> None:
    # The same expressions as GopherQualityFilter.filter, kept as numbers instead of verdicts.
    non_symbol = [w for w in words if not PUNCTUATION_SET.issuperset(w)]
    n_tokens = len(words)
    lines = text.splitlines()
    out[_COLUMN["q_n_words"]] = len(non_symbol)
    out[_COLUMN["q_mean_word_len"]] = _ratio(sum(map(len, non_symbol)), len(non_symbol))
    out[_COLUMN["q_hash_word_ratio"]] = _ratio(text.count("#"), n_tokens)
    out[_COLUMN["q_ellipsis_word_ratio"]] = _ratio(text.count("...") + text.count("…"), n_tokens)
    stripped = [s.strip() for s in lines]
    out[_COLUMN["q_bullet_lines_frac"]] = _ratio(sum(s.startswith(("•", "-")) for s in stripped), len(lines))
    out[_COLUMN["q_ellipsis_lines_frac"]] = _ratio(sum(s.endswith(("...", "…")) for s in stripped), len(lines))
    alpha = sum(1 for w in words if w.isalpha() or any(map(str.isalpha, w)))
    out[_COLUMN["q_alpha_words_frac"]] = _ratio(alpha, n_tokens)
    out[_COLUMN["q_stop_words"]] = len(f.stop_words.intersection(words))


def _gopher_repetition_scores(f: GopherRepetitionFilter, text: str, words: list[str], out: list[float]) -> None:
    paragraphs = f.paragraph_exp.split(text.strip())
    n_dup, chars = find_duplicates(paragraphs)
    out[_COLUMN["q_dup_para_frac"]] = _ratio(n_dup, len(paragraphs))
    out[_COLUMN["q_dup_para_char_frac"]] = _ratio(chars, len(text))
    lines = f._line_splitter.split(text)
    n_dup, chars = find_duplicates(lines)
    out[_COLUMN["q_dup_line_frac"]] = _ratio(n_dup, len(lines))
    out[_COLUMN["q_dup_line_char_frac"]] = _ratio(chars, len(text))
    bigrams = get_n_grams(words, 2)
    out[_COLUMN["q_top_2gram_char_frac"]] = _ratio(find_top_duplicate(bigrams), len(text)) if bigrams else 0.0
    out[_COLUMN["q_dup_5gram_char_frac"]] = _ratio(find_all_duplicate(words, 5), len(text))


def _fineweb_scores(f: FineWebQualityFilter, text: str, words: list[str], out: list[float]) -> None:
    lines = [line for line in text.split("\n") if line.strip() != ""]
    out[_COLUMN["q_line_punct_frac"]] = _ratio(sum(1 for s in lines if s.endswith(f.stop_chars)), len(lines))
    out[_COLUMN["q_short_line_frac"]] = _ratio(sum(1 for s in lines if len(s) <= f.short_line_length), len(lines))
    out[_COLUMN["q_char_dup_frac"]] = _ratio(find_duplicates(lines)[1], len(text) - text.count("\n"))
    out[_COLUMN["q_newline_word_ratio"]] = _ratio(text.count("\n"), len(words))


_SCORERS: dict[str, Callable[[Any, str, list[str], list[float]], None]] = {
    "gopher_quality": _gopher_quality_scores,
    "gopher_repetition": _gopher_repetition_scores,
    "fineweb": _fineweb_scores,
}

# -- asking a filter again with the rule that fired switched off --------------------------------

_OFF: dict[str, dict[str, tuple[str, object]]] = {
    "gopher_quality": {
        "gopher_short_doc": ("min_doc_words", None),
        "gopher_long_doc": ("max_doc_words", None),
        "gopher_below_avg_threshold": ("min_avg_word_length", None),
        "gopher_above_avg_threshold": ("max_avg_word_length", None),
        "gopher_too_many_hashes": ("max_symbol_word_ratio", None),
        "gopher_too_many_ellipsis": ("max_symbol_word_ratio", None),
        "gopher_too_many_bullets": ("max_bullet_lines_ratio", None),
        "gopher_too_many_end_ellipsis": ("max_ellipsis_lines_ratio", None),
        "gopher_below_alpha_threshold": ("max_non_alpha_words_ratio", None),
        "gopher_enough_stop_words": ("min_stop_words", None),
    },
    "gopher_repetition": {
        "dup_para_frac": ("dup_para_frac", None),
        "dup_para_char_frac": ("dup_para_char_frac", None),
        "dup_line_frac": ("dup_line_frac", None),
        "dup_line_char_frac": ("dup_line_char_frac", None),
    },
    "c4": {
        "lorem_ipsum": ("filter_lorem_ipsum", False),
        "curly_bracket": ("filter_curly_bracket", False),
        "too_few_sentences": ("min_num_sentences", -1),
    },
    "fineweb": {
        "line_punct_ratio": ("line_punct_thr", 0.0),
        "short_line_ratio": ("short_line_threshold", float("inf")),
        "char_dup_ratio": ("char_duplicates_ratio", float("inf")),
        "list_ratio": ("new_line_ratio", float("inf")),
    },
}
_NGRAM_REASON = re.compile(r"top_(\d+)_gram|duplicated_(\d+)_n_grams")
# Each filter's last rule: once it has fired there is nothing left to ask about.
_LAST = {"gopher_quality": "gopher_enough_stop_words", "c4": "too_few_sentences", "fineweb": "list_ratio"}


def _switched_off(family: str, f: BaseFilter, reason: str) -> BaseFilter | None:
    """A copy of ``f`` with the rule behind ``reason`` disabled, or None when there is nothing
    left to ask: the rule was the filter's last, or the reason is not one this datatrove
    version is known to give."""
    off = copy.copy(f)
    if family == "gopher_repetition" and (m := _NGRAM_REASON.fullmatch(reason)):
        # The n-gram rules are the costly ones and run in order (top n-grams, then duplicated
        # n-grams): every rule before the one that fired has passed, so the next call skips them.
        if m.group(1):
            n = int(m.group(1))
            off.top_n_grams = off.top_n_grams[[t[0] for t in off.top_n_grams].index(n) + 1 :]
        else:
            n = int(m.group(2))
            off.top_n_grams = ()
            off.dup_n_grams = off.dup_n_grams[[t[0] for t in off.dup_n_grams].index(n) + 1 :]
            if not off.dup_n_grams:
                return None  # that was the filter's last rule
        return off
    knob = _OFF[family].get(reason)
    if knob is None or reason == _LAST.get(family):
        return None
    setattr(off, knob[0], knob[1])
    return off


class _LineCounts:
    """Stands in for a C4 filter copy's ``stat_update``: C4 reports each line's fate there."""

    __slots__ = ("total", "kept", "no_punct")

    def __init__(self) -> None:
        self.total = self.kept = self.no_punct = 0

    def __call__(self, *labels: str, value: int = 1, unit: str | None = None) -> None:
        for label in labels:
            if label == "line-total":
                self.total += 1
            elif label == "line-kept":
                self.kept += 1
            elif label == "line-filter-no_terminal_punc":
                self.no_punct += 1


# -- the tagger ----------------------------------------------------------------------------------


def _filter_kwargs(family: str, given: Mapping[str, Any] | None) -> dict[str, Any]:
    """The constructor arguments of one family: datatrove's defaults, then :data:`GLIA_DEFAULTS`,
    then ``given``.
    TOML arrays become tuples where datatrove needs them (``str.endswith``, n-gram specs)."""
    cls = FAMILIES[family]
    params = inspect.signature(cls.__init__).parameters
    known = {name: p.default for name, p in params.items() if name != "self" and name not in _RESERVED}
    given = dict(given or {})
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError(
            f"[taggers.quality.{family}]: unknown parameter(s) {', '.join(unknown)}; "
            f"{cls.__name__} takes {', '.join(sorted(known))}"
        )
    out = {**known, **GLIA_DEFAULTS.get(family, {}), **given}
    for key in ("top_n_grams", "dup_n_grams"):
        if key in out and out[key] is not None:
            out[key] = tuple((int(n), float(frac)) for n, frac in out[key])
    if family == "fineweb" and out.get("stop_chars") is not None:
        out["stop_chars"] = tuple(out["stop_chars"])
    return out


class QualityTagger(Tagger):
    """Scores (``q_*``), ``quality_pass`` (every enabled family passes) and ``quality_failed``
    (``"<family>:<datatrove reason>"`` for every rule that fires, in datatrove's order)."""

    name: ClassVar[str] = "quality"
    # datatrove's version is part of ours: its rules and defaults decide the output.
    version: ClassVar[str] = f"2-dt{DATATROVE_VERSION}"
    resources: ClassVar[Resources] = Resources(gpu=False, batch_size=2_000)

    @dataclass(frozen=True)
    class Params:
        """``families`` lists the enabled filter families; each family's table holds keyword
        arguments for its datatrove class (thresholds; defaults are datatrove's except
        :data:`GLIA_DEFAULTS`)."""

        families: tuple[str, ...] = DEFAULT_FAMILIES
        gopher_quality: dict[str, Any] | None = None
        gopher_repetition: dict[str, Any] | None = None
        c4: dict[str, Any] | None = None
        fineweb: dict[str, Any] | None = None

        def __post_init__(self) -> None:
            unknown = [f for f in self.families if f not in FAMILIES]
            if unknown:
                raise ValueError(f"families: unknown {unknown}; known: {', '.join(FAMILIES)}")

    def __init__(self, **params: Any) -> None:
        p = self.configure(params)
        self.families = tuple(dict.fromkeys(p.families))
        given = {fam: getattr(p, fam) for fam in FAMILIES}
        self.filter_params = {fam: _filter_kwargs(fam, given[fam]) for fam in FAMILIES}
        self.tokenizer = RegexWordTokenizer()
        try:
            self.filters = {
                fam: FAMILIES[fam](**self.filter_params[fam], language=self.tokenizer) for fam in self.families
            }
        except (TypeError, ValueError) as exc:
            raise ValueError(f"[taggers.quality]: {exc}") from None

    def config(self) -> dict[str, object]:
        return {
            "families": list(self.families),
            "params": {fam: self.filter_params[fam] for fam in self.families},
            "tokenizer": repr(self.tokenizer),
        }

    def stats(self, tags: pa.Table) -> dict[str, float]:
        return {"failed": float(tags.num_rows - (pc.sum(tags["quality_pass"]).as_py() or 0))}

    def schema(self) -> pa.Schema:
        return pa.schema(
            [("doc_id", pa.string())]
            + [(name, t) for name, t, _ in SCORES]
            + [("quality_pass", pa.bool_()), ("quality_failed", pa.list_(pa.string()))]
        )

    def _ask(self, family: str, text: str, doc_id: str, scores: list[float]) -> list[str]:
        """Every rule of one family that fails on ``text``, in datatrove's order."""
        f = self.filters[family]
        fired: list[str] = []
        while f is not None:
            counts = None
            if family == "c4":  # C4 rewrites doc.text and reports line fates through stat_update
                f, counts = copy.copy(f), _LineCounts()
                f.stat_update = counts
            try:
                verdict = f.filter(Document(text, doc_id))
            except ZeroDivisionError:
                # datatrove divides by the token count; only a blank text has none, and ingest
                # skips blank texts. Called directly with one, the tagger records what it has.
                break
            if counts is not None:
                scores[_COLUMN["q_c4_lines_kept_frac"]] = _ratio(counts.kept, counts.total)
                scores[_COLUMN["q_c4_lines_no_punct_frac"]] = _ratio(counts.no_punct, counts.total)
            if verdict is True or (isinstance(verdict, tuple) and verdict[0]):
                break
            reason = verdict[1] if isinstance(verdict, tuple) else "rejected"
            fired.append(f"{family}:{reason}")
            if family == "gopher_quality" and scores[_COLUMN["q_n_words"]] == 0:
                break  # no words at all: every other Gopher rule would divide by nothing
            f = _switched_off(family, f, reason)
        return fired

    def tag(self, batch: pa.Table) -> pa.Table:
        texts = batch.column("text").to_pylist()
        ids = batch.column("doc_id").to_pylist()
        n = len(texts)
        values = np.full((len(SCORES), n), np.nan, dtype=np.float64)
        passed = np.ones(n, dtype=bool)
        failed: list[list[str]] = []
        scorers = [(fam, _SCORERS[fam]) for fam in self.families if fam in _SCORERS]
        for i, (text, doc_id) in enumerate(zip(texts, ids)):
            scores = [float("nan")] * len(SCORES)
            words = split_into_words(text, self.tokenizer)
            for fam, scorer in scorers:
                scorer(self.filters[fam], text, words, scores)
            fired: list[str] = []
            for fam in self.families:
                fired += self._ask(fam, text, doc_id, scores)
            values[:, i] = scores
            passed[i] = not fired
            failed.append(fired)
        cols: dict[str, pa.Array] = {"doc_id": batch.column("doc_id")}
        for (name, t, _), row in zip(SCORES, values):
            # NaN means "not computed" (family disabled) or "nothing to divide by": both null.
            cols[name] = pa.array(row, pa.float64(), mask=np.isnan(row)).cast(t)
        cols["quality_pass"] = pa.array(passed)
        cols["quality_failed"] = pa.array(failed, pa.list_(pa.string()))
        return pa.table(cols, schema=self.schema())
