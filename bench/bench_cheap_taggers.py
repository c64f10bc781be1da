"""Benchmark: documents per second of the cheap taggers on the example corpus, one thread.

    .venv/bin/python bench/bench_cheap_taggers.py [--repeats 3] [--out bench/results]

Each tagger tags all 3,100 documents of ``examples/commons`` (three nights, ~1.6k characters
each) in batches of its preferred size, as the runner would, in this process and on one
thread; the best of ``--repeats`` runs is reported (the machine is shared, so the best run is
the least disturbed one). For context the quality tagger is compared with the bare cost of
its four datatrove filters: one ``filter(doc)`` call per family per document with the same
offline tokenizer, no scores and no second asks. The 1-minute load average before and after
is recorded: numbers taken under load are slower. Results go to stdout and
``<out>/bench_cheap_taggers.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datatrove.data import Document  # noqa: E402

from glia.taggers.base import NightInfo, Tagger  # noqa: E402
from glia.taggers.exact import ExactHashTagger  # noqa: E402
from glia.taggers.minhash import MinHashTagger  # noqa: E402
from glia.taggers.quality import FAMILIES, QualityTagger, RegexWordTokenizer  # noqa: E402
from glia.taggers.staleness import StalenessTagger  # noqa: E402


def corpus() -> pa.Table:
    """The example corpus as the runner hands it to taggers."""
    files = sorted((ROOT / "examples" / "commons").glob("night*/*.parquet"))
    t = pa.concat_tables([pq.read_table(f) for f in files])
    return pa.table({"doc_id": t["id"], "text": t["text"], "source": t["source"], "timestamp": t["timestamp"],
                     "label": t["label"]})


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def tag_all(tagger: Tagger, docs: pa.Table) -> None:
    size = tagger.resources.batch_size
    for start in range(0, docs.num_rows, size):
        out = tagger.tag(docs.slice(start, size))
        assert out.num_rows == min(size, docs.num_rows - start)


def bare_datatrove_filters(texts: list[str], ids: list[str]) -> None:
    tok = RegexWordTokenizer()
    filters = [cls(language=tok) for cls in FAMILIES.values()]
    for text, doc_id in zip(texts, ids):
        for f in filters:
            f.filter(Document(text, doc_id))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    docs = corpus()
    n = docs.num_rows
    night = NightInfo(run_id=1, started_at=datetime.now(timezone.utc), n_docs=n)
    load_before = os.getloadavg()[0]
    taggers: list[Tagger] = [ExactHashTagger(), MinHashTagger(), QualityTagger(), StalenessTagger().for_night(night)]
    results: dict[str, dict[str, float]] = {}
    for t in taggers:
        tag_all(t, docs.slice(0, 50))  # warm-up: imports, regex compilation, first allocations
        secs = best_seconds(lambda: tag_all(t, docs), args.repeats)
        results[t.name] = {"seconds": round(secs, 5), "docs_per_s": round(n / secs)}
        print(f"{t.name:>10}: {n / secs:>12,.0f} docs/s  ({secs:.3f} s for {n} docs)", flush=True)
    texts, ids = docs["text"].to_pylist(), docs["doc_id"].to_pylist()
    secs = best_seconds(lambda: bare_datatrove_filters(texts, ids), args.repeats)
    results["datatrove_filters_bare"] = {"seconds": round(secs, 3), "docs_per_s": round(n / secs)}
    print(f"{'datatrove filters alone':>10}: {n / secs:,.0f} docs/s  ({secs:.3f} s)", flush=True)
    overhead = results["quality"]["seconds"] / results["datatrove_filters_bare"]["seconds"]
    report = {
        "docs": n,
        "chars_per_doc": round(sum(map(len, texts)) / n),
        "threads": 1,
        "repeats": args.repeats,
        "load_avg_1min_before": round(load_before, 2),
        "load_avg_1min_after": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "taggers": results,
        "quality_time_over_bare_datatrove_filters": round(overhead, 2),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_cheap_taggers.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"quality tagger / bare datatrove filters: {overhead:.2f}x time; written {args.out / 'bench_cheap_taggers.json'}")


if __name__ == "__main__":
    main()
