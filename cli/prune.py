"""``glia prune status``: the prune queue by status, with reason kinds."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from glia.cli.exit_codes import EXIT_BUSY, EXIT_ERROR, EXIT_OK

NAME = "prune"
HELP = "the prune queue"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="prune_cmd", required=True)
    status = sub.add_parser("status", help="documents per status, with their reason kinds")
    status.add_argument("--db", type=Path, default=Path("glia.duckdb"))


def run(args: argparse.Namespace, console: Console) -> int:
    import duckdb

    from glia.storage.catalog import DatabaseBusyError
    from glia.storage.prune_queue import status_table

    try:
        duckdb.from_arrow(status_table(args.db)).show(max_width=200)
    except DatabaseBusyError as exc:
        console.print(f"glia: {exc}", style="red", markup=False)
        return EXIT_BUSY
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"glia: {exc}", style="red", markup=False)
        return EXIT_ERROR
    return EXIT_OK
