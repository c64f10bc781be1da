"""The complement rule: tonight's tags in, one keep/prune decision per document out.

The default rule, as the pruning benchmark supports it (``docs/pruning.md``)::

    keep if novelty is high and the document is not a duplicate, risk <= 0.69 and it holds no
    eval-set text; else queue for pruning

(Before issue 21 it was "(novelty high or utility high) and not a duplicate and risk <= 0.69".
``utility`` left the default: on a CPU the scoring LM rates 32 documents a night, and leaving it
out moved no metric of the benchmark; ``contaminated`` joined it: it took the planted eval-set
text out of the training mixture at no cost in held-out loss beyond the spread; ``risk`` weighs 2,
like ``contaminated``, so that both go before duplicates when a cap binds. Add ``utility`` back
with ``keep_if_any = ["novelty", "utility"]`` where every document is scored, e.g. on a GPU.)

It is built from *terms*. A term reads one column (``column``) of one tagger or stage output
(``output``) and fires when ``column <op> threshold`` holds. Terms play one of two roles:

- ``keep_if_any``: value terms. A document has value if any of them fires. When at least one
  of them could be evaluated for a document and none fires, each evaluated one records its
  miss reason (``low_novelty``, ``low_utility``) and the document becomes a prune candidate.
- ``prune_if_any``: each firing term records its reason (``near_dup_of:<id>``, ``risk>0.69``)
  and makes the document a candidate.

Thresholds are numbers, booleans, or ``"qP"``: the ``P`` quantile of tonight's non-null values
of that column (``"q0.2"``: the 20th percentile), resolved per night and reported.

A term whose column is absent (its tagger is not configured) is skipped and every decision
records ``no_<term>_tag``; with ``missing = "error"`` the stage fails instead, naming what to
enable. A document with strata (see ``curation.protect``) is never pruned: each reason that
fired is kept and paired with ``protected:<strata> overrode <reason>``. A document the user
restored before (``glia undo``) is not queued again for a reason of the same kind unless
``requeue_restored`` is set (``restored overrode <reason>``).

Over-pruning guard: at most ``cap.night`` of tonight's documents and ``cap.source`` of each
source's documents tonight are pruned. Candidates are taken in ascending ``priority`` (higher
= more worth keeping; ties by ``doc_id``): beyond the cap, the candidates most worth keeping
stay (``held_by_cap:night`` / ``held_by_cap:source``) and the report counts them.

``priority`` = the best percentile rank (within tonight) over the value terms (0.5 when none
could be evaluated) minus the ``weight`` of every prune term that fired.

:func:`decide` is a pure, vectorised function of an Arrow table; it does not depend on row
order (quantiles, ranks and tie-breaks are order-free).
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from glia.core.params import ConfigError

ORDER_OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
EQ_OPS = {"==": operator.eq, "!=": operator.ne}
NULL_OPS = ("is_null", "not_null")
OPS = (*ORDER_OPS, *EQ_OPS, *NULL_OPS)

KEEP, PRUNE = "keep", "prune"

DECISION_SCHEMA = pa.schema([
    ("doc_id", pa.string()),
    ("action", pa.string()),
    ("reasons", pa.list_(pa.string())),
    ("protected", pa.bool_()),
    ("strata", pa.list_(pa.string())),
    ("priority", pa.float32()),
])

# What to enable when a term's output is missing, for the error and the docs.
ENABLE_HINTS = {
    "novelty": "the `embedding` tagger and the `novelty` stage",
    "lm": "the `lm` tagger",
    "surprise": "the `lm` tagger and the `surprise` stage",
    "risk": "the `risk` tagger",
    "quality": "the `quality` tagger",
    "staleness": "the `staleness` tagger",
    "semantic_dup": "the `embedding` tagger and the `semantic_dedup` stage",
    "lang": "the `lang` tagger with `[taggers.lang] expected = [...]`",
    "exact_dup": "the `dedup` stage (taggers `exact` and `minhash`)",
    "near_dup": "the `dedup` stage (taggers `exact` and `minhash`)",
    "decontaminate": "the `decontaminate` tagger (with [taggers.decontaminate.sets.<name>])",
    "pii": "the `pii` tagger",
}

# Built-in terms; a rules file may override any key of these or add new terms.
DEFAULT_TERMS: dict[str, dict[str, Any]] = {
    "novelty": {"output": "novelty", "column": "novelty", "op": ">=", "threshold": "q0.2", "reason": "low_novelty"},
    "utility": {"output": "lm", "column": "utility", "op": ">=", "threshold": "q0.2", "reason": "low_utility"},
    "exact_dup": {"output": "exact_dup", "column": "exact_dup_of", "op": "not_null", "reason": "exact_dup_of:{value}",
                  "weight": 1.0},
    "near_dup": {"output": "near_dup", "column": "near_dup_of", "op": "not_null", "reason": "near_dup_of:{value}",
                 "weight": 0.5},
    # 0.69 is the default risk model's own flag threshold (taggers.risk.default_threshold(): the mean
    # of fine-tuned MiniLM and the LSTM, chosen on clean prose, models/data/risk-minilm): the
    # built-in rule prunes what the default tagger flags (tests/test_risk_default.py checks they
    # agree). It was 0.5 for the LSTM alone, and 0.8 for the n-gram head before that.
    # Weight 2, as contaminated's: when a cap binds, what the risk model flags goes before duplicates
    # (at 1.0 the default kept 88 % of the pruning benchmark's toxic pages under its caps; docs/pruning.md).
    "risk": {"output": "risk", "column": "risk", "op": ">", "threshold": 0.69, "reason": "risk>{threshold}", "weight": 2.0},
    "contaminated": {"output": "decontaminate", "column": "contaminated_by", "op": "not_null",
                     "reason": "contaminated:{value}", "weight": 2.0},  # first to go when a cap binds
    # Available, not in the default rule (docs/pruning.md measures each): add them to prune_if_any.
    "quality": {"output": "quality", "column": "quality_pass", "op": "==", "threshold": False, "reason": "quality_failed",
                "weight": 0.5},
    "stale": {"output": "staleness", "column": "stale", "op": "==", "threshold": True, "reason": "stale", "weight": 0.25},
    "surprise": {"output": "surprise", "column": "surprise", "op": ">=", "threshold": "q0.2", "reason": "low_surprise"},
    "pii": {"output": "pii", "column": "pii_count", "op": ">", "threshold": 0, "reason": "pii", "weight": 0.25},
    "semantic_dup": {"output": "semantic_dup", "column": "semantic_dup_of", "op": "not_null",
                     "reason": "semantic_dup_of:{value}", "weight": 0.5},
    "lang_not_in": {"output": "lang", "column": "lang_unexpected", "op": "==", "threshold": True,
                    "reason": "lang_not_in_expected", "weight": 0.5},
}
# The default lists (docs/pruning.md: every built-in term alone, the default minus each, the
# default plus each other built-in term, at equal training tokens over 3 seeds).
DEFAULT_KEEP = ("novelty",)
DEFAULT_PRUNE = ("exact_dup", "near_dup", "risk", "contaminated")

_QUANTILE = re.compile(r"^q(0(\.\d+)?|1(\.0+)?)$")
_KEY = re.compile(r"[A-Za-z0-9_]+")


class RuleError(ConfigError):
    """The rule configuration is invalid; the message names the key to fix."""


def check_keys(raw: Mapping[str, Any], known: Iterable[str], where: str) -> None:
    """Refuse keys of a config table ``where`` that are not ``known``, naming both."""
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise RuleError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def fraction(raw: Mapping[str, Any], key: str, default: float, where: str) -> float:
    """``raw[key]`` (or ``default``) as a float in [0, 1]; anything else names ``where.key``."""
    v = raw.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
        raise RuleError(f"{where}.{key}: expected a fraction in [0, 1], got {v!r}")
    return float(v)


def reason_key(reason: str) -> str:
    """The kind of a reason: its leading identifier (``near_dup_of:x`` -> ``near_dup_of``,
    ``risk>0.69`` -> ``risk``). ``glia undo --reason`` and the restore memory match on it."""
    m = _KEY.match(reason)
    return m.group(0) if m else reason


@dataclass(frozen=True)
class Threshold:
    """An absolute value, or the ``quantile`` of tonight's values when ``quantile`` is set."""

    value: float | bool | str | None = None
    quantile: float | None = None

    @classmethod
    def parse(cls, raw: Any, where: str) -> Threshold:
        if raw is None:
            return cls()
        if isinstance(raw, bool):
            return cls(value=raw)
        if isinstance(raw, (int, float)):
            if not math.isfinite(raw):
                raise RuleError(f"{where}: threshold must be finite, got {raw!r}")
            return cls(value=float(raw))
        if isinstance(raw, str):
            if _QUANTILE.match(raw):
                return cls(quantile=float(raw[1:]))
            if raw.startswith("q"):
                raise RuleError(f"{where}: {raw!r} is not a quantile; write e.g. \"q0.2\" (0 <= P <= 1)")
            return cls(value=raw)
        raise RuleError(f"{where}: threshold must be a number, a boolean, a string or \"qP\", got {raw!r}")

    def to_config(self) -> float | bool | str | None:
        """The threshold as written in the rules file: the value, or ``"qP"``."""
        return self.value if self.quantile is None else f"q{self.quantile:g}"

    def text(self, resolved: Any) -> str:
        """How the threshold appears in reasons: ``0.8`` or ``q0.2=0.413``."""
        shown = _fmt(resolved)
        return shown if self.quantile is None else f"q{self.quantile:g}={shown}"


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


