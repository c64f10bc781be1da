"""Scale benchmark: N nights of M documents through ``glia run``, one process per night, as a user runs it.

    .venv/bin/python bench/bench_scale.py --nights 10 --docs 100000          # dedup only (exact + MinHash/LSH)
    .venv/bin/python bench/bench_scale.py --models --nights 10 --docs 10000  # every tagger and stage, CPU

The corpus comes from ``bench/make_scale_corpus.py`` (real sentences from the pinned inputs,
``--copy-share`` edited copies of earlier nights from night 2 on; built in a child process and
kept between runs). Every night is ``glia run <night> --db <work>/glia.duckdb --rules <rules>``
in its own process, on one database that accumulates the history. Per night it prints:

- documents tonight, documents already in the history, exact and near duplicates found (and
  the edited copies planted);
- night seconds (``runs.seconds``: from discovery to commit), of which ``stages+commit`` is
  what follows tagging (the dedup join against the history, the other stages, the one DuckDB
  transaction), and wall seconds (the process: start-up, imports, Prefect's embedded server
  where it runs); the ratio night N / night 1 of night and wall seconds;
- peak RSS of the ``glia run`` process (``ru_maxrss`` from ``wait4``, which covers the
  process and the children it reaped, such as Prefect's server);
- the state on disk (the database file plus its Parquet state folder, ``glia_data/`` beside
  ``glia.duckdb``) and its growth per document.

Before night 1, a warm-up night of a few documents into a throw-away database fills the same
``GLIA_HOME`` (Prefect's database, the dequantised scoring LM, the trained risk head), so night 1
pays no one-off cost that later nights do not. The summary fits the state on disk to the
documents held (bytes per document, and how far the points stray from the line), compares
the last nights with the first, and reads back which planted copies were flagged (recall, all
and at true Jaccard >= 0.8).

Night times on a shared machine swing with the other load, which can hide a slow growth with
history. So the history probe then times, in this process, the queries a night makes against
the history (``storage.history.History``: tonight's exact hashes, the LSH band-key join, the
candidates' signatures), for the last night's documents against the first 1, 2, ... N-1
nights' segments (best of three each), and fits seconds to history documents: the slope is
what each further million documents of history adds to a night of ``--docs`` documents.
Results: stdout and ``bench/results/bench_scale[_models].json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[1]
GLIA = ROOT / ".venv" / "bin" / "glia"
TARGET_RATIO = 1.2


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM): a lower bound on every child's ``ru_maxrss``,
    since Linux starts a child's count from its parent's at fork."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def state_bytes(db: Path) -> int:
    """Bytes of a Glia state: the database (with its WAL, if any) and its state folder
    (``engine.pipeline.default_state_dir``: ``glia_data/`` beside ``glia.duckdb``)."""
    files = [db, db.with_name(db.name + ".wal")]
    data = db.with_name(f"{db.stem}_data")
    if data.is_dir():
        files += [p for p in data.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files if p.exists())


def run_night(shards: Path, db: Path, rules: Path, env: dict[str, str], log: Path) -> dict:
    """One ``glia run`` process: its exit, wall seconds and peak RSS; raises if it failed."""
    started = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen([str(GLIA), "run", str(shards), "--db", str(db), "--rules", str(rules), "-q"],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    if proc.returncode != 0:
        raise RuntimeError(f"glia run {shards} exited {proc.returncode}; its output: {log}\n{log.read_text()[-3000:]}")
    return {"wall_seconds": round(wall, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def last_run(db: Path) -> dict:
    """The latest run's row and its timing metrics (``seconds.<step>``, ``<stage>.seconds``), read after
    the night's process exited."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        run_id, status, seconds, n_docs, exact, near, code = con.execute(
            "SELECT run_id, status, seconds, n_docs, n_exact_dups, n_near_dups, code_version FROM runs "
            "ORDER BY run_id DESC LIMIT 1"
        ).fetchone()
        steps = dict(con.execute(
            "SELECT metric, round(value, 2) FROM run_metrics WHERE run_id = ? "
            "AND (metric LIKE 'seconds.%' OR metric LIKE '%.seconds') ORDER BY metric",
            [run_id]).fetchall())
    finally:
        con.close()
    return {"run_id": run_id, "status": status, "night_seconds": round(seconds, 2), "docs": n_docs,
            "exact_dups": exact, "near_dups": near, "code_version": code, "step_seconds": steps}


def build_corpus(args: argparse.Namespace, corpus: Path) -> None:
    """``make_scale_corpus.py`` in a child process, so that this process stays small (see peak_rss_mb)."""
    cmd = [sys.executable, str(ROOT / "bench" / "make_scale_corpus.py"), "--nights", str(args.nights),
           "--docs", str(args.docs), "--doc-chars", str(args.doc_chars), "--out", str(corpus)]
    subprocess.run(cmd + (["--allow-mismatch"] if args.allow_corpus_mismatch else []), check=True, cwd=ROOT)


