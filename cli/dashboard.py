"""``glia dashboard``: the read-only Streamlit dashboard over the catalog."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from glia.cli.exit_codes import EXIT_OK

NAME = "dashboard"
HELP = "the read-only Streamlit dashboard over the catalog"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", type=Path, default=Path("glia.duckdb"))
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--allow-files", action="store_true",
                   help="let the dashboard read any file, not only the folders of the catalog's tag files, index "
                        "segments and registered shards")


def dashboard_command(db: Path, host: str = "127.0.0.1", port: int = 8501, allow_files: bool = False) -> list[str]:
    """The ``streamlit run`` command line of the dashboard (headless, no usage statistics)."""
    from importlib.util import find_spec

    # Located, not imported: the dashboard runs as its own Streamlit program.
    app = Path(find_spec("glia.dashboards.app").origin).resolve()
    return [sys.executable, "-m", "streamlit", "run", str(app), "--server.address", host, "--server.port", str(port),
            "--server.headless", "true", "--browser.gatherUsageStats", "false", "--", "--db", str(Path(db).resolve()),
            *(["--allow-files"] if allow_files else [])]


def run(args: argparse.Namespace, console: Console) -> int:
    if not args.db.exists():  # the pages say so too, and work once the first night commits
        console.print(f"[yellow]glia: no Glia database at {args.db} yet; run `glia run` first[/yellow]")
    console.print(f"Dashboard on http://{args.host}:{args.port} over {args.db} (read-only). Ctrl-C stops it.")
    try:
        return subprocess.call(dashboard_command(args.db, args.host, args.port, args.allow_files))
    except KeyboardInterrupt:
        return EXIT_OK