@dataclass(frozen=True)
class Term:
    """One predicate over one column of one output."""

    name: str
    output: str
    column: str
    op: str
    threshold: Threshold
    reason: str
    weight: float = 1.0
    missing: str = "skip"  # "skip" | "error"

    @property
    def key(self) -> str:
        """The kind of the reasons this term records (see :func:`reason_key`)."""
        return reason_key(self.reason)

    @classmethod
    def from_config(cls, name: str, raw: Mapping[str, Any], missing: str, where: str) -> Term:
        check_keys(raw, ("output", "column", "op", "threshold", "reason", "weight", "missing"), where)
        for key in ("output", "column", "op"):
            if not isinstance(raw.get(key), str) or not raw.get(key):
                raise RuleError(f"{where}.{key}: required (a non-empty string)")
        op = raw["op"]
        if op not in OPS:
            raise RuleError(f"{where}.op: {op!r} is not one of {', '.join(OPS)}")
        thr = Threshold.parse(raw.get("threshold"), f"{where}.threshold")
        if op in ORDER_OPS and (thr.quantile is None and not isinstance(thr.value, float)):
            raise RuleError(f"{where}.threshold: {op} needs a number or \"qP\", got {raw.get('threshold')!r}")
        if op in EQ_OPS and (thr.quantile is not None or thr.value is None):
            raise RuleError(f"{where}.threshold: {op} needs a literal value (number, boolean or string)")
        reason = raw.get("reason", f"{name}")
        if not isinstance(reason, str) or not reason:
            raise RuleError(f"{where}.reason: expected a non-empty string")
        try:
            reason.format(threshold="", column="", op="", value="")
        except (KeyError, IndexError, ValueError) as exc:
            raise RuleError(f"{where}.reason: bad template {reason!r} ({exc}); fields: threshold, column, op, value") from None
        weight = raw.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise RuleError(f"{where}.weight: expected a number >= 0, got {weight!r}")
        term_missing = raw.get("missing", missing)
        if term_missing not in ("skip", "error"):
            raise RuleError(f"{where}.missing: expected \"skip\" or \"error\", got {term_missing!r}")
        return cls(name, raw["output"], raw["column"], op, thr, reason, float(weight), term_missing)


