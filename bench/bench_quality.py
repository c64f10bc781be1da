"""Tag quality on data the defaults were not trained or tuned on: the risk tagger across platforms
(``quality_risk``) and near-duplicate precision/recall on edited copies (``quality_near_dup``).

    .venv/bin/python bench/bench_quality.py [--quick] [--only risk|near_dup] [--scale-corpus DIR]

Prints both tables and writes ``bench/results/quality[_quick].json``. The inputs are the pinned
bench inputs (``make bench-inputs``); ETHOS is read in place from ``../shared/data/ethos`` when it
is there (evaluation only, never copied).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import quality_near_dup  # noqa: E402
import quality_risk  # noqa: E402

PARTS = {"risk": quality_risk, "near_dup": quality_near_dup}


def report(quick: bool = False, only: str | None = None, scale_corpus: Path | None = None) -> dict:
    """Both reports (or ``only`` one), with the seconds each took."""
    out: dict = {}
    for name, module in PARTS.items():
        if only and name != only:
            continue
        t0 = time.perf_counter()
        out[name] = module.report(quick) if name == "risk" else module.report(quick, scale_corpus)
        out[name]["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sets (a smoke run, minutes)")
    ap.add_argument("--only", choices=sorted(PARTS), help="one of the two reports")
    ap.add_argument("--scale-corpus", type=Path, help="a bench/make_scale_corpus.py corpus for the near-dup scale check")
    args = ap.parse_args()
    res = report(args.quick, args.only, args.scale_corpus)
    for name, part in res.items():
        print(f"\n== {name} ({part['seconds']} s)")
        PARTS[name].print_table(part)
    out = HERE / "results" / f"quality{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
