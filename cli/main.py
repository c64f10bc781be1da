"""``glia``: the command line.

    glia run SHARDS_DIR [--db glia.duckdb] [--rules glia.toml] [--state-dir DIR] [--strict]
             [--orchestrator auto|plain|prefect]
    glia status [--db glia.duckdb]            run history
    glia sql "SELECT ..." [--db glia.duckdb] [--allow-files]  read-only SQL against the catalog
    glia replay build|export ...              TMR replay sets
    glia serve | deploy SHARDS_DIR ...        the nightly run on a schedule (Prefect)
    glia dashboard [--db ...]                 the read-only dashboard
    glia undo RUN_ID | --doc ID | --reason R [--db ...]   restore pruned documents
    glia prune status [--db ...]              the prune queue by status
    glia manifest export --out FILE [--db ...]  the clean manifest (v_manifest) as Parquet
    glia reindex [--db ...] [--rules ...]     rebuild the near-dup history under the [stages.dedup] scheme
    glia models train-risk [--out DIR] [--force]  train the risk tagger's n-gram head (backend "ngram")

Each command is one module of this package with ``NAME``, ``HELP``, ``add_arguments(parser)``
and ``run(args, console) -> int``; adding a command is one module and one line in
:data:`COMMANDS`. Command modules import their heavy dependencies inside ``run``, so
``glia run`` of a dedup-only night never imports Prefect or a model stack. A command raises
what goes wrong: :func:`main` is the one place that turns an error into a red line and its exit
code (``cli.exit_codes``); a command may word an error itself with ``error_message(exc)``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType

from rich.console import Console

from glia.cli.exit_codes import EXIT_BUSY, EXIT_ERROR, EXIT_OK, EXIT_STRICT, exit_code_for

__all__ = ["COMMANDS", "EXIT_BUSY", "EXIT_ERROR", "EXIT_OK", "EXIT_STRICT", "build_parser", "main"]

# The order is the order of `glia --help`.
COMMANDS = ("run", "status", "sql", "replay", "serve", "deploy", "dashboard", "undo", "prune", "manifest", "reindex",
            "models")


def command_module(name: str) -> ModuleType:
    """The module implementing ``glia NAME`` (``cli/<name>.py``)."""
    return importlib.import_module(f"glia.cli.{name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glia", description="Nightly data hygiene for training corpora.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in COMMANDS:
        module = command_module(name)
        p = sub.add_parser(module.NAME, help=module.HELP, description=getattr(module, "DESCRIPTION", None))
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one ``glia`` command; returns its exit code. An error whose message says what to fix
    is printed as one line (no traceback); any other error is a bug and keeps its traceback."""
    args = build_parser().parse_args(argv)
    console = Console()
    try:
        return args._module.run(args, console)
    except Exception as exc:
        own = getattr(args._module, "error_message", None)
        message = own(exc) if own is not None else None
        code = exit_code_for(exc)
        if message is None and code is None:
            raise
        console.print(message or f"glia: {exc}", style="red", markup=False)
        return EXIT_ERROR if code is None else code


if __name__ == "__main__":
    sys.exit(main())
