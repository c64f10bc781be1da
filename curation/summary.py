"""A night's summary: counts per source, per tag and per decision, and time per step.

Two halves, both plain SQL:

- :func:`tonight_metrics` runs *before* the commit, over the run's own Parquet attribute files
  (an in-memory DuckDB, so the catalog is not opened twice), and returns ``run_metrics`` rows
  that ``Catalog.commit_run`` writes in the run's one transaction, beside the stage counts
  (``<stage>.<count>``) and step times (``seconds.<step>``) that are already there.
- :func:`read_summary` reads a committed run's summary back from the catalog (read-only) and
  :func:`to_markdown` renders it for the Prefect run artifact and for people.

Summary metric names (``run_metrics.metric``); ``@<source>`` restricts one to a source:

==========================================  =================================================
``summary.docs[@src]``                      tonight's accepted documents
``summary.tag.<column>.true[@src]``         documents whose boolean tag is true
``summary.tag.<column>.count[@src]``        documents with a non-null value (ids, text)
``summary.tag.<column>.mean[@src]``         mean of a numeric tag (finite values)
``summary.tag.<column>.value:<v>[@src]``    documents per value of a categorical tag
``summary.tag.<column>.item:<k>[@src]``     documents per reason kind of a list tag
``summary.decision.<action>[@src]``         documents per decision (``keep``, ``prune``)
==========================================  =================================================
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from glia.storage.sql import identifier, parquet_scan, registered
from glia.storage.views import DOCUMENTS, ViewSource

if TYPE_CHECKING:
    from glia.storage.catalog import RunRecord

PREFIX = "summary."
# A string tag with at most this many distinct values tonight is counted per value.
MAX_CATEGORIES = 20
# The decision column of the decide stage's output (curation.rules.DECISION_SCHEMA).
DECISION_COLUMN = "action"
NO_SOURCE = "(none)"


def _name(base: str, source: str | None) -> str:
    return base if source is None else f"{base}@{source}"


def _grouped(con: duckdb.DuckDBPyConnection, select: str, from_: str, extra_group: str = "") -> list[tuple]:
    """Rows of ``select`` per source and over all sources (source NULL), optionally also by
    ``extra_group``: one scan with GROUPING SETS."""
    if extra_group:
        sets = f"GROUPING SETS ((d.source, {extra_group}), ({extra_group}))"
        return con.execute(f"SELECT d.source, {extra_group}, {select} FROM {from_} GROUP BY {sets}").fetchall()
    return con.execute(f"SELECT d.source, {select} FROM {from_} GROUP BY GROUPING SETS ((d.source), ())").fetchall()


def _kind(typ: pa.DataType) -> str:
    """How a tag column is summarised: ``true`` (booleans), ``mean`` (numbers), ``strings``
    (per value when categorical, else a count), ``items`` (lists of reasons), ``skip`` (64-bit
    hashes: an average says nothing) or ``count`` (timestamps, structs, binary: presence)."""
    if pa.types.is_boolean(typ):
        return "true"
    if pa.types.is_uint64(typ):
        return "skip"
    if pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_decimal(typ):
        return "mean"
    if pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_dictionary(typ):
        return "strings"
    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        value = typ.value_type
        return "items" if pa.types.is_string(value) or pa.types.is_large_string(value) else "skip"
    return "count"


def _columns_metrics(con: duckdb.DuckDBPyConnection, from_: str, columns: Sequence[tuple[str, pa.DataType]]) -> dict[str, float]:
    """Summary metrics of one tagger's tag columns over the rows of ``from_`` (which joins ``d``).

    Every per-source aggregate of the tagger is one grouped scan, and the distinct counts of
    its string columns one more: a query per column cost half of a dedup night's summary."""
    out: dict[str, float] = {}
    kinds = [(col, _kind(typ)) for col, typ in columns]
    strings = [col for col, kind in kinds if kind == "strings"]
    categorical = set()
    if strings:
        row = con.execute("SELECT " + ", ".join(f"count(DISTINCT t.{identifier(c)}), count(t.{identifier(c)})"
                                                for c in strings) + f" FROM {from_}").fetchone()
        for i, col in enumerate(strings):
            # Categories repeat (keep/prune, a language); ids (exact_dup_of) mostly do not.
            n_distinct, n_values = row[2 * i], row[2 * i + 1]
            if 0 < n_distinct <= MAX_CATEGORIES and n_values >= 3 * n_distinct:
                categorical.add(col)
    aggregates: list[tuple[str, str, str]] = []  # (column, metric, SQL aggregate)
    for col, kind in kinds:
        c = f"t.{identifier(col)}"
        if kind == "true":
            aggregates.append((col, "true", f"count_if(coalesce({c}, false))"))
        elif kind == "mean":
            # fsum (Kahan) and 12 significant digits: a parallel scan adds in any order, and a
            # rerun after a crash must record the same summary as an uninterrupted run.
            aggregates.append((col, "mean", f"fsum(CASE WHEN isfinite({c}::DOUBLE) THEN {c}::DOUBLE END)"
                                            f" / count(CASE WHEN isfinite({c}::DOUBLE) THEN 1 END)"))
        elif kind == "count" or (kind == "strings" and col not in categorical):
            aggregates.append((col, "count", f"count({c})"))
    if aggregates:
        for src, *values in _grouped(con, ", ".join(sql for _, _, sql in aggregates), from_):
            for (col, metric, _), value in zip(aggregates, values):
                if metric == "mean":
                    if value is not None:
                        out[_name(f"{PREFIX}tag.{col}.mean", src)] = float(f"{float(value):.12g}")
                else:
                    out[_name(f"{PREFIX}tag.{col}.{metric}", src)] = float(value)
    for col, kind in kinds:
        c = f"t.{identifier(col)}"
        if col in categorical:
            for src, value, n in _grouped(con, "count(*)", from_ + f" WHERE {c} IS NOT NULL", extra_group=c):
                out[_name(f"{PREFIX}tag.{col}.value:{value}", src)] = float(n)
        elif kind == "items":
            out.update(_item_metrics(con, from_, col))
    return out


