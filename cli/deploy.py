"""``glia deploy SHARDS``: register the nightly deployment (``prefect.yaml``) for a process work pool."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from glia.cli.exit_codes import EXIT_OK
from glia.cli.schedule import add_schedule_arguments, schedule_of

NAME = "deploy"
HELP = "register the nightly deployment (prefect.yaml) for a process work pool"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from glia.flows.serve import WORK_POOL

    add_schedule_arguments(p)
    p.add_argument("--pool", default=WORK_POOL, help=f"process work pool (default {WORK_POOL})")
    p.add_argument("--prefect-file", type=Path, default=Path("prefect.yaml"),
                   help="the project's prefect.yaml (default ./prefect.yaml; run from the project folder)")


def run(args: argparse.Namespace, console: Console) -> int:
    from glia.flows.serve import deploy

    schedule = schedule_of(args)
    if not args.prefect_file.exists():
        raise FileNotFoundError(f"{args.prefect_file} not found; run from the project folder or pass --prefect-file")
    try:
        return deploy(schedule, args.prefect_file, name=args.name, pool=args.pool)
    except KeyboardInterrupt:
        return EXIT_OK