@dataclass(frozen=True)
class Cap:
    """Over-pruning guard: the largest share of tonight's documents (``night``) and of each
    source's documents tonight (``source``) that may be pruned. 1.0 switches a cap off."""

    night: float = 0.2
    source: float = 0.5

    @classmethod
    def from_config(cls, raw: Mapping[str, Any], where: str) -> Cap:
        check_keys(raw, ("night", "source"), where)
        return cls(**{key: fraction(raw, key, getattr(cls(), key), where) for key in ("night", "source")})


@dataclass(frozen=True)
class Rules:
    """A validated rule: the terms and their roles, the cap, and the restore policy."""

    keep_if_any: tuple[str, ...] = DEFAULT_KEEP
    prune_if_any: tuple[str, ...] = DEFAULT_PRUNE
    terms: Mapping[str, Term] = field(default_factory=dict)
    cap: Cap = field(default_factory=Cap)
    requeue_restored: bool = False

    @classmethod
    def from_config(cls, raw: Mapping[str, Any] | None = None, where: str = "[stages.decide]") -> Rules:
        """Build from the rule keys of ``[stages.decide]``: ``keep_if_any``, ``prune_if_any``,
        ``terms``, ``missing``, ``cap``, ``requeue_restored`` (others are ignored here)."""
        raw = dict(raw or {})
        missing = raw.get("missing", "skip")
        if missing not in ("skip", "error"):
            raise RuleError(f"{where}.missing: expected \"skip\" or \"error\", got {missing!r}")
        user_terms = raw.get("terms", {})
        if not isinstance(user_terms, Mapping):
            raise RuleError(f"{where}.terms: expected a table of terms ([stages.decide.terms.<name>])")
        merged: dict[str, dict[str, Any]] = {k: dict(v) for k, v in DEFAULT_TERMS.items()}
        for name, t in user_terms.items():
            if not isinstance(t, Mapping):
                raise RuleError(f"{where}.terms.{name}: expected a table")
            merged[name] = {**merged.get(name, {}), **t}
        roles = {}
        for role, default in (("keep_if_any", DEFAULT_KEEP), ("prune_if_any", DEFAULT_PRUNE)):
            names = raw.get(role, list(default))
            if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
                raise RuleError(f"{where}.{role}: expected a list of term names")
            for n in names:
                if n not in merged:
                    raise RuleError(f"{where}.{role}: unknown term {n!r}; known: {', '.join(sorted(merged))} "
                                    f"(define new ones under [stages.decide.terms.{n}])")
            roles[role] = tuple(dict.fromkeys(names))
        both = set(roles["keep_if_any"]) & set(roles["prune_if_any"])
        if both:
            raise RuleError(f"{where}: term(s) {', '.join(sorted(both))} are in both keep_if_any and prune_if_any")
        used = [*roles["keep_if_any"], *roles["prune_if_any"]]
        terms = {n: Term.from_config(n, merged[n], missing, f"{where}.terms.{n}") for n in used}
        by_column: dict[str, str] = {}
        for t in terms.values():
            if by_column.setdefault(t.column, t.output) != t.output:
                raise RuleError(f"{where}.terms.{t.name}: column {t.column!r} is read from two outputs "
                                f"({by_column[t.column]!r} and {t.output!r}); column names must be unique")
        requeue = raw.get("requeue_restored", False)
        if not isinstance(requeue, bool):
            raise RuleError(f"{where}.requeue_restored: expected true or false, got {requeue!r}")
        cap = Cap.from_config(raw.get("cap", {}), f"{where}.cap")
        return cls(roles["keep_if_any"], roles["prune_if_any"], terms, cap, requeue)

    def to_dict(self) -> dict[str, Any]:
        """The rule as plain data (recorded with the run)."""
        return {
            "keep_if_any": list(self.keep_if_any), "prune_if_any": list(self.prune_if_any),
            "terms": {n: {"output": t.output, "column": t.column, "op": t.op, "reason": t.reason, "weight": t.weight,
                          "threshold": t.threshold.to_config(),
                          "missing": t.missing}
                      for n, t in self.terms.items()},
            "cap": {"night": self.cap.night, "source": self.cap.source}, "requeue_restored": self.requeue_restored,
        }


