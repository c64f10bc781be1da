"""``glia manifest export --out FILE``: the clean manifest (``v_manifest``) as Parquet."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from glia.cli.exit_codes import EXIT_OK

NAME = "manifest"
HELP = "the clean manifest (v_manifest)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="manifest_cmd", required=True)
    export = sub.add_parser("export", help="write v_manifest (doc_id, shard_path, row, ...) to a Parquet file")
    export.add_argument("--out", type=Path, required=True)
    export.add_argument("--db", type=Path, default=Path("glia.duckdb"))
    export.add_argument("--redact-pii", nargs="?", const="<{kind}>", default=None, metavar="PLACEHOLDER",
                        help="add each document's text with PII replaced (default placeholder '<{kind}>')")
    export.add_argument("--text-column", default="text", help="the shards' text column (with --redact-pii)")
    export.add_argument("--exclude-stratum", action="append", default=[], metavar="NAME",
                        help="leave out the documents of a protected stratum (e.g. eval_set); repeatable")


def run(args: argparse.Namespace, console: Console) -> int:
    from glia.storage.prune_queue import export_manifest

    n = export_manifest(args.db, args.out, args.redact_pii, args.text_column, args.exclude_stratum)
    console.print(f"wrote {n} manifest rows to {args.out}")
    return EXIT_OK
