"""``glia run SHARDS``: tag, deduplicate and decide tonight's new or changed shards."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from glia.cli.exit_codes import EXIT_BUSY, EXIT_ERROR, EXIT_OK, EXIT_STRICT

if TYPE_CHECKING:
    from glia.engine.pipeline import NightOutcome

NAME = "run"
HELP = "tag and deduplicate new or changed shards"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("shards", help="folder (searched recursively) or fsspec URL of Parquet shards")
    p.add_argument("--db", type=Path, default=Path("glia.duckdb"), help="catalog database (default ./glia.duckdb)")
    p.add_argument("--rules", type=Path, help="rules file (TOML): columns, taggers, near-dup parameters")
    p.add_argument("--state-dir", type=Path, help="Parquet tags and index (default <db>_data/ beside the db)")
    p.add_argument("--strict", action="store_true", help=f"exit {EXIT_STRICT} if any shard or row was rejected or skipped")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--orchestrator", choices=("auto", "plain", "prefect"),
                   help="run through the Prefect flow (prefect) or as plain Python (plain); default: [run].orchestrator, "
                        "auto = Prefect only for a Dask task runner or a Prefect server in PREFECT_API_URL")


class RichReporter:
    """Progress bars, one per stage, fed by the night's tasks."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.ids: dict[str, int] = {}

    def start(self, stage: str, total: int) -> None:
        if stage in self.ids:
            self.progress.update(self.ids[stage], total=total)
        else:
            self.ids[stage] = self.progress.add_task(stage, total=total)

    def advance(self, stage: str, n: int = 1) -> None:
        if stage in self.ids:
            self.progress.advance(self.ids[stage], n)


# Counts of the core night (always there) shown first, by name; every other metric the night
# recorded (`<stage>.<count>`, `<tagger>.<count>`) follows generically, so a new stage's or
# tagger's counts show without editing this file.
_CORE_ROWS = (("documents new tonight", "docs"), ("exact duplicates", "exact_dups"),
              ("near duplicates", "near_dups"), ("rows skipped", "skipped_rows"))


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.4g}"


# Metric families that are not a stage's or a tagger's counts: the step timings and the run
# summary's per-source aggregates (both in run_metrics and `glia sql`, too many for a terminal).
_NOT_COUNTS = ("seconds", "summary")


def metric_rows(metrics: dict[str, float]) -> list[tuple[str, str]]:
    """One row per recorded ``<stage or tagger>.<count>`` metric, grouped by its owner."""
    rows: list[tuple[str, str]] = []
    last = None
    for key in sorted(metrics):
        owner, _, what = key.partition(".")
        if not what or owner in _NOT_COUNTS:
            continue
        if owner != last:
            rows.append((owner, ""))
            last = owner
        rows.append((f"  {what}", _fmt(metrics[key])))
    return rows


def _night(args: argparse.Namespace) -> NightOutcome:
    """Run the night in this process: as plain Python, or through the Prefect flow where
    Prefect adds something (``[run].orchestrator``, ``--orchestrator``: flows.runners.uses_prefect)."""
    from dataclasses import replace

    from glia.engine.config import load_config
    from glia.flows import runners  # light: Prefect itself is imported only if the flow runs

    rules = str(args.rules) if args.rules else None
    cfg = load_config(rules)
    options = runners.options_with_env(cfg.run)  # the GLIA_* variables of this host win
    if args.orchestrator:
        options = replace(options, orchestrator=args.orchestrator)
    state_dir = str(args.state_dir) if args.state_dir else None
    if runners.uses_prefect(options):
        from glia.flows.nightly import nightly_hygiene

        flow = nightly_hygiene.with_options(task_runner=runners.task_runner_for(options))
        return flow(shards_root=args.shards, db_path=str(args.db), rules_path=rules, state_dir=state_dir)
    from glia.engine.night import ThreadExecutor, run_night

    with ThreadExecutor(options.workers) as executor:
        return run_night(args.shards, args.db, cfg, state_dir, executor)


def run(args: argparse.Namespace, console: Console) -> int:
    from glia.core import progress as prog
    from glia.engine.config import ConfigError
    from glia.storage.catalog import DatabaseBusyError
    from glia.storage.lock import RunInProgressError

    bar = Progress(TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=console, disable=args.quiet or not console.is_terminal, transient=False)
    try:
        with bar:
            prog.install(RichReporter(bar))
            outcome = _night(args)
    except (RunInProgressError, DatabaseBusyError) as exc:
        console.print(f"glia: {exc}", style="red", markup=False)
        return EXIT_BUSY
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        console.print(f"glia: {exc}", style="red", markup=False)
        return EXIT_ERROR
    except Exception as exc:
        console.print(f"[red]glia: the run failed ({type(exc).__name__}: {escape(str(exc))}); it is recorded as failed in "
                      "v_runs and nothing of it is visible. Fix the cause and rerun: finished work is reused.[/red]")
        return EXIT_ERROR
    finally:
        prog.install(None)

    c = outcome.counts
    if outcome.status == "nothing_new":
        console.print(f"Nothing new under {args.shards}: {c.get('shards_unchanged', 0)} shard(s) unchanged, "
                      f"database not changed (run {outcome.run_id} recorded as nothing_new).")
    table = Table(title=f"Glia run {outcome.run_id}: {outcome.status}", show_header=False)
    rows = [
        ("shards seen", c.get("shards_seen", 0)),
        ("  new / changed / unchanged", f"{c.get('shards_new', 0)} / {c.get('shards_changed', 0)} / {c.get('shards_unchanged', 0)}"),
        ("  rejected / missing", f"{c.get('shards_rejected', 0)} / {c.get('shards_missing', 0)}"),
        *((label, c.get(key, 0)) for label, key in _CORE_ROWS),
        *metric_rows(outcome.metrics),
        ("time", f"{outcome.seconds:.1f} s"),
        ("database", str(outcome.db_path)),
    ]
    for k, v in rows:
        table.add_row(k, str(v))
    console.print(table)
    for path, reason in outcome.rejected.items():
        console.print(f"[yellow]rejected shard[/yellow] {escape(path)}: {escape(reason)}")
    sk = outcome.skipped
    shown = [r for r in sk.to_pylist() if r["row"] is not None]
    for r in shown[:20]:
        console.print(f"[yellow]skipped[/yellow] {escape(r['path'])} row {r['row']} (id {escape(str(r['doc_id']))}): {escape(r['reason'])}")
    if len(shown) > 20:
        console.print(f"... and {len(shown) - 20} more: SELECT * FROM v_skipped WHERE run_id = {outcome.run_id}")
    if args.strict and (outcome.rejected or shown):
        console.print("[red]glia: --strict and some input was rejected or skipped[/red]")
        return EXIT_STRICT
    return EXIT_OK