class MissingTagError(ValueError):
    """A term with ``missing = "error"`` found no column to read."""


@dataclass
class Report:
    """What the rule did tonight: counts, resolved thresholds, skipped terms."""

    n_docs: int = 0
    n_candidates: int = 0
    n_pruned: int = 0
    n_protected: int = 0
    n_overridden: int = 0  # protected documents that had at least one prune reason
    n_held_night: int = 0
    n_held_source: int = 0
    n_suppressed: int = 0  # candidates only because of reasons the user restored before
    thresholds: dict[str, Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # terms without a column tonight
    fired: dict[str, int] = field(default_factory=dict)  # term -> documents it fired for

    @property
    def n_held(self) -> int:
        return self.n_held_night + self.n_held_source


@dataclass
class Decided:
    table: pa.Table  # DECISION_SCHEMA + ``prune_reasons`` (fired, counted reasons only)
    report: Report


# -- evaluation -----------------------------------------------------------------------------


def _numeric(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Float64 values with NaN for nulls (booleans become 0/1)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_boolean(arr.type) or pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type) \
            or pa.types.is_decimal(arr.type):
        return pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64, copy=True)
    raise TypeError(f"column of type {arr.type} is not numeric")


@dataclass
class _Eval:
    fires: np.ndarray  # bool
    known: np.ndarray  # bool: the value could be judged
    score: np.ndarray | None  # value terms: 0..1 goodness for the priority (NaN when unknown)
    resolved: Any
    values: pa.Array


