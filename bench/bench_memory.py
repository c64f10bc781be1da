"""Peak memory of a night for N and 10N documents at the same batch size.

Usage (from the repository root)::

    .venv/bin/python bench/bench_memory.py            # N = 5,000; writes bench/results/bench_memory.json

Two questions, each answered with N and 10N documents of real text
(``bench/make_bench_corpus.py``: ~800-character chunks of Austen, the KJV, Shakespeare, ...
from pinned inputs, with planted near and exact copies), equal-sized shards and the
same ``[run].batch_size``:

- **tonight**: one night of N vs 10N new documents into an empty database;
- **history**: a fixed night of N new documents against a history of N vs 10N documents
  committed by earlier nights (the LSH index, signatures and exact hashes live on disk as
  Parquet segments; this is the "corpus size" that must not drive memory).

Every night runs in a fresh child process through Glia's own night functions (discover,
prepare, ingest and taggers on 2 threads, night stages, build record, commit, garbage
collection: the body of ``flows.nightly`` without Prefect, whose embedded server is a
separate process of constant size). The peak RSS is the child's ``ru_maxrss`` from
``wait4``; the child also records its peak after each step, so growth can be traced to a
step. The taggers are the configured defaults (exact, MinHash) and the dedup stage; model
taggers (embeddings, LM) are excluded: their memory is set by model size and batch size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SHARD_DOCS = 1250  # every shard the same size, so N and 10N differ only in the number of shards
TARGET_RATIO = 2.0


def _peak_mb() -> float:
    """This process's peak RSS (VmHWM). Not ``ru_maxrss``: Linux carries that over fork and exec,
    so a child would report its parent's peak if the parent was bigger."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: KiB on Linux, bytes on macOS


def child(spec: dict) -> dict:
    """Run one night (in this fresh process) and report the peak RSS after each step."""
    from glia.engine.config import GliaConfig, RunOptions
    from night_path import glia_night

    steps = {"imports": _peak_mb()}
    cfg = GliaConfig(run=RunOptions(batch_size=spec["batch_size"]))
    seconds, counts = glia_night(spec["root"], Path(spec["db"]), cfg, 2,
                                 checkpoint=lambda step: steps.__setitem__(step, _peak_mb()))
    return {"docs": counts["docs"], "near_dups": counts["near_dups"],
            "exact_dups": counts["exact_dups"], "seconds": round(seconds, 2),
            "peak_mb_after": {k: round(v, 1) for k, v in steps.items()}}


def run_child(spec: dict) -> dict:
    """A night in a fresh process; its peak RSS (VmHWM at its end, and ``wait4``'s ru_maxrss,
    which is at least this lean parent's own peak)."""
    proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)], stdout=subprocess.PIPE,
                            cwd=ROOT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stdout.close()
    if proc.returncode != 0:
        raise RuntimeError(f"night {spec} failed with exit {proc.returncode}")
    res = json.loads(out.strip().splitlines()[-1])
    res["peak_rss_mb"] = res["peak_mb_after"]["commit"]
    res["wait4_maxrss_mb"] = round(usage.ru_maxrss / 1024, 1)
    return res


def build_corpus(folder: Path, n_docs: int, doc_chars: int) -> list[Path]:
    """The benchmark corpus (cached): ``n_docs`` documents in shards of SHARD_DOCS."""
    meta = folder / "meta.json"
    want = {"n_docs": n_docs, "doc_chars": doc_chars, "shard_docs": SHARD_DOCS}
    # corpus.json: written by the builder since it takes pinned inputs only; an older corpus
    # (cut from the machine's own /usr/share/doc) is rebuilt.
    if not (meta.exists() and json.loads(meta.read_text()) == want and (folder / "corpus.json").exists()):
        shutil.rmtree(folder, ignore_errors=True)
        # In a child process: building takes ~1.3 GB, which this parent must not hold while it
        # starts the measured nights.
        code = (f"import sys; sys.path[:0] = [{str(ROOT / 'bench')!r}, {str(ROOT / 'examples')!r}]\n"
                "from make_bench_corpus import make_bench_corpus\n"
                f"make_bench_corpus({str(folder)!r}, n_docs={n_docs}, doc_chars={doc_chars}, "
                f"n_shards={n_docs // SHARD_DOCS})")
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
        meta.write_text(json.dumps(want))
    return sorted(folder.glob("part-*.parquet"))


def link_shards(shards: list[Path], folder: Path) -> Path:
    """A shard folder of hard links (same bytes, no copy)."""
    folder.mkdir(parents=True, exist_ok=True)
    for s in shards:
        dst = folder / s.name
        if not dst.exists():
            try:
                os.link(s, dst)
            except OSError:
                shutil.copy2(s, dst)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000, help="N documents (a multiple of 1250)")
    ap.add_argument("--factor", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--doc-chars", type=int, default=800)
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "data" / "memory")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "bench_memory.json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    n, big = args.n, args.n * args.factor
    t0 = time.perf_counter()
    shards = build_corpus(args.work / "corpus", big + n, args.doc_chars)
    k = n // SHARD_DOCS
    tonight = shards[-k:]  # the fixed night of the history question, never part of a history
    print(f"corpus: {len(shards)} shards of {SHARD_DOCS} docs in {time.perf_counter() - t0:.0f} s", flush=True)
    results: dict[str, dict] = {}
    for label, size in (("N", n), ("10N", big)):
        run = args.work / f"run-{label}"
        shutil.rmtree(run, ignore_errors=True)
        root = link_shards(shards[: size // SHARD_DOCS], run / "shards")
        spec = {"db": str(run / "glia.duckdb"), "root": str(root), "batch_size": args.batch_size}
        results[f"tonight {label}"] = run_child(spec)  # also builds the history for the next question
        print(f"tonight {label}: {results[f'tonight {label}']}", flush=True)
        link_shards(tonight, root)
        results[f"history {label}"] = run_child(spec)
        print(f"history {label}: {results[f'history {label}']}", flush=True)

    def ratio(q: str) -> float:
        return round(results[f"{q} 10N"]["peak_rss_mb"] / results[f"{q} N"]["peak_rss_mb"], 3)

    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "n": n, "factor": args.factor, "batch_size": args.batch_size, "shard_docs": SHARD_DOCS,
        "doc_chars": args.doc_chars, "taggers": ["exact", "minhash"], "stages": ["dedup"],
        "model_taggers": "excluded (memory set by model and batch size)",
        "prefect": "excluded (its embedded server is a separate process of constant size)",
        "parent_peak_rss_mb": round(_peak_mb(), 1),
        "results": results,
        "ratio_tonight_10N_over_N": ratio("tonight"),
        "ratio_history_10N_over_N": ratio("history"),
        "target_ratio": TARGET_RATIO,
    }
    report["passes"] = report["ratio_tonight_10N_over_N"] < TARGET_RATIO and report["ratio_history_10N_over_N"] < TARGET_RATIO
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "results"}, indent=1))


if __name__ == "__main__":
    main()