def warm_up(night1: Path, work: Path, rules: Path, env: dict[str, str], docs: int = 200) -> float:
    """A night of ``docs`` documents of night 1 into a throw-away database; its wall seconds."""
    import pyarrow.parquet as pq  # only here: this process stays small for the measured nights

    folder = work / "warmup"
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "shards").mkdir(parents=True)
    first = sorted(night1.glob("part-*.parquet"))[0]
    table = pq.read_table(first).slice(0, docs)
    pq.write_table(table, folder / "shards" / "part-00000.parquet")
    del table
    result = run_night(folder / "shards", folder / "glia.duckdb", rules, env, work / "warmup.log")
    shutil.rmtree(folder, ignore_errors=True)
    return result["wall_seconds"]


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least-squares ``y = a + b x``: (a, b, largest relative deviation of a point from the line)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    a = my - b * mx
    dev = max(abs(y - (a + b * x)) / y for x, y in zip(xs, ys, strict=True) if y)
    return a, b, dev


def copies_planted(night_dir: Path) -> list[tuple[str, float]]:
    """The night's planted copies: (doc_id, true Jaccard with its original)."""
    path = night_dir / "copies.csv"
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as fh:
        return [(r["doc_id"], float(r["jaccard"])) for r in csv.DictReader(fh)]


def copy_recall(db: Path, copies: list[tuple[str, float]]) -> dict:
    """Share of planted copies flagged as a duplicate (of anything), all and at true Jaccard >= 0.8.

    Read once after the last night: the query's memory would otherwise count in this process's
    peak, the floor of every later child's ``ru_maxrss``.
    """
    if not copies:
        return {}
    con = duckdb.connect(str(db), read_only=True)
    try:
        con.execute("CREATE TEMP TABLE planted AS SELECT unnest(?) AS doc_id, unnest(?) AS jaccard",
                    [[c[0] for c in copies], [c[1] for c in copies]])
        n, hit, n8, hit8 = con.execute(
            "SELECT count(*), count(coalesce(d.near_dup_of, d.exact_dup_of)), count(*) FILTER (p.jaccard >= 0.8), "
            "count(coalesce(d.near_dup_of, d.exact_dup_of)) FILTER (p.jaccard >= 0.8) "
            "FROM planted p LEFT JOIN v_documents d USING (doc_id)").fetchone()
    finally:
        con.close()
    return {"copies": n, "flagged": hit, "recall": round(hit / n, 4),
            "copies_j>=0.8": n8, "recall_j>=0.8": round(hit8 / max(n8, 1), 4)}