def _evaluate(term: Term, col: pa.ChunkedArray) -> _Eval:
    arr = col.combine_chunks()
    n = len(arr)
    valid = pc.is_valid(arr).to_numpy(zero_copy_only=False)
    if term.op in NULL_OPS:
        fires = ~valid if term.op == "is_null" else valid.copy()
        return _Eval(fires, np.ones(n, bool), fires.astype(np.float64), None, arr)
    if term.op in EQ_OPS:
        want = term.threshold.value
        if isinstance(want, bool) or isinstance(want, str):
            eq = pc.equal(arr, pa.scalar(want)).to_numpy(zero_copy_only=False)
            eq = np.where(valid, eq, False).astype(bool)
        else:
            x = _numeric(arr)
            eq = np.isclose(x, float(want)) & valid
        fires = (eq if term.op == "==" else ~eq) & valid
        return _Eval(fires, valid, np.where(valid, fires, np.nan), want, arr)
    x = _numeric(arr)
    known = ~np.isnan(x)
    if term.threshold.quantile is not None:
        thr = float(np.quantile(x[known], term.threshold.quantile)) if known.any() else math.nan
    else:
        thr = float(term.threshold.value)
    with np.errstate(invalid="ignore"):
        fires = ORDER_OPS[term.op](x, thr) & known
    score = np.full(n, np.nan)
    if known.any():
        r = (average_ranks(x[known]) - 0.5) / known.sum()
        score[known] = r if term.op in (">=", ">") else 1.0 - r
    return _Eval(fires, known, score, thr, arr)


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank (``scipy.stats.rankdata(method="average")``,
    whose import alone takes seconds)."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(xs)]
    ranks = np.empty(len(x))
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def _reason_strings(term: Term, ev: _Eval, mask: np.ndarray) -> pa.Array:
    """The reason text for the rows in ``mask`` (only those rows, in order)."""
    tmpl = term.reason.format(threshold=term.threshold.text(ev.resolved) if ev.resolved is not None else "",
                              column=term.column, op=term.op, value="\x00")
    prefix, has_value, suffix = tmpl.partition("\x00")
    count = int(mask.sum())
    if not has_value:
        return pa.repeat(pa.scalar(prefix), count)
    vals = ev.values.filter(pa.array(mask))
    if pa.types.is_floating(vals.type):
        vals = pc.round(vals, 4)
    vals = pc.fill_null(pc.cast(vals, pa.string()), "null")
    return pc.binary_join_element_wise(prefix, vals, suffix, "")


