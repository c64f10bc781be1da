"""``glia prune status``: the prune queue by status, with reason kinds."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from glia.cli.exit_codes import EXIT_OK

NAME = "prune"
HELP = "the prune queue"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="prune_cmd", required=True)
    status = sub.add_parser("status", help="documents per status, with their reason kinds")
    status.add_argument("--db", type=Path, default=Path("glia.duckdb"))


def run(args: argparse.Namespace, console: Console) -> int:
    import duckdb

    from glia.storage.prune_queue import status_table

    duckdb.from_arrow(status_table(args.db)).show(max_width=200)
    return EXIT_OK
