"""``glia run SHARDS``: tag, deduplicate and decide tonight's new or changed shards."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from glia.cli.exit_codes import EXIT_OK, EXIT_STRICT, exit_code_for
from glia.cli.summary import NightNumbers, print_summary

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
    p.add_argument("-v", "--verbose", action="store_true",
                   help="after the summary, every count the night recorded (as `glia status --run N` shows)")
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
        return flow(shards_root=args.shards, db_path=str(args.db), rules_path=rules, state_dir=state_dir, config=cfg)
    from glia.engine.night import ThreadExecutor, run_night

    with ThreadExecutor(options.workers) as executor:
        return run_night(args.shards, args.db, cfg, state_dir, executor)


def error_message(exc: Exception) -> str | None:
    """A night that failed for another cause than its input or configuration (``cli.main`` words those)."""
    if exit_code_for(exc) is not None:
        return None
    return (f"glia: the run failed ({type(exc).__name__}: {exc}); it is recorded as failed in v_runs and nothing of "
            "it is visible. Fix the cause and rerun: finished work is reused.")


def run(args: argparse.Namespace, console: Console) -> int:
    from glia.core import progress as prog

    bar = Progress(TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=console, disable=args.quiet or not console.is_terminal, transient=False)
    try:
        with bar:
            prog.install(RichReporter(bar))
            outcome = _night(args)
    finally:
        prog.install(None)

    c = outcome.counts
    if outcome.status == "nothing_new":
        console.print(f"Nothing new under {args.shards}: {c.get('shards_unchanged', 0)} shard(s) unchanged, "
                      f"database not changed (run {outcome.run_id} recorded as nothing_new).")
    numbers = NightNumbers(outcome.run_id, outcome.status, outcome.seconds, str(outcome.db_path), c, outcome.metrics)
    print_summary(console, numbers, verbose=args.verbose,
                  more=f"glia run --verbose, or glia status --run {outcome.run_id} --db {args.db}")
    for path, reason in outcome.rejected.items():
        console.print(f"[yellow]rejected shard[/yellow] {escape(path)}: {escape(reason)}")
    sk = outcome.skipped
    shown = [r for r in sk.to_pylist() if r["row"] is not None]
    limit = 20 if args.verbose or args.strict else 3  # the default summary stays short; v_skipped has every row
    for r in shown[:limit]:
        console.print(f"[yellow]skipped[/yellow] {escape(r['path'])} row {r['row']} (id {escape(str(r['doc_id']))}): {escape(r['reason'])}")
    if len(shown) > limit:
        console.print(f"... and {len(shown) - limit} more: SELECT * FROM v_skipped WHERE run_id = {outcome.run_id}")
    if args.strict and (outcome.rejected or shown):
        console.print("[red]glia: --strict and some input was rejected or skipped[/red]")
        return EXIT_STRICT
    return EXIT_OK
