"""``glia sql "SELECT ..."``: read-only SQL against the catalog, sandboxed to its own files."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from glia.cli.exit_codes import EXIT_OK

NAME = "sql"
HELP = "run read-only SQL against the catalog"
DESCRIPTION = ("Run read-only SQL against the catalog. The SQL reads only the catalog and the folders of its "
               "tag files, index segments and registered shards, and writes no file: COPY, EXPORT, ATTACH and reads "
               "of other files are refused, and settings cannot undo that.")
SANDBOX_HINT = ("glia sql reads only the catalog and the folders of its tag files, index segments and registered "
                "shards, and writes no file; rerun with --allow-files for full file access")


def add_table_arguments(p: argparse.ArgumentParser) -> None:
    """``--db``, ``--width`` and ``--max-rows``: shared with ``glia status``."""
    p.add_argument("--db", type=Path, default=Path("glia.duckdb"))
    p.add_argument("--width", type=int, default=200, help="maximum table width in characters")
    p.add_argument("--max-rows", type=int, default=100)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("query")
    p.add_argument("--allow-files", action="store_true",
                   help="full file access: read any file (read_csv('...')) and write files (COPY ... TO); "
                        "the catalog itself stays read-only")
    add_table_arguments(p)


def show(db: Path, query: str, console: Console, width: int = 200, max_rows: int = 100, allow_files: bool = False) -> int:
    """Print the result of ``query`` over the catalog at ``db``; returns :data:`EXIT_OK` (errors are raised)."""
    from glia.storage.catalog import Catalog

    with Catalog.open_inspection(db, allow_files=allow_files) as cat:
        rel = cat.inspect(query)
        if rel is not None:
            rel.show(max_width=width, max_rows=max_rows, null_value="NULL")
    return EXIT_OK


def error_message(exc: Exception) -> str:
    """Every error of a query is the user's to fix (duckdb's messages say what is wrong with the
    SQL); a refused file access also says how to allow it."""
    import duckdb

    from glia.storage.catalog import InspectionRefusedError

    refused = isinstance(exc, (InspectionRefusedError, duckdb.PermissionException))
    if refused or "configuration has been locked" in str(exc):
        return f"glia: {exc}\n{SANDBOX_HINT}"
    return f"glia: {exc}"


def run(args: argparse.Namespace, console: Console) -> int:
    return show(args.db, args.query, console, args.width, args.max_rows, args.allow_files)