def _lists(n: int, parts: Sequence[tuple[pa.Array, np.ndarray]]) -> pa.ListArray:
    """Row-wise lists from ``parts``: each is (values for the rows where mask is true, mask).
    Row ``i`` gets the values of every part whose mask is true at ``i``, in part order."""
    if not parts:
        return pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, np.int32)), pa.array([], pa.string()))
    masks = np.stack([m for _, m in parts], axis=1)
    counts = masks.sum(axis=1)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    rows, cols = np.nonzero(masks)  # row-major: row i's parts in part order
    starts = np.concatenate([[0], np.cumsum(masks.sum(axis=0))])[:-1]
    within = np.cumsum(masks, axis=0) - 1
    idx = starts[cols] + within[rows, cols]
    values = pa.concat_arrays([v.cast(pa.string()) for v, _ in parts])
    return pa.ListArray.from_arrays(pa.array(offsets), values.take(pa.array(idx, pa.int64())))


def _list_contains(lists: pa.ChunkedArray | pa.Array, wanted: Sequence[str], n: int) -> np.ndarray:
    """Row mask: the row's list contains any of ``wanted``."""
    arr = lists.combine_chunks() if isinstance(lists, pa.ChunkedArray) else lists
    flat = pc.list_flatten(arr)
    parents = pc.list_parent_indices(arr).to_numpy(zero_copy_only=False)
    hit = pc.is_in(flat, value_set=pa.array(list(wanted), pa.string())).to_numpy(zero_copy_only=False)
    out = np.zeros(n, bool)
    out[parents[hit.astype(bool)]] = True
    return out


