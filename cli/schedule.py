"""Arguments and schedule shared by ``glia serve`` and ``glia deploy`` (not a command itself)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from glia.flows.serve import Schedule


def add_schedule_arguments(p: argparse.ArgumentParser) -> None:
    from glia.flows.serve import DEFAULT_CRON, DEPLOYMENT

    p.add_argument("shards", help="folder or fsspec URL of Parquet shards")
    p.add_argument("--db", type=Path, default=Path("glia.duckdb"), help="catalog database (default ./glia.duckdb)")
    p.add_argument("--rules", type=Path, help="rules file (TOML)")
    p.add_argument("--state-dir", type=Path, help="Parquet tags and index (default <db>_data/ beside the db)")
    p.add_argument("--cron", default=DEFAULT_CRON, help=f"when to run (default {DEFAULT_CRON!r}: 03:00 daily)")
    p.add_argument("--timezone", default="", help="IANA timezone of the cron schedule (default $GLIA_TIMEZONE or UTC)")
    p.add_argument("--name", default=DEPLOYMENT, help=f"deployment name (default {DEPLOYMENT})")


def schedule_of(args: argparse.Namespace) -> Schedule:
    """The schedule the arguments describe (raises ``ConfigError`` for a bad cron or timezone)."""
    from glia.flows.serve import Schedule

    return Schedule(shards_root=args.shards, db_path=str(args.db), rules_path=str(args.rules) if args.rules else None,
                    state_dir=str(args.state_dir) if args.state_dir else None, cron=args.cron, timezone=args.timezone)