def _item_metrics(con: duckdb.DuckDBPyConnection, from_: str, col: str) -> dict[str, float]:
    """Documents per reason kind of a list-of-strings tag column."""
    out: dict[str, float] = {}
    c = f"t.{identifier(col)}"
    # A reason like "near_dup_of:<id>" or "risk>0.8" is counted by its kind (the leading word),
    # once per document, so ids and thresholds do not make every reason its own row.
    items = (f"(SELECT d.source, t.doc_id, regexp_extract(x.k, '^[A-Za-z_]+') AS k FROM {from_}, "
             f"unnest({c}) AS x(k)) AS i")
    n_keys = con.execute(f"SELECT count(DISTINCT k) FROM {items}").fetchone()[0]
    if 0 < n_keys <= MAX_CATEGORIES:
        rows = con.execute(
            f"SELECT source, k, count(DISTINCT doc_id) FROM {items} WHERE k <> '' "
            "GROUP BY GROUPING SETS ((source, k), (k))").fetchall()
        for src, key, n in rows:
            out[_name(f"{PREFIX}tag.{col}.item:{key}", src)] = float(n)
    return out


def tonight_metrics(record: RunRecord) -> dict[str, float]:
    """Summary metrics of the run in ``record`` (not yet committed), from its attribute files.

    Covers tonight's accepted documents: their count per source, every public tag column of
    every tagger and stage output that tagged them, and the decision per document if the
    ``decide`` stage ran (its per-document output, or its rows in ``record.writes``).
    """
    docs = [f.path for f in record.tag_files if f.tagger == DOCUMENTS]
    if not docs:
        return {}
    sources: dict[tuple[str, str], ViewSource] = {(s.tagger, s.version): s for s in record.view_sources}
    files: dict[tuple[str, str], list[str]] = {}
    for f in record.tag_files:
        if f.tagger != DOCUMENTS and (f.tagger, f.version) in sources:
            files.setdefault((f.tagger, f.version), []).append(f.path)
    out: dict[str, float] = {}
    con = duckdb.connect()
    try:
        # Tonight's documents and each tagger's columns are read once into memory: every column's
        # metric queries them again (a Parquet scan and decode per query cost a third of a
        # 20k-document dedup night's commit step).
        con.execute(f"CREATE TEMP TABLE _summary_docs AS SELECT doc_id, coalesce(source, '{NO_SOURCE}') AS source "
                    f"FROM {parquet_scan(sorted(docs))}")
        d = "_summary_docs AS d"
        for src, n in _grouped(con, "count(*)", d):
            out[_name(f"{PREFIX}docs", src)] = float(n)
        decided = False
        for key in sorted(files):
            src = sources[key]
            cols = [c for c in src.public_columns if c in src.schema.names]
            if not cols:
                continue
            con.execute(f"CREATE OR REPLACE TEMP TABLE _summary_tags AS SELECT doc_id, "
                        f"{', '.join(identifier(c) for c in cols)} FROM {parquet_scan(sorted(files[key]))}")
            from_ = f"{d} JOIN _summary_tags AS t USING (doc_id)"
            tags = []
            for col in cols:
                typ = src.schema.field(col).type
                if col == DECISION_COLUMN and pa.types.is_string(typ):
                    out.update(_decisions(con, from_, f"t.{identifier(col)}"))
                    decided = True
                else:
                    tags.append((col, typ))
            out.update(_columns_metrics(con, from_, tags))
        if not decided:
            for w in record.writes:
                if {"doc_id", DECISION_COLUMN} <= set(w.rows.column_names):
                    with registered(con, "_decisions_in", w.rows.select(["doc_id", DECISION_COLUMN])):
                        out.update(_decisions(con, f"{d} JOIN _decisions_in AS t USING (doc_id)",
                                              f"t.{identifier(DECISION_COLUMN)}"))
                    break
    finally:
        con.close()
    return out


