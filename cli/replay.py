"""``glia replay build | export``: TMR replay sets outside the night (``engine.replay``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from glia.cli.exit_codes import EXIT_OK

NAME = "replay"
HELP = "TMR replay sets: build one from the catalog, export one to Parquet"


def add_arguments(p: argparse.ArgumentParser) -> None:
    rsub = p.add_subparsers(dest="replay_cmd", required=True)
    b = rsub.add_parser("build", help="draw a prioritised replay set (takes the run lock)")
    b.add_argument("--db", type=Path, default=Path("glia.duckdb"))
    b.add_argument("--rules", type=Path, help="rules file whose [stages.replay] table gives the parameters")
    b.add_argument("--size", type=int, help="number of draws")
    b.add_argument("--seed", type=int)
    b.add_argument("--alpha", type=float, help="priority exponent (0 = uniform)")
    b.add_argument("--new-fraction", type=float, help="share of draws from documents first seen in the latest run")
    b.add_argument("--importance-column", help="a document or tag column with the user's importance score")
    b.add_argument("--importance-sql", help="SELECT returning doc_id, importance (run read-only)")
    b.add_argument("--no-state", action="store_true", help="do not update retention state (a what-if set)")
    e = rsub.add_parser("export", help="write a replay set (default: the latest) to Parquet")
    e.add_argument("--db", type=Path, default=Path("glia.duckdb"))
    e.add_argument("--set-id", type=int)
    e.add_argument("--out", type=Path, required=True, help="Parquet file to write")
    e.add_argument("--redact-pii", nargs="?", const="<{kind}>", default=None, metavar="PLACEHOLDER",
                   help="add each document's text with PII replaced (default placeholder '<{kind}>')")


def run(args: argparse.Namespace, console: Console) -> int:
    """``glia replay ...``: 0 done, 1 error, 2 database busy."""
    from glia.curation.replay import ReplayParams
    from glia.engine.config import load_config
    from glia.engine.replay import build_from_catalog, export_set

    if args.replay_cmd == "export":
        sid, n = export_set(args.db, args.out, args.set_id, args.redact_pii)
        console.print(f"replay set {sid}: {n} documents written to {args.out}")
        return EXIT_OK
    table = dict(load_config(args.rules).stage_params.get("replay", {})) if args.rules else {}
    flags = {"size": args.size, "seed": args.seed, "alpha": args.alpha, "new_fraction": args.new_fraction,
             "importance_column": args.importance_column, "importance_sql": args.importance_sql}
    table.update({k: v for k, v in flags.items() if v is not None})
    if args.no_state:
        table["record_state"] = False
    row = build_from_catalog(args.db, ReplayParams.from_mapping(table))
    console.print(
        f"replay set {row['set_id']} for run {row['run_id']}: {row['size']} draws of {row['n_items']} documents "
        f"(pool {row['n_pool']}, {row['n_pool_new']} new; {row['n_new_draws']} new draws); beta {row['beta']:.3f}; "
        f"terms: {', '.join(row['terms']) or 'none (uniform)'}"
        + (f"; no data for: {', '.join(row['terms_missing'])}" if row["terms_missing"] else "")
        + f"\n  SELECT * FROM v_replay WHERE set_id = {row['set_id']}")
    return EXIT_OK