def _caps(eligible: np.ndarray, priority: np.ndarray, id_rank: np.ndarray, source_codes: np.ndarray,
          source_sizes: np.ndarray, cap: Cap, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy cap over candidates in (priority, doc_id) order: returns pruned, held_night,
    held_source masks. Equivalent to walking the order and accepting a candidate while both
    its source's count and the night's count are under their caps."""
    pruned = np.zeros(n, bool)
    held_src = np.zeros(n, bool)
    held_night = np.zeros(n, bool)
    cand = np.flatnonzero(eligible)
    if cand.size == 0:
        return pruned, held_night, held_src
    order = cand[np.lexsort((id_rank[cand], priority[cand]))]
    night_cap = math.floor(cap.night * n + 1e-9)
    src_cap = np.floor(cap.source * source_sizes + 1e-9).astype(np.int64)
    # rank of each candidate within its source, in the global order
    src = source_codes[order]
    by_src = np.lexsort((np.arange(order.size), src))
    sorted_src = src[by_src]
    group_start = np.searchsorted(sorted_src, sorted_src, side="left")
    rank_in_src = np.empty(order.size, np.int64)
    rank_in_src[by_src] = np.arange(order.size) - group_start
    ok_src = rank_in_src < src_cap[src]
    pos_night = np.cumsum(ok_src) - 1
    ok = ok_src & (pos_night < night_cap)
    pruned[order[ok]] = True
    held_src[order[~ok_src]] = True
    held_night[order[ok_src & ~ok]] = True
    return pruned, held_night, held_src


def decide(tags: pa.Table, rules: Rules) -> Decided:
    """Decide keep or prune for every row of ``tags``.

    ``tags`` has ``doc_id`` and, optionally, ``source`` (for the per-source cap), ``strata``
    (list<string>: a non-empty list protects the document), ``restored`` (list<string>:
    reason kinds the user restored this document from) and the columns the terms read.
    Raises :class:`MissingTagError` for an absent column of a term with ``missing = "error"``.
    """
    n = tags.num_rows
    rep = Report(n_docs=n)
    # Ties in priority are broken by doc_id: its rank, so the cap's order is a numeric sort.
    id_rank = pc.rank(tags["doc_id"].combine_chunks(), sort_keys="ascending", tiebreaker="first") \
        .to_numpy(zero_copy_only=False).astype(np.int64) if n else np.zeros(0, np.int64)
    evals = _evaluate_terms(tags, rules, rep)
    keep_terms = [t for t in rules.keep_if_any if t in evals]
    prune_terms = [t for t in rules.prune_if_any if t in evals]
    low, value = _value(evals, keep_terms, n)
    fired = _fire(tags, rules, evals, keep_terms, prune_terms, low, n, rep)
    strata, protected = _protection(tags, n)
    weights = np.array([rules.terms[t].weight for t in prune_terms], np.float64)
    penalty = fired.counted[:, len(keep_terms):].astype(np.float64) @ weights if prune_terms else np.zeros(n)
    priority = (value - penalty).astype(np.float32)
    codes, sizes = _source_codes(tags, n)
    pruned, held_night, held_src = _caps(fired.candidate & ~protected, priority.astype(np.float64), id_rank, codes,
                                         sizes, rules.cap, n)
    reasons = _reasons(fired, rep.skipped, strata, protected, held_night, held_src, n)
    prune_reasons = _lists(n, [(fired.texts[j].filter(pa.array(fired.counted[fired.mask[:, j], j])), fired.counted[:, j])
                               for j in range(len(fired.terms))])
    rep.n_candidates = int(fired.candidate.sum())
    rep.n_pruned = int(pruned.sum())
    rep.n_protected = int(protected.sum())
    rep.n_overridden = int((fired.candidate & protected).sum())
    rep.n_held_night = int(held_night.sum())
    rep.n_held_source = int(held_src.sum())
    table = pa.table({
        "doc_id": tags["doc_id"].combine_chunks().cast(pa.string()),
        "action": pa.array(np.where(pruned, PRUNE, KEEP).astype(object), pa.string()),
        "reasons": reasons,
        "protected": pa.array(protected),
        "strata": strata,
        "priority": pa.array(priority, pa.float32()),
        "prune_reasons": prune_reasons,
    })
    return Decided(table, rep)


def _evaluate_terms(tags: pa.Table, rules: Rules, rep: Report) -> dict[str, _Eval]:
    """Every keep and prune term whose column is present, evaluated; the others noted as
    skipped in ``rep`` (or, with ``missing = "error"``, a :class:`MissingTagError`)."""
    evals: dict[str, _Eval] = {}
    for name in (*rules.keep_if_any, *rules.prune_if_any):
        term = rules.terms[name]
        if term.column not in tags.column_names:
            if term.missing == "error":
                hint = ENABLE_HINTS.get(term.output, f"the tagger or stage that writes {term.output!r}")
                raise MissingTagError(f"rule term {name!r} reads column {term.column!r} of {term.output!r}, which did "
                                      f"not run tonight: enable {hint}, or set missing = \"skip\"")
            rep.skipped.append(name)
            continue
        try:
            evals[name] = _evaluate(term, tags[term.column])
        except (TypeError, pa.ArrowException) as exc:
            raise RuleError(f"rule term {name!r}: column {term.column!r} of {term.output!r} is "
                            f"{tags.schema.field(term.column).type}, which {term.op} cannot compare ({exc})") from None
        rep.thresholds[name] = evals[name].resolved
    return evals


def _value(evals: dict[str, _Eval], keep_terms: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Which documents no keep term fires for (though one could judge them: ``low``), and each
    document's value, its best keep-term score (0.5 where none scores it)."""
    if not keep_terms:
        return np.zeros(n, bool), np.full(n, 0.5)
    known_any = np.any([evals[t].known for t in keep_terms], axis=0)
    has_value = np.any([evals[t].fires for t in keep_terms], axis=0)
    scores = np.stack([evals[t].score for t in keep_terms], axis=1)
    with np.errstate(all="ignore"):
        value = np.where(np.isnan(scores).all(axis=1), 0.5, np.nanmax(np.where(np.isnan(scores), -np.inf, scores), axis=1))
    return known_any & ~has_value, value


@dataclass
class _Fired:
    """The reasons that fired, one column per term (keep terms, then prune terms)."""

    terms: list[str]
    mask: np.ndarray  # (n, terms) bool: the term fired (a keep term: its miss reason on a low document)
    texts: list[pa.Array]  # per term: the reason text of the rows where it fired
    suppressed: np.ndarray  # (n, terms) bool: fired, but the user restored the document from that reason
    counted: np.ndarray  # mask & ~suppressed
    candidate: np.ndarray  # (n,) bool: any counted reason


def _fire(tags: pa.Table, rules: Rules, evals: dict[str, _Eval], keep_terms: list[str], prune_terms: list[str],
          low: np.ndarray, n: int, rep: Report) -> _Fired:
    """Fired reasons (keep terms fire their miss reason on low documents), less those the user
    restored the document from (unless ``requeue_restored``); counts into ``rep``."""
    fired_terms = [*keep_terms, *prune_terms]
    fired = [evals[t].known & ~evals[t].fires & low for t in keep_terms] + [evals[t].fires for t in prune_terms]
    fired_m = np.stack(fired, axis=1) if fired else np.zeros((n, 0), bool)
    texts = [_reason_strings(rules.terms[t], evals[t], fired_m[:, j]) for j, t in enumerate(fired_terms)]
    if "restored" in tags.column_names and not rules.requeue_restored and fired_terms:
        rest = tags["restored"]
        suppressed = np.stack([_list_contains(rest, [rules.terms[t].key, "*"], n) for t in fired_terms], axis=1) & fired_m
    else:
        suppressed = np.zeros_like(fired_m)
    counted = fired_m & ~suppressed
    candidate = counted.any(axis=1) if fired_terms else np.zeros(n, bool)
    rep.n_suppressed = int((fired_m.any(axis=1) & ~candidate).sum()) if fired_terms else 0
    rep.fired = {t: int(fired_m[:, j].sum()) for j, t in enumerate(fired_terms)}
    return _Fired(fired_terms, fired_m, texts, suppressed, counted, candidate)


def _protection(tags: pa.Table, n: int) -> tuple[pa.ListArray, np.ndarray]:
    """Each document's protected strata (an empty list when none) and whether it has any."""
    if "strata" in tags.column_names:
        strata = tags["strata"].combine_chunks().cast(pa.list_(pa.string()))
        strata = pc.fill_null(strata, pa.scalar([], pa.list_(pa.string())))
        return strata, (pc.list_value_length(strata).to_numpy(zero_copy_only=False) > 0)
    return pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, np.int32)), pa.array([], pa.string())), np.zeros(n, bool)


