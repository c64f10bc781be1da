"""The night summary a person reads: a dozen numbers, grouped (documents, duplicates, what each
rule term fired for, pruned / protected / replayed, time), printed by ``glia run`` and again by
``glia status --run N``. Every other recorded count (``<stage or tagger>.<count>``) is in
:func:`metric_rows`, shown by ``glia run --verbose`` and ``glia status --run N``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

# Metric families that are not a stage's or a tagger's counts: the step timings and the run
# summary's per-source aggregates (both stay in run_metrics, too many for a terminal).
_NOT_COUNTS = ("seconds", "summary")


@dataclass(frozen=True)
class NightNumbers:
    """What a summary is made of: the run's row of ``runs`` and its ``run_metrics``."""

    run_id: int
    status: str
    seconds: float
    db_path: str
    counts: Mapping[str, float]  # shards_seen, shards_new, ..., docs, exact_dups, near_dups, skipped_rows
    metrics: Mapping[str, float] = field(default_factory=dict)  # "<owner>.<count>" -> value


def _n(v: float | None) -> str:
    v = float(v or 0)
    return f"{int(v):,}" if v.is_integer() else f"{v:.4g}"


def _shards(c: Mapping[str, float]) -> str:
    parts = [f"{_n(c.get('shards_new'))} new", f"{_n(c.get('shards_changed'))} changed",
             f"{_n(c.get('shards_unchanged'))} unchanged"]
    parts += [f"{_n(c.get(k))} {k.removeprefix('shards_')}" for k in ("shards_rejected", "shards_missing") if c.get(k)]
    return f"{_n(c.get('shards_seen'))} seen: " + ", ".join(parts)


def _duplicates(c: Mapping[str, float], m: Mapping[str, float]) -> str:
    out = f"{_n(c.get('exact_dups'))} exact · {_n(c.get('near_dups'))} near"
    if "semantic_dedup.dups" in m:
        out += f" · {_n(m['semantic_dedup.dups'])} semantic"
    return out


def _fired(m: Mapping[str, float]) -> str | None:
    fired = {k.removeprefix("decide.fired."): v for k, v in m.items() if k.startswith("decide.fired.")}
    if not fired:
        return None
    return " · ".join(f"{term} {_n(v)}" for term, v in sorted(fired.items(), key=lambda kv: (-kv[1], kv[0])))


def _pruned(m: Mapping[str, float]) -> str | None:
    if "decide.pruned" not in m:
        return None
    out = f"{_n(m['decide.pruned'])} queued ({float(m.get('decide.pruned_share', 0)):.1%} of tonight)"
    for key, label in (("decide.quarantined", "quarantined"), ("decide.applied", "applied"),
                       ("decide.restored", "restored")):
        if m.get(key):
            out += f" · {_n(m[key])} now {label}"
    return out


def _protected(m: Mapping[str, float]) -> str | None:
    if "decide.protected" not in m:
        return None
    out = f"{_n(m['decide.protected'])} in protected strata ({_n(m.get('decide.overridden'))} of them had a prune reason)"
    if m.get("decide.held_by_cap"):
        out += f" · {_n(m['decide.held_by_cap'])} kept by the prune caps"
    return out


def _replayed(m: Mapping[str, float]) -> str | None:
    if "replay.draws" not in m:
        return None
    return (f"set {_n(m.get('replay.set_id'))}: {_n(m['replay.draws'])} draws of {_n(m.get('replay.items'))} documents "
            f"({_n(m.get('replay.new_draws'))} draws of tonight's)")


def _time(n: NightNumbers) -> str:
    steps = {k.removesuffix(".seconds"): v for k, v in n.metrics.items()
             if k.endswith(".seconds") and k.count(".") == 1 and k.split(".")[0] not in _NOT_COUNTS}
    slowest = sorted(steps.items(), key=lambda kv: -kv[1])[:3]
    out = f"{n.seconds:.1f} s"
    if slowest and slowest[0][1] >= 0.1:
        out += " · most work: " + ", ".join(f"{name} {v:.1f} s" for name, v in slowest if v >= 0.1)
    return out


