"""``glia status``: the run history (``v_runs``)."""

from __future__ import annotations

import argparse

from rich.console import Console

from glia.cli import sql

NAME = "status"
HELP = "run history"
QUERY = ("SELECT run_id, status, started_at, seconds, n_shards_new, n_shards_changed, n_docs, n_exact_dups, "
         "n_near_dups, n_skipped_rows FROM v_runs")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sql.add_table_arguments(p)


def run(args: argparse.Namespace, console: Console) -> int:
    return sql.show(args.db, QUERY, console, args.width, args.max_rows)