def _decisions(con: duckdb.DuckDBPyConnection, from_: str, col: str) -> dict[str, float]:
    rows = _grouped(con, "count(*)", from_ + f" WHERE {col} IS NOT NULL", extra_group=col)
    return {_name(f"{PREFIX}decision.{action}", src): float(n) for src, action, n in rows}


# -- reading a committed run back ------------------------------------------------------------


@dataclass
class RunSummary:
    """A committed run's summary, as read from the catalog."""

    run_id: int
    status: str
    started_at: Any
    seconds: float | None
    totals: dict[str, int]                       # docs, exact/near dups, shards, skipped rows
    steps: dict[str, float]                      # step -> seconds
    stage_counts: dict[str, float]               # "<stage>.<count>" -> value
    sources: list[str] = field(default_factory=list)
    docs: dict[str | None, float] = field(default_factory=dict)                        # source|None -> docs
    tags: dict[str, dict[str | None, float]] = field(default_factory=dict)             # "<col>.<stat>" -> ...
    decisions: dict[str, dict[str | None, float]] = field(default_factory=dict)        # action -> source -> n


def split_metric(metric: str, sources: Iterable[str] = ()) -> tuple[str, str | None]:
    """``"summary.tag.x.true@kjv"`` -> ``("summary.tag.x.true", "kjv")``; no source -> None.

    A tag's value may hold ``@`` itself (a model id such as ``lstm-tox_block@452c457c``), so the
    suffix is a source only if it is one of ``sources`` (the longest that fits); without
    ``sources`` the text after the last ``@`` is taken."""
    known = [s for s in sources if metric.endswith(f"@{s}")]
    if known:
        source = max(known, key=len)
        return metric[: -len(source) - 1], source
    if sources:
        return metric, None
    base, at, source = metric.rpartition("@")
    return (base, source) if at else (metric, None)


_DOCS = f"{PREFIX}docs@"


def _step_label(owner: str, taggers: set[str], stages: set[str]) -> str:
    """``lm`` -> ``tagger lm``, ``dedup`` -> ``stage dedup``, by the run's configuration."""
    if owner in stages:
        return f"stage {owner}"
    if owner in taggers:
        return f"tagger {owner}"
    return owner


