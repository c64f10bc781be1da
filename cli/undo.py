"""``glia undo RUN_ID | --doc ID | --reason R``: restore pruned documents."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from glia.cli.exit_codes import EXIT_OK

NAME = "undo"
HELP = "restore pruned documents: by the run that queued them, by id, or by reason"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_id", nargs="?", type=int, help="restore everything this run queued")
    p.add_argument("--doc", action="append", default=[], metavar="ID", help="restore this document (repeatable)")
    p.add_argument("--reason", metavar="R", help="restore documents with this reason, or reason kind "
                   "(e.g. near_dup_of, risk, low_novelty)")
    p.add_argument("--db", type=Path, default=Path("glia.duckdb"))


def run(args: argparse.Namespace, console: Console) -> int:
    from glia.storage.prune_queue import undo

    res = undo(args.db, run_id=args.run_id, doc_ids=args.doc, reason=args.reason)
    detail = ", ".join(f"{n} {s}" for s, n in sorted(res.by_status.items()))
    console.print(f"restored {len(res.restored)} document(s) ({detail}); they are back in v_manifest and "
                  "later nights will not queue them again for the same kind of reason")
    return EXIT_OK