def summary_rows(n: NightNumbers) -> list[tuple[str, str]]:
    """The grouped rows of the summary; groups a night did not run (no decide, no replay) are left out."""
    c, m = n.counts, n.metrics
    rows: list[tuple[str, str | None]] = [
        ("documents", f"{_n(c.get('docs'))} new tonight · {_n(c.get('skipped_rows'))} rows skipped"),
        ("shards", _shards(c)),
        ("duplicates", _duplicates(c, m)),
        ("rule terms fired", _fired(m)),
        ("pruned", _pruned(m)),
        ("protected", _protected(m)),
        ("replayed", _replayed(m)),
        ("time", _time(n)),
        ("database", n.db_path),
    ]
    return [(k, v) for k, v in rows if v is not None]


def metric_rows(metrics: Mapping[str, float]) -> list[tuple[str, str]]:
    """One row per recorded ``<stage or tagger>.<count>`` metric, grouped by its owner (a new
    stage's or tagger's counts show without editing this file)."""
    rows: list[tuple[str, str]] = []
    last = None
    for key in sorted(metrics):
        owner, _, what = key.partition(".")
        if not what or owner in _NOT_COUNTS:
            continue
        if owner != last:
            rows.append((owner, ""))
            last = owner
        v = float(metrics[key])
        rows.append((f"  {what}", str(int(v)) if v.is_integer() else f"{v:.4g}"))  # as stored: no separators
    return rows


def print_summary(console: Console, n: NightNumbers, verbose: bool = False, more: str = "") -> None:
    """The summary table; with ``verbose`` every recorded count follows it. ``more`` names the
    command that shows the rest (printed only when not ``verbose``)."""
    table = Table(title=f"Glia run {n.run_id}: {n.status}", show_header=False, box=None, title_justify="left",
                  padding=(0, 1))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for k, v in summary_rows(n):
        table.add_row(k, v)
    console.print(table)
    if verbose:
        counts = Table(title="Every count (run_metrics)", show_header=False, title_justify="left")
        for k, v in metric_rows(n.metrics):
            counts.add_row(k, v)
        console.print(counts)
    elif more:
        console.print(f"Every count: {more}", markup=False)


_RUN_COUNTS = {"n_shards_seen": "shards_seen", "n_shards_new": "shards_new", "n_shards_changed": "shards_changed",
               "n_shards_unchanged": "shards_unchanged", "n_shards_rejected": "shards_rejected",
               "n_shards_missing": "shards_missing", "n_docs": "docs", "n_exact_dups": "exact_dups",
               "n_near_dups": "near_dups", "n_skipped_rows": "skipped_rows"}


def read_night_numbers(db: str, run_id: int) -> NightNumbers:
    """Run ``run_id``'s summary numbers from the catalog (``v_runs`` and ``run_metrics``), read-only.
    Raises ``LookupError`` naming the runs there are when ``run_id`` is not one of them."""
    from glia.storage.catalog import Catalog

    with Catalog.open_inspection(db) as cat:
        run = cat.con.execute(f"SELECT status, seconds, {', '.join(_RUN_COUNTS)} FROM v_runs WHERE run_id = ?",
                              [run_id]).fetchone()
        if run is None:
            ids = [r[0] for r in cat.con.execute("SELECT run_id FROM v_runs ORDER BY run_id").fetchall()]
            span = f"runs {ids[0]} to {ids[-1]}" if ids else "no runs yet"
            raise LookupError(f"{db} has no run {run_id} ({span}); `glia status` lists them")
        metrics = dict(cat.con.execute("SELECT metric, value FROM run_metrics WHERE run_id = ?", [run_id]).fetchall())
    status, seconds, *values = run
    counts = {name: float(v or 0) for name, v in zip(_RUN_COUNTS.values(), values)}
    return NightNumbers(run_id, status, float(seconds or 0.0), str(Path(db).resolve()), counts, metrics)


def show_run(db: str, run_id: int, console: Console) -> int:
    """Print run ``run_id``'s summary and every count it recorded; returns the exit code."""
    from glia.cli.exit_codes import EXIT_OK

    print_summary(console, read_night_numbers(db, run_id), verbose=True)
    return EXIT_OK
