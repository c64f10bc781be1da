"""``glia status``: the run history (``v_runs``), or one run's summary and counts (``--run N``)."""

from __future__ import annotations

import argparse

from rich.console import Console

from glia.cli import sql, summary

NAME = "status"
HELP = "run history, or one run's summary"
QUERY = ("SELECT run_id, status, started_at, seconds, n_shards_new, n_shards_changed, n_docs, n_exact_dups, "
         "n_near_dups, n_skipped_rows FROM v_runs")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sql.add_table_arguments(p)
    p.add_argument("--run", type=int, metavar="N", help="run N's summary and every count it recorded")


def run(args: argparse.Namespace, console: Console) -> int:
    if args.run is not None:
        return summary.show_run(args.db, args.run, console)
    return sql.show(args.db, QUERY, console, args.width, args.max_rows)
