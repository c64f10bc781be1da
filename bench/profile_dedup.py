"""Profile: where the dedup night's time goes, step by step, against the floor of the work.

    .venv/bin/python bench/profile_dedup.py [--corpus bench/data/corpus] [--workers 2] [--repeat 3]

Runs the same night as ``bench/bench_dedup.py`` (the bench corpus's 20k documents, on a
database that already holds the example corpus's three nights), ``--repeat`` times, with a
timer around each step's function (patched in from here: the engine is not changed):

- the night's phases (wall): prepare (discover, fingerprint, id scan), ingest + tag (2
  threads), the dedup stage, finalize (record, summary, the DuckDB commit, garbage);
- inside ingest + tag (seconds summed over the worker threads): read (Parquet decode, id and
  text checks), normalise (NFKC / lower / whitespace for the exact hash), exact hash
  (xxh3-64), words (split + hash each distinct word), shingles (word n-gram hashes), MinHash
  (rensa), tag-file writes;
- inside the dedup stage: read tag files, tonight's table, exact matches against history, LSH
  band keys, tonight's candidate pairs, history LSH candidates, history documents, verify
  (estimated Jaccard), the rest of resolve (components, survivors, tables), segment writes;
- inside finalize: build the run record, summary metrics, commit (one transaction + views),
  garbage collection.

The floor: the corpus's bytes of text and its MinHash updates (shingles x permutations), and
the time numpy/rensa take for exactly that work on one core, measured in the same run.
Wall and CPU seconds (the step's own thread; for the whole night the process's, all threads)
are reported, medians over repetitions; the load average (``uptime``) is printed with a
QUIET / LOADED verdict (above 0.5 per core before the run: LOADED).
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from bench_dedup import history_copy  # noqa: E402
from night_path import glia_night  # noqa: E402

from glia.engine.config import GliaConfig, stage_params  # noqa: E402

TIMES: dict[str, float] = defaultdict(float)
# CPU seconds of the calling thread inside each step: on a shared, loaded machine wall time
# mostly measures waiting for a core, CPU time the step's own work.
CPU: dict[str, float] = defaultdict(float)
# Minor page faults of the calling thread inside each step. On a VM whose memory the host
# backs lazily (this machine's), a first touch of a page costs ~10-30 us of system time, so
# fresh memory is a cost of its own beside the arithmetic.
FAULTS: dict[str, float] = defaultdict(float)


def _thread_faults() -> int:
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt


def timed(label: str, fn):
    """``fn`` with its wall time added to ``TIMES[label]`` (generators: time inside each step).
    A call nested in another timed call of the same thread is counted in both (reported as
    parts of their parent)."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(*a, **k):
            it = fn(*a, **k)
            while True:
                t0, c0, f0 = time.perf_counter(), time.thread_time(), _thread_faults()
                try:
                    item = next(it)
                except StopIteration:
                    TIMES[label] += time.perf_counter() - t0
                    CPU[label] += time.thread_time() - c0
                    FAULTS[label] += _thread_faults() - f0
                    return
                TIMES[label] += time.perf_counter() - t0
                CPU[label] += time.thread_time() - c0
                FAULTS[label] += _thread_faults() - f0
                yield item
        return gen

    @functools.wraps(fn)
    def wrapper(*a, **k):
        t0, c0, f0 = time.perf_counter(), time.thread_time(), _thread_faults()
        try:
            return fn(*a, **k)
        finally:
            TIMES[label] += time.perf_counter() - t0
            CPU[label] += time.thread_time() - c0
            FAULTS[label] += _thread_faults() - f0
    return wrapper


def patch(obj, name: str, label: str) -> None:
    setattr(obj, name, timed(label, getattr(obj, name)))


# (module or class, attribute, label); the steps the issue names, where they live now.
def targets() -> list[tuple[object, str, str]]:
    import glia.curation.dedup as cd
    import glia.engine.night as night
    import glia.engine.pipeline as pipeline
    import glia.stages.dedup as sd
    import glia.storage.catalog as catalog
    import glia.storage.history as history
    import glia.taggers.exact as exact
    import glia.taggers.minhash as minhash

    return [
        (night, "prepare", "phase: prepare"),
        (night, "stage_step", "phase: dedup stage"),
        (night, "finalize_step", "phase: finalize"),
        (pipeline, "read_documents", "tag: read"),
        (pipeline, "write_atomic", "tag: write files"),
        (exact, "normalize", "tag: normalise"),
        (exact, "hash_strings", "tag: exact hash"),
        (minhash, "word_hashes", "tag: words"),
        (minhash, "shingle_hashes", "tag: shingles"),
        (minhash.MinHashTagger, "signatures", "tag: minhash total"),
        (sd.pq, "read_table", "dedup: read tag files"),
        (cd.Tonight, "from_tables", "dedup: tonight table"),
        (sd, "resolve", "dedup: resolve total"),
        (history.History, "exact_matches", "dedup: history exact"),
        (cd, "band_keys", "dedup: band keys"),
        (cd, "_tonight_pairs", "dedup: tonight pairs"),
        (history.History, "lsh_candidates", "dedup: history LSH"),
        (history.History, "documents", "dedup: history documents"),
        (cd, "jaccard", "dedup: verify"),
        (cd, "connected_components", "dedup: components"),
        (sd, "write_segments", "dedup: write segments"),
        # resolve's named steps (issue 23), where this version of curation.dedup has them
        *[(cd, name, f"dedup: resolve/{name}") for name in
          ("exact_groups", "lsh_candidates", "components", "clusters_and_matches", "survivors", "_segments")
          if hasattr(cd, name)],
        (night, "build_record", "finalize: record"),
        (night, "summary_metrics", "finalize: summary"),
        (catalog.Catalog, "commit_run", "finalize: commit"),
        (night, "collect_garbage", "finalize: garbage"),
    ]


