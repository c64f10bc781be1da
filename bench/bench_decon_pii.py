"""Benchmark: documents per second of the ``decontaminate`` and ``pii`` taggers, with the exact-dup
tagger's speed in the same run (target: each within 2x of its time), one thread.

    .venv/bin/python bench/bench_decon_pii.py [--repeats 3] [--out bench/results]

Documents: the 3,100 documents of ``examples/commons`` (~1.6k characters each), in each
tagger's preferred batch size, as the runner would. Eval set: every fortune of Debian's
``fortunes`` (``wisdom``, ``science``, ``education``) of at least 25 words, with one of them
planted in every 50th document so that matching is exercised; the index build (once per eval
set, cached on disk) is timed separately. Best of ``--repeats``; the 1-minute load average
before and after is recorded. Results go to stdout and ``<out>/bench_decon_pii.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_cheap_taggers import best_seconds, corpus, tag_all  # noqa: E402
from examples.decon_pii import fortunes, plant  # noqa: E402
from glia.taggers.decontaminate import DecontaminateTagger  # noqa: E402
from glia.taggers.exact import ExactHashTagger  # noqa: E402
from glia.taggers.pii import PIITagger  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    docs = corpus()
    items = fortunes()
    texts = docs["text"].to_pylist()
    for i in range(0, len(texts), 50):
        texts[i] = plant(texts[i], items[i % len(items)][1])
    docs = docs.set_column(docs.schema.get_field_index("text"), "text", pa.array(texts, pa.string()))
    n = docs.num_rows
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        eval_path = Path(tmp) / "eval.parquet"
        pq.write_table(pa.table({"id": [i for i, _ in items], "text": [t for _, t in items]}), eval_path)
        t0 = time.perf_counter()
        decon = DecontaminateTagger(sets={"fortunes": {"path": str(eval_path)}}, index_dir=str(Path(tmp) / "idx"))
        build_s = time.perf_counter() - t0
        results: dict[str, dict[str, float]] = {}
        for t in (ExactHashTagger(), decon, PIITagger()):
            tag_all(t, docs.slice(0, 50))  # warm-up: imports, regex compilation, the index's first pages
            secs = best_seconds(lambda: tag_all(t, docs), args.repeats)
            results[t.name] = {"seconds": round(secs, 5), "docs_per_s": round(n / secs)}
            print(f"{t.name:>14}: {n / secs:>10,.0f} docs/s  ({secs:.3f} s for {n} docs)", flush=True)
        found = pc.sum(pc.is_valid(decon.tag(docs)["contaminated_by"])).as_py()
        with_pii = pc.sum(pc.greater(PIITagger().tag(docs)["pii_count"], 0)).as_py()
    ratios = {k: round(results[k]["seconds"] / results["exact"]["seconds"], 2) for k in ("decontaminate", "pii")}
    report = {"docs": n, "chars_per_doc": round(sum(map(len, texts)) / n), "threads": 1, "repeats": args.repeats,
              "eval_items": len(items), "index_build_seconds": round(build_s, 3), "contaminated_found": found,
              "planted": len(range(0, n, 50)), "docs_with_pii": with_pii,
              "load_avg_1min_before": round(load_before, 2), "load_avg_1min_after": round(os.getloadavg()[0], 2),
              "cpu_count": os.cpu_count(), "taggers": results, "time_over_exact": ratios}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_decon_pii.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"time over exact: {ratios}; {found} of {report['planted']} planted found; index built in {build_s:.2f} s "
          f"({len(items)} items); written {args.out / 'bench_decon_pii.json'}")


if __name__ == "__main__":
    main()
