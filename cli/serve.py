"""``glia serve SHARDS``: run the nightly flow on a schedule from this machine (Prefect ``flow.serve``)."""

from __future__ import annotations

import argparse

from rich.console import Console

from glia.cli.exit_codes import EXIT_OK
from glia.cli.schedule import add_schedule_arguments, schedule_of

NAME = "serve"
HELP = "run the nightly flow on a schedule from this machine (flow.serve)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_schedule_arguments(p)
    p.add_argument("--paused", action="store_true", help="register the schedule paused (runs only when triggered)")


def run(args: argparse.Namespace, console: Console) -> int:
    from glia.flows.serve import serve

    schedule = schedule_of(args)
    console.print(f"Serving {args.name}: {schedule.cron} ({schedule.timezone}), one run at a time. Ctrl-C stops it.")
    try:
        serve(schedule, name=args.name, paused=args.paused)
    except KeyboardInterrupt:
        pass
    return EXIT_OK
