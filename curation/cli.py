"""``glia``: the command line.

    glia run SHARDS_DIR [--db glia.duckdb] [--rules glia.toml] [--state-dir DIR] [--strict]
             [--orchestrator auto|plain|prefect]
    glia status [--db glia.duckdb]            run history
    glia sql "SELECT ..." [--db glia.duckdb] [--allow-files]  read-only SQL against the catalog
    glia undo RUN_ID | --doc ID | --reason R [--db ...]   restore pruned documents
    glia prune status [--db ...]              the prune queue by status
    glia manifest export --out FILE [--db ...]  the clean manifest (v_manifest) as Parquet
    glia models train-risk [--out DIR] [--force]  train the default toxicity head of the risk tagger
    glia reindex [--db ...] [--rules ...]     rebuild the near-dup history under the [near_dup] scheme
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from curation.pipeline import NightOutcome

EXIT_OK, EXIT_ERROR, EXIT_BUSY, EXIT_STRICT = 0, 1, 2, 3


class RichReporter:
    """Progress bars, one per stage, fed by the flow's tasks."""

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


def _stage_rows(m: dict[str, float]) -> list[tuple[str, object]]:
    """Summary lines for the stages that ran tonight (their counts are in run_metrics)."""
    rows: list[tuple[str, object]] = []
    if "novelty.scored" in m:
        rows.append(("novelty (mean) / bank size", f"{m.get('novelty.novelty_mean', float('nan')):.3f} / "
                                                   f"{int(m.get('novelty.bank_size', 0))}"))
    if "surprise.scored" in m:
        rows.append(("scored by the LM (surprise)", int(m["surprise.scored"])))
    if "decide.decided" in m:
        rows.append(("queued for pruning / protected", f"{int(m.get('decide.pruned', 0))} / {int(m.get('decide.protected', 0))}"))
        if m.get("decide.held_by_cap"):
            rows.append(("  kept by the prune cap", int(m["decide.held_by_cap"])))
    if "replay.items" in m:
        rows.append(("replay set: draws / documents", f"{int(m.get('replay.draws', 0))} / {int(m['replay.items'])}"))
    return rows


def _night(args: argparse.Namespace) -> NightOutcome:
    """Run the night in this process: as plain Python, or through the Prefect flow where
    Prefect adds something (``[run].orchestrator``, ``--orchestrator``: flows.runners.uses_prefect)."""
    from dataclasses import replace

    from curation.config import load_config
    from flows import runners

    rules = str(args.rules) if args.rules else None
    cfg = load_config(rules)
    options = runners.options_with_env(cfg.run)  # the GLIA_* variables of this host win
    if args.orchestrator:
        options = replace(options, orchestrator=args.orchestrator)
    state_dir = str(args.state_dir) if args.state_dir else None
    if runners.uses_prefect(options):
        from flows.nightly import nightly_hygiene

        flow = nightly_hygiene.with_options(task_runner=runners.task_runner_for(options))
        return flow(shards_root=args.shards, db_path=str(args.db), rules_path=rules, state_dir=state_dir)
    from curation.engine import ThreadExecutor, run_night

    with ThreadExecutor(options.workers) as executor:
        return run_night(args.shards, args.db, cfg, state_dir, executor)


def _run(args: argparse.Namespace, console: Console) -> int:
    from curation import progress as prog
    from curation.config import ConfigError
    from storage.catalog import DatabaseBusyError
    from storage.lock import RunInProgressError

    bar = Progress(TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=console, disable=args.quiet or not console.is_terminal, transient=False)
    try:
        with bar:
            prog.install(RichReporter(bar))
            outcome = _night(args)
    except (RunInProgressError, DatabaseBusyError) as exc:
        console.print(f"glia: {exc}", style="red", markup=False)
        return EXIT_BUSY
    except (ConfigError, FileNotFoundError, ValueError) as exc:  # markup off: messages name [sections]
        console.print(f"glia: {exc}", style="red", markup=False)
        return EXIT_ERROR
    except Exception as exc:
        console.print(f"[red]glia: the run failed ({type(exc).__name__}: {exc}); it is recorded as failed in "
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
        ("documents new tonight", c.get("docs", 0)),
        ("exact duplicates", c.get("exact_dups", 0)),
        ("near duplicates", c.get("near_dups", 0)),
        ("rows skipped", c.get("skipped_rows", 0)),
        *_stage_rows(outcome.metrics),
        ("time", f"{outcome.seconds:.1f} s"),
        ("database", str(outcome.db_path)),
    ]
    for k, v in rows:
        table.add_row(k, str(v))
    console.print(table)
    for path, reason in outcome.rejected.items():
        console.print(f"[yellow]rejected shard[/yellow] {path}: {reason}")
    sk = outcome.skipped
    shown = [r for r in sk.to_pylist() if r["row"] is not None]
    for r in shown[:20]:
        console.print(f"[yellow]skipped[/yellow] {r['path']} row {r['row']} (id {r['doc_id']}): {r['reason']}")
    if len(shown) > 20:
        console.print(f"... and {len(shown) - 20} more: SELECT * FROM v_skipped WHERE run_id = {outcome.run_id}")
    if args.strict and (outcome.rejected or shown):
        console.print("[red]glia: --strict and some input was rejected or skipped[/red]")
        return EXIT_STRICT
    return EXIT_OK


SANDBOX_HINT = ("glia sql reads only the catalog and the folders of its tag files, index segments and registered "
                "shards, and writes no file; rerun with --allow-files for full file access")


