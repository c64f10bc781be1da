"""``glia reindex``: rebuild the near-dup history under the configured scheme (``engine.reindex``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from glia.cli.exit_codes import EXIT_OK

NAME = "reindex"
HELP = "rebuild the near-dup history under the configured [stages.dedup] scheme"
DESCRIPTION = ("Read the active shards again and rebuild the cross-night near-dup history (signatures, LSH bands, "
               "clusters) under the [stages.dedup] scheme of --rules (default: the current defaults). Earlier nights' "
               "tags stay as recorded.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", type=Path, default=Path("glia.duckdb"))
    p.add_argument("--rules", type=Path, help="rules file (TOML) whose [stages.dedup] and [columns] to use")
    p.add_argument("--state-dir", type=Path, help="Parquet tags and index (default <db>_data/ beside the db)")


def run(args: argparse.Namespace, console: Console) -> int:
    """0 ok, 1 error, 2 database busy."""
    from glia.engine.config import load_config
    from glia.engine.reindex import describe, reindex

    res = reindex(args.db, load_config(args.rules), args.state_dir)
    old = describe(res.old_scheme) if res.old_scheme else "none"
    console.print(f"reindexed {res.documents} documents of {res.nights} nights ({res.shards} active shards) in "
                  f"{res.seconds:.1f} s as run {res.run_id}: {old} -> {describe(res.new_scheme)}", markup=False)
    return EXIT_OK