def _source_codes(tags: pa.Table, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Each document's source as a code, and each source's size (one source without ``source``)."""
    if "source" not in tags.column_names:
        return np.zeros(n, np.int64), np.array([n])
    src = pc.fill_null(tags["source"].combine_chunks().cast(pa.string()), "")
    enc = src.dictionary_encode()
    codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, np.bincount(codes, minlength=len(enc.dictionary))


def _reasons(fired: _Fired, skipped: list[str], strata: pa.ListArray, protected: np.ndarray,
             held_night: np.ndarray, held_src: np.ndarray, n: int) -> pa.ListArray:
    """Each document's reasons: notes, fired reasons, protection and restore overrides, cap holds."""
    texts, fired_m, counted = fired.texts, fired.mask, fired.counted
    parts: list[tuple[pa.Array, np.ndarray]] = []
    for name in skipped:
        parts.append((pa.repeat(pa.scalar(f"no_{name}_tag"), n), np.ones(n, bool)))
    parts += [(texts[j], fired_m[:, j]) for j in range(len(fired.terms))]
    if fired.terms and protected.any():
        joined = pc.binary_join(strata, ",")
        for j in range(len(fired.terms)):
            mask = counted[:, j] & protected
            over = pc.binary_join_element_wise("protected:", joined.filter(pa.array(mask)), " overrode ",
                                               texts[j].filter(pa.array(mask[fired_m[:, j]])), "")
            parts.append((over, mask))
    for j in range(len(fired.terms)):
        mask = fired.suppressed[:, j]
        if mask.any():
            parts.append((pc.binary_join_element_wise("restored overrode ", texts[j].filter(pa.array(mask[fired_m[:, j]])),
                                                      ""), mask))
    parts.append((pa.repeat(pa.scalar("held_by_cap:source"), int(held_src.sum())), held_src))
    parts.append((pa.repeat(pa.scalar("held_by_cap:night"), int(held_night.sum())), held_night))
    return _lists(n, parts)