def read_summary(con: duckdb.DuckDBPyConnection, run_id: int | None = None) -> RunSummary | None:
    """The summary of run ``run_id`` (default: the latest run), or None if there is no such run."""
    if run_id is None:
        row = con.execute("SELECT max(run_id) FROM runs").fetchone()
        if row is None or row[0] is None:
            return None
        run_id = int(row[0])
    run = con.execute(
        "SELECT status, started_at, seconds, n_docs, n_exact_dups, n_near_dups, n_shards_new, n_shards_changed, "
        "n_shards_rejected, n_skipped_rows, config FROM runs WHERE run_id = ?", [run_id]).fetchone()
    if run is None:
        return None
    names = ("docs", "exact_dups", "near_dups", "shards_new", "shards_changed", "shards_rejected", "skipped_rows")
    s = RunSummary(run_id, run[0], run[1], run[2], dict(zip(names, (int(v or 0) for v in run[3:10]))), {}, {})
    config = json.loads(run[10]).get("run", {}) if run[10] else {}
    taggers, stages = set(config.get("taggers", [])), set(config.get("stages", []))
    metrics = con.execute("SELECT metric, value FROM run_metrics WHERE run_id = ? AND value IS NOT NULL "
                          "ORDER BY metric", [run_id]).fetchall()
    # The sources are those documents were counted for: their names end the other metrics.
    sources = {m.removeprefix(_DOCS) for m, _ in metrics if m.startswith(_DOCS)}
    for metric, value in metrics:
        if metric.startswith("seconds."):
            s.steps[metric.removeprefix("seconds.")] = value
        elif not metric.startswith(PREFIX):
            owner, _, what = metric.partition(".")
            if what == "seconds":
                s.steps[_step_label(owner, taggers, stages)] = value
            else:
                s.stage_counts[metric] = value
        else:
            base, source = split_metric(metric, sources)
            kind, _, rest = base.removeprefix(PREFIX).partition(".")
            if kind == "docs":
                s.docs[source] = value
            elif kind == "tag":
                s.tags.setdefault(rest, {})[source] = value
            elif kind == "decision":
                s.decisions.setdefault(rest, {})[source] = value
    s.sources = sorted(sources)
    # Pipeline order: prepare, tag, the taggers, the stages, then anything else.
    order = {"prepare": 0, "tag": 1}
    s.steps = dict(sorted(s.steps.items(), key=lambda kv: order.get(kv[0], 2 if kv[0].startswith("tagger ")
                                                                     else 3 if kv[0].startswith("stage ") else 4)))
    return s


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.3f}"


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    esc = [[str(c).replace("|", "\\|") for c in r] for r in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in esc]
    return "\n".join(lines)


def to_markdown(s: RunSummary, db_path: Path | str | None = None) -> str:
    """The summary as Markdown: the run, time per step, and counts per source, tag and decision."""
    t = s.totals
    parts = [f"# Glia run {s.run_id}: {s.status}", ""]
    if db_path is not None:
        parts += [f"Database: `{db_path}`", ""]
    parts += [table(["documents", "exact dups", "near dups", "new shards", "changed shards", "rejected shards",
                      "skipped rows", "seconds"],
                     [[_fmt(t["docs"]), _fmt(t["exact_dups"]), _fmt(t["near_dups"]), _fmt(t["shards_new"]),
                       _fmt(t["shards_changed"]), _fmt(t["shards_rejected"]), _fmt(t["skipped_rows"]),
                       _fmt(round(s.seconds, 2) if s.seconds is not None else None)]]), ""]
    if s.steps:
        parts += ["## Time per step", "", table(["step", "seconds"], [[k, _fmt(round(v, 3))] for k, v in s.steps.items()]), ""]
    cols = ["all", *s.sources]
    if s.docs:
        parts += ["## Documents per source", "",
                  table(["", *cols], [["documents", *(_fmt(s.docs.get(None if c == "all" else c)) for c in cols)]]), ""]
    if s.decisions:
        parts += ["## Decisions", "", table(["decision", *cols], [
            [a, *(_fmt(by.get(None if c == "all" else c, 0.0)) for c in cols)] for a, by in sorted(s.decisions.items())]), ""]
    if s.tags:
        parts += ["## Tags of tonight's documents", "",
                  "`true`: documents where the tag holds; `count`: documents with a value; `mean`: average; "
                  "`value:`/`item:`: documents per value or reason kind.", "",
                  table(["tag", *cols], [
                      [k, *(_fmt(by.get(None if c == "all" else c)) for c in cols)] for k, by in sorted(s.tags.items())]), ""]
    if s.stage_counts:
        parts += ["## Tagger and stage counts", "", table(["metric", "value"], [[k, _fmt(v)] for k, v in s.stage_counts.items()]), ""]
    return "\n".join(parts).rstrip() + "\n"
