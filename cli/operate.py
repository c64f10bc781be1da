"""``glia serve``, ``glia deploy`` and ``glia dashboard``: running Glia as a service.

    glia serve SHARDS_DIR [--db glia.duckdb] [--rules glia.toml] [--cron "0 3 * * *"] [--timezone UTC]
    glia deploy SHARDS_DIR [--db ...] [--rules ...] [--cron ...] [--timezone ...] [--prefect-file prefect.yaml]
    glia dashboard [--db glia.duckdb] [--host 127.0.0.1] [--port 8501] [--allow-files]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from rich.console import Console

COMMANDS = ("serve", "deploy", "dashboard")


def add_cli(sub: argparse._SubParsersAction) -> None:
    """Add the three subcommands to ``glia``'s parser."""
    from flows.serve import DEFAULT_CRON, DEPLOYMENT, WORK_POOL

    serve = sub.add_parser("serve", help="run the nightly flow on a schedule from this machine (flow.serve)")
    deploy = sub.add_parser("deploy", help="register the nightly deployment (prefect.yaml) for a process work pool")
    for p in (serve, deploy):
        p.add_argument("shards", help="folder or fsspec URL of Parquet shards")
        p.add_argument("--db", type=Path, default=Path("glia.duckdb"), help="catalog database (default ./glia.duckdb)")
        p.add_argument("--rules", type=Path, help="rules file (TOML)")
        p.add_argument("--state-dir", type=Path, help="Parquet tags and index (default <db>_data/ beside the db)")
        p.add_argument("--cron", default=DEFAULT_CRON, help=f"when to run (default {DEFAULT_CRON!r}: 03:00 daily)")
        p.add_argument("--timezone", default="", help="IANA timezone of the cron schedule (default $GLIA_TIMEZONE or UTC)")
        p.add_argument("--name", default=DEPLOYMENT, help=f"deployment name (default {DEPLOYMENT})")
    serve.add_argument("--paused", action="store_true", help="register the schedule paused (runs only when triggered)")
    deploy.add_argument("--pool", default=WORK_POOL, help=f"process work pool (default {WORK_POOL})")
    deploy.add_argument("--prefect-file", type=Path, default=Path("prefect.yaml"),
                        help="the project's prefect.yaml (default ./prefect.yaml; run from the project folder)")
    dash = sub.add_parser("dashboard", help="the read-only Streamlit dashboard over the catalog")
    dash.add_argument("--db", type=Path, default=Path("glia.duckdb"))
    dash.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    dash.add_argument("--port", type=int, default=8501)
    dash.add_argument("--allow-files", action="store_true",
                      help="let the dashboard read any file, not only the folders of the catalog's tag files, index "
                           "segments and registered shards")


def _schedule(args: argparse.Namespace):
    from flows.serve import Schedule

    return Schedule(shards_root=args.shards, db_path=str(args.db), rules_path=str(args.rules) if args.rules else None,
                    state_dir=str(args.state_dir) if args.state_dir else None, cron=args.cron, timezone=args.timezone)


def dashboard_command(db: Path, host: str = "127.0.0.1", port: int = 8501, allow_files: bool = False) -> list[str]:
    """The ``streamlit run`` command line of the dashboard (headless, no usage statistics)."""
    app = Path(__file__).resolve().parents[1] / "dashboards" / "app.py"
    return [sys.executable, "-m", "streamlit", "run", str(app), "--server.address", host, "--server.port", str(port),
            "--server.headless", "true", "--browser.gatherUsageStats", "false", "--", "--db", str(Path(db).resolve()),
            *(["--allow-files"] if allow_files else [])]


def run_cli(args: argparse.Namespace, console: Console) -> int:
    from cli.main import EXIT_ERROR, EXIT_OK
    from engine.config import ConfigError

    try:
        if args.cmd == "dashboard":
            if not args.db.exists():  # the pages say so too, and work once the first night commits
                console.print(f"[yellow]glia: no Glia database at {args.db} yet; run `glia run` first[/yellow]")
            console.print(f"Dashboard on http://{args.host}:{args.port} over {args.db} (read-only). Ctrl-C stops it.")
            return subprocess.call(dashboard_command(args.db, args.host, args.port, args.allow_files))
        schedule = _schedule(args)
        if args.cmd == "serve":
            from flows.serve import serve

            console.print(f"Serving {args.name}: {schedule.cron} ({schedule.timezone}), one run at a time. Ctrl-C stops it.")
            serve(schedule, name=args.name, paused=args.paused)
            return EXIT_OK
        from flows.serve import deploy

        if not args.prefect_file.exists():
            console.print(f"[red]glia: {args.prefect_file} not found; run from the project folder or pass --prefect-file[/red]")
            return EXIT_ERROR
        return deploy(schedule, args.prefect_file, name=args.name, pool=args.pool)
    except ConfigError as exc:
        console.print(f"[red]glia: {exc}[/red]")
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_OK