def history_probe(db: Path, work: Path, limit: int = 32, repeat: int = 3) -> list[dict]:
    """Seconds of a night's history queries for the last night's documents against 1..N-1 earlier nights.

    The last night's own segments stand in for tonight: its ``exact`` text hashes and its
    ``lsh`` band keys (which leave out exact copies, as the night's query does). ``limit``
    is ``[stages.dedup].max_history_candidates``.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    sys.path.insert(0, str(ROOT))
    from glia.storage.catalog import Catalog
    from glia.storage.history import History

    with Catalog(db, read_only=True) as cat:
        segments = cat.segments()
        active = [r.shard_id for r in cat.shards() if r.status == "active"]

    def run_of(segment: object) -> int:
        return int(Path(segment.path).stem.split("-")[1])

    last = max(run_of(s) for s in segments)
    mine = {s.kind: s.path for s in segments if run_of(s) == last}
    lsh = pq.read_table(mine["lsh"], columns=["band", "key", "doc_id"])
    ids = pc.dictionary_encode(lsh["doc_id"]).combine_chunks()
    query = pa.table({"band": lsh["band"], "key": lsh["key"], "idx": ids.indices.cast(pa.int64())})
    hashes = pq.read_table(mine["exact"], columns=["text_hash"])
    rows = []
    for nights in range(1, last):
        history = History([s for s in segments if run_of(s) <= nights], active, tmp_dir=work / "probe_tmp")
        try:
            best: dict[str, float] = {}
            for _ in range(repeat):
                t0 = time.perf_counter()
                exact = history.exact_matches(hashes)
                t1 = time.perf_counter()
                cands = history.lsh_candidates(query, limit)
                t2 = time.perf_counter()
                docs = history.documents(sorted(set(cands["doc_id"].to_pylist())))
                t3 = time.perf_counter()
                for name, sec in (("exact", t1 - t0), ("lsh_join", t2 - t1), ("signatures", t3 - t2), ("total", t3 - t0)):
                    best[name] = min(best.get(name, sec), sec)
        finally:
            history.close()
        rows.append({"history_nights": nights, "history_lsh_rows": sum(s.n_rows for s in segments
                                                                       if s.kind == "lsh" and run_of(s) <= nights),
                     "candidate_pairs": cands.num_rows, "exact_matches": exact.num_rows, "signature_rows": docs.num_rows,
                     **{f"{k}_seconds": round(v, 3) for k, v in best.items()}})
    return rows


def git_state() -> dict:
    """The commit measured and the tracked files that differed from it (a shared working tree)."""
    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, check=False).stdout
    # Porcelain lines are "XY path": the status columns may be blank, so nothing is stripped before the slice.
    return {"head": git("rev-parse", "HEAD").strip(),
            "modified_tracked_files": [line[3:] for line in git("status", "--porcelain", "-uno").splitlines()]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", action="store_true", help="every tagger and stage (bench/scale_models.toml)")
    ap.add_argument("--nights", type=int, default=10)
    ap.add_argument("--docs", type=int, help="documents per night (default 100000; 10000 with --models)")
    ap.add_argument("--doc-chars", type=int, default=1400)
    ap.add_argument("--rules", type=Path, help="rules file (default bench/scale_dedup.toml or scale_models.toml)")
    ap.add_argument("--corpus", type=Path, help="corpus folder (default bench/data/scale-<docs>)")
    ap.add_argument("--work", type=Path, help="database, state and GLIA_HOME (default bench/data/scale-work[-models])")
    ap.add_argument("--out", type=Path, help="result JSON (default bench/results/bench_scale[_models].json)")
    ap.add_argument("--allow-corpus-mismatch", action="store_true", help="run on a corpus whose hash differs")
    args = ap.parse_args()
    suffix = "_models" if args.models else ""
    args.docs = args.docs or (10000 if args.models else 100000)
    rules = (args.rules or ROOT / "bench" / f"scale_{'models' if args.models else 'dedup'}.toml").resolve()
    corpus = (args.corpus or ROOT / "bench" / "data" / f"scale-{args.docs}").resolve()
    work = (args.work or ROOT / "bench" / "data" / f"scale-work{suffix.replace('_', '-')}").resolve()
    out = args.out or ROOT / "bench" / "results" / f"bench_scale{suffix}.json"

    t0 = time.perf_counter()
    build_corpus(args, corpus)
    manifest = json.loads((corpus / "corpus.json").read_text())
    print(f"corpus ready in {time.perf_counter() - t0:.0f} s: {corpus}", flush=True)

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    db = work / "glia.duckdb"
    env = {**os.environ, "GLIA_HOME": str(work / "glia_home")}
    warm = warm_up(corpus / "night01", work, rules, env)
    print(f"warm-up night (Prefect home, model caches): {warm:.1f} s wall", flush=True)

    code = git_state()
    header = (f"{'night':>5} {'docs':>8} {'history':>9} {'exact':>6} {'near':>6} {'copies':>6} {'night s':>8} "
              f"{'st+commit':>9} {'wall s':>7} {'RSS MB':>7} {'state MB':>9} {'B/doc':>7} {'night/1':>7} {'wall/1':>7} "
              f"{'load':>5}")
    print(header, flush=True)
    rows: list[dict] = []
    history = 0
    for night in range(1, args.nights + 1):
        shards = corpus / f"night{night:02d}"
        load_before = os.getloadavg()[0]
        proc = run_night(shards, db, rules, env, work / f"night{night:02d}.log")
        row = {"night": night, **last_run(db), **proc, "history_docs": history,
               "copies_planted": len(copies_planted(shards)),
               "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
        # The steps before it (prepare, ingest + tag) scale with tonight only; this is the rest.
        before = sum(row["step_seconds"].get(k, 0.0) for k in ("seconds.prepare", "seconds.tag"))
        row["stages_commit_seconds"] = round(row["night_seconds"] - before, 2)
        history += row["docs"]
        row["state_bytes"] = state_bytes(db)
        row["state_bytes_per_doc"] = round(row["state_bytes"] / history, 1)
        row["night_ratio"] = round(row["night_seconds"] / rows[0]["night_seconds"], 3) if rows else 1.0
        row["wall_ratio"] = round(row["wall_seconds"] / rows[0]["wall_seconds"], 3) if rows else 1.0
        rows.append(row)
        print(f"{night:>5} {row['docs']:>8,} {row['history_docs']:>9,} {row['exact_dups']:>6,} {row['near_dups']:>6,} "
              f"{row['copies_planted']:>6,} {row['night_seconds']:>8.2f} {row['stages_commit_seconds']:>9.2f} "
              f"{row['wall_seconds']:>7.2f} "
              f"{row['peak_rss_mb']:>7.0f} {row['state_bytes'] / 1e6:>9.1f} {row['state_bytes_per_doc']:>7.0f} "
              f"{row['night_ratio']:>7.2f} {row['wall_ratio']:>7.2f} {load_before:>5.2f}", flush=True)

    parent_peak = peak_rss_mb()  # before the read-back and probe below, which no child ran beside
    recall = copy_recall(db, [c for n in range(2, args.nights + 1) for c in copies_planted(corpus / f"night{n:02d}")])
    held = [r["history_docs"] + r["docs"] for r in rows]
    probe = history_probe(db, work) if args.nights > 1 else []
    for p in probe:
        p["history_docs"] = sum(r["docs"] for r in rows[: p["history_nights"]])
    if len(probe) > 1:
        _, per_doc, _ = linear_fit([float(p["history_docs"]) for p in probe], [p["total_seconds"] for p in probe])
        print(f"\nhistory probe ({rows[-1]['docs']:,} documents tonight): "
              + ", ".join(f"{p['history_docs']:,} -> {p['total_seconds']:.2f} s ({p['candidate_pairs']:,} candidates)"
                          for p in probe))
    else:
        per_doc = 0.0
    a, b, dev = linear_fit([float(h) for h in held], [float(r["state_bytes"]) for r in rows])
    k = min(3, len(rows))
    first_k = statistics.median(r["night_seconds"] for r in rows[:k])
    last_k = statistics.median(r["night_seconds"] for r in rows[-k:])
    summary = {
        "night_ratio_last_over_first": rows[-1]["night_ratio"],
        f"night_ratio_median_last{k}_over_first{k}": round(last_k / first_k, 3),
        "target_ratio": TARGET_RATIO,
        "night_seconds_min_max": [min(r["night_seconds"] for r in rows), max(r["night_seconds"] for r in rows)],
        "stages_commit_seconds_min_max": [min(r["stages_commit_seconds"] for r in rows),
                                          max(r["stages_commit_seconds"] for r in rows)],
        "wall_seconds_min_max": [min(r["wall_seconds"] for r in rows), max(r["wall_seconds"] for r in rows)],
        "peak_rss_mb_min_max": [min(r["peak_rss_mb"] for r in rows), max(r["peak_rss_mb"] for r in rows)],
        "state_fit": {"bytes_per_doc": round(b, 1), "intercept_bytes": round(a), "max_relative_deviation": round(dev, 4)},
        "docs_held": held[-1],
        "planted_copies_flagged": recall,
        "history_probe_seconds_per_million_history_docs": round(per_doc * 1e6, 3),
    }
    result = {
        "mode": "models" if args.models else "dedup",
        "command": " ".join(["bench/bench_scale.py", *sys.argv[1:]]),
        "rules": str(rules.relative_to(ROOT)) if rules.is_relative_to(ROOT) else str(rules),
        "corpus": {"path": str(corpus), "key": manifest["key"], "check": manifest.get("check"),
                   "nights_sha256": {n: v["sha256"] for n, v in sorted(manifest["nights"].items())[: args.nights]}},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "note": "shared machine: other engineers' processes used the CPU during the run (load_avg_1min per night)"},
        "code": code,
        "warm_up_wall_seconds": warm,
        "bench_process_peak_rss_mb_during_nights": round(parent_peak, 1),
        "nights": rows,
        "history_probe": probe,
        "summary": summary,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nnight N / night 1: {summary['night_ratio_last_over_first']} at night {args.nights} "
          f"(median of the last {k} / first {k}: {summary[f'night_ratio_median_last{k}_over_first{k}']}; target <= {TARGET_RATIO})")
    print(f"state on disk: {b:,.0f} bytes per document held + {a / 1e6:,.1f} MB "
          f"(points within {dev:.1%} of the line); peak RSS {summary['peak_rss_mb_min_max'][0]:.0f}-"
          f"{summary['peak_rss_mb_min_max'][1]:.0f} MB (this process peaked at "
          f"{result['bench_process_peak_rss_mb_during_nights']} MB while they ran)")
    if probe:
        print(f"history queries: +{per_doc * 1e6:.3f} s per million documents of history for {rows[-1]['docs']:,} "
              "documents tonight (least-squares slope of the probe)")
    if recall:
        print(f"planted copies flagged: {recall['flagged']:,} of {recall['copies']:,} ({recall['recall']:.1%}); "
              f"at true Jaccard >= 0.8: {recall['recall_j>=0.8']:.1%} of {recall['copies_j>=0.8']:,}")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