def floor(shards: list[Path], ngram: int, num_perm: int) -> dict[str, float]:
    """The work's size and what numpy / rensa take for just that work, here, on one core."""
    import numpy as np
    import rensa

    from glia.core.text import hash_strings, shingle_hashes, word_hashes

    text = pa.concat_arrays([pq.read_table(s, columns=["text"])["text"].combine_chunks() for s in shards])
    t0 = time.perf_counter()
    words, offsets = word_hashes(text)
    words_s = time.perf_counter() - t0
    sh, so = shingle_hashes(words, offsets, ngram)
    t0 = time.perf_counter()
    rensa.RMinHash.digest_matrix_from_flat_token_hashes(sh, so.astype(np.uint64), num_perm, 1)
    minhash_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    hash_strings(text)
    xxh_s = time.perf_counter() - t0
    return {"text_mb": round(text.nbytes / 1e6, 1), "shingles_m": round(len(sh) / 1e6, 2),
            "minhash_updates_m": round(len(sh) * num_perm / 1e6), "one_core_rensa_s": round(minhash_s, 3),
            "one_core_words_s": round(words_s, 3), "one_core_xxh3_whole_texts_s": round(xxh_s, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=ROOT / "bench" / "data" / "corpus")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    shards = sorted(args.corpus.glob("part-*.parquet"))
    if not shards:
        raise SystemExit(f"no bench corpus in {args.corpus}: run bench/bench_dedup.py once (it builds it)")
    load_before = os.getloadavg()
    for obj, name, label in targets():
        patch(obj, name, label)
    cfg = GliaConfig()
    runs: list[dict[str, float]] = []
    cpus: list[dict[str, float]] = []
    faults: list[dict[str, float]] = []
    for rep in range(args.repeat):
        work = Path(tempfile.mkdtemp(prefix="glia-profile-"))
        try:
            db = work / "glia.duckdb"
            for night in ("night1", "night2", "night3"):
                glia_night(history_copy(ROOT / "examples" / "commons" / night, work / "history" / night), db, cfg,
                           args.workers)
            bench_root = work / "shards"
            bench_root.mkdir()
            for s in shards:
                shutil.copy2(s, bench_root / s.name)
            TIMES.clear()
            CPU.clear()
            FAULTS.clear()
            c0, r0 = time.process_time(), resource.getrusage(resource.RUSAGE_SELF)
            seconds, _ = glia_night(bench_root, db, cfg, args.workers)
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            runs.append({"night (wall)": seconds, **TIMES})
            cpus.append({"night (wall)": time.process_time() - c0, "night: system": r1.ru_stime - r0.ru_stime, **CPU})
            faults.append({"night (wall)": r1.ru_minflt - r0.ru_minflt, **FAULTS})
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(f"repetition {rep + 1}/{args.repeat}: night {runs[-1]['night (wall)']:.2f} s", flush=True)
    nd = stage_params("dedup", cfg.stage_params_for("dedup"))
    fl = floor(shards, nd.ngram, nd.num_perm)
    load_after = os.getloadavg()
    med = {k: statistics.median(r.get(k, 0.0) for r in runs) for k in runs[0]}
    cpu = {k: statistics.median(r.get(k, 0.0) for r in cpus) for k in cpus[0]}
    flt = {k: statistics.median(r.get(k, 0.0) for r in faults) for k in faults[0]}
    phases = ["phase: prepare", "phase: dedup stage", "phase: finalize", "finalize: summary", "finalize: record"]
    med["phase: ingest + tag (rest)"] = med["night (wall)"] - sum(med[p] for p in phases)
    cpu["phase: ingest + tag (rest)"] = float("nan")
    state = "LOADED" if load_before[0] / (os.cpu_count() or 1) > 0.5 else "QUIET"  # after includes our own work
    report = {"docs": sum(pq.read_metadata(s).num_rows for s in shards), "workers": args.workers,
              "repetitions": args.repeat, "median_seconds": {k: round(v, 3) for k, v in med.items()},
              "median_cpu_seconds": {k: round(v, 3) for k, v in cpu.items() if v == v},
              "median_minor_faults": {k: int(v) for k, v in flt.items()},
              "each": [{k: round(v, 3) for k, v in r.items()} for r in runs], "floor": fl,
              "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in load_after],
              "machine": state}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "profile_dedup.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{report['docs']} docs, {args.workers} workers, median of {args.repeat}; load "
          f"{load_before[0]:.1f} -> {load_after[0]:.1f} on {os.cpu_count()} cores: {state}")
    order = ["night (wall)", "phase: prepare", "phase: ingest + tag (rest)", "phase: dedup stage", "phase: finalize"]
    print(f"  {'step':34s} {'wall s':>8s} {'CPU s':>8s} {'faults':>8s}  (CPU, faults: the step's thread; "
          "night: the process, all threads)")
    print(f"  {'night: system CPU':34s} {'':8s} {cpu['night: system']:8.3f}")
    for k in order + sorted(k for k in med if k not in order):
        print(f"  {k:34s} {med[k]:8.3f} {cpu.get(k, float('nan')):8.3f} {flt.get(k, float('nan')):8.0f}")
    print(f"floor: {fl}")


if __name__ == "__main__":
    main()