def _sql(args: argparse.Namespace, console: Console) -> int:
    import duckdb

    from storage.catalog import Catalog, DatabaseBusyError, InspectionRefusedError

    try:
        with Catalog.open_inspection(args.db, allow_files=getattr(args, "allow_files", False)) as cat:
            rel = cat.inspect(args.query)
            if rel is not None:
                rel.show(max_width=args.width, max_rows=args.max_rows, null_value="NULL")
    except DatabaseBusyError as exc:
        console.print(f"glia: {exc}", style="red", markup=False)
        return EXIT_BUSY
    except FileNotFoundError as exc:
        console.print(f"glia: {exc}", style="red", markup=False)
        return EXIT_ERROR
    except (InspectionRefusedError, duckdb.PermissionException) as exc:
        console.print(f"glia: {exc}\n{SANDBOX_HINT}", style="red", markup=False)
        return EXIT_ERROR
    except Exception as exc:  # duckdb's errors already say what is wrong with the SQL
        hint = f"\n{SANDBOX_HINT}" if "configuration has been locked" in str(exc) else ""
        console.print(f"glia: {exc}{hint}", style="red", markup=False)
        return EXIT_ERROR
    return EXIT_OK



def _models(args: argparse.Namespace, console: Console) -> int:
    """``glia models train-risk``: build the risk tagger's default head now and report held-out numbers."""
    from curation import risk_model

    try:
        head, folder, trained = risk_model.ensure(args.out, force=args.force)
        ev = risk_model.evaluate(head)
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"glia: {exc}", style="red", markup=False)
        return EXIT_ERROR
    done = "trained" if trained else "already built (--force retrains)"
    console.print(f"risk head {head.key} in {folder}: {done}; training took {head.info['train_seconds']:.1f} s "
                  f"({head.info['n_tweets']} tweets, {head.info['n_prose_chunks']} prose chunks)", markup=False)
    console.print(f"held out: ROC-AUC {ev['roc_auc_davidson_test']:.4f} on {ev['n_davidson_test']} Davidson test tweets; "
                  f"at threshold {ev['threshold']}: {ev['tweet_tpr']:.1%} of toxic tweets and {ev['prose_fpr']:.2%} of "
                  f"{ev['n_prose_heldout']} literary paragraphs flagged")
    if args.out:
        console.print(f"use it with [taggers.risk] models_dir = \"{args.out}\"", markup=False)
    return EXIT_OK

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="glia", description="Nightly data hygiene for training corpora.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="tag and deduplicate new or changed shards")
    run.add_argument("shards", help="folder (searched recursively) or fsspec URL of Parquet shards")
    run.add_argument("--db", type=Path, default=Path("glia.duckdb"), help="catalog database (default ./glia.duckdb)")
    run.add_argument("--rules", type=Path, help="rules file (TOML): columns, taggers, near-dup parameters")
    run.add_argument("--state-dir", type=Path, help="Parquet tags and index (default <db>_data/ beside the db)")
    run.add_argument("--strict", action="store_true", help=f"exit {EXIT_STRICT} if any shard or row was rejected or skipped")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    run.add_argument("--orchestrator", choices=("auto", "plain", "prefect"),
                     help="run through the Prefect flow (prefect) or as plain Python (plain); default: [run].orchestrator, "
                          "auto = Prefect only for a Dask task runner or a Prefect server in PREFECT_API_URL")
    status = sub.add_parser("status", help="run history")
    status.add_argument("--db", type=Path, default=Path("glia.duckdb"))
    sql = sub.add_parser(
        "sql", help="run read-only SQL against the catalog",
        description="Run read-only SQL against the catalog. The SQL reads only the catalog and the folders of its "
                    "tag files, index segments and registered shards, and writes no file: COPY, EXPORT, ATTACH and reads "
                    "of other files are refused, and settings cannot undo that.")
    sql.add_argument("query")
    sql.add_argument("--db", type=Path, default=Path("glia.duckdb"))
    sql.add_argument("--allow-files", action="store_true",
                     help="full file access: read any file (read_csv('...')) and write files (COPY ... TO); "
                          "the catalog itself stays read-only")
    for p in (status, sql):
        p.add_argument("--width", type=int, default=200, help="maximum table width in characters")
        p.add_argument("--max-rows", type=int, default=100)
    from curation import replay  # glia replay build | export
    replay.add_cli(sub)
    from curation import operate  # glia serve | deploy | dashboard
    operate.add_cli(sub)
    from curation import prune  # glia undo | prune status | manifest export
    prune.add_cli(sub)
    from curation import reindex  # glia reindex
    reindex.add_cli(sub)
    models = sub.add_parser("models", help="build model artefacts ahead of a run")
    models_sub = models.add_subparsers(dest="models_cmd", required=True)
    train_risk = models_sub.add_parser("train-risk", help="train the risk tagger's default toxicity head")
    train_risk.add_argument("--out", type=Path, help="folder for the head (default: the model cache, .glia/models/risk)")
    train_risk.add_argument("--force", action="store_true", help="retrain even if the head for the current data exists")
    args = parser.parse_args(argv)
    console = Console()
    if args.cmd == "models":
        return _models(args, console)
    if args.cmd in reindex.COMMANDS:
        return reindex.run_cli(args, console)
    if args.cmd in prune.COMMANDS:
        return prune.run_cli(args, console)
    if args.cmd in operate.COMMANDS:
        return operate.run_cli(args, console)
    if args.cmd == "run":
        return _run(args, console)
    if args.cmd == "replay":
        return replay.run_cli(args, console)
    if args.cmd == "status":
        args.query = "SELECT run_id, status, started_at, seconds, n_shards_new, n_shards_changed, n_docs, n_exact_dups, n_near_dups, n_skipped_rows FROM v_runs"
        return _sql(args, console)
    return _sql(args, console)


if __name__ == "__main__":
    sys.exit(main())
