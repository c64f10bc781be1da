"""Ablation: uniform replay vs Glia's TMR replay at the same budget and seed (seed 000's "what to measure").

    .venv/bin/python bench/ablate.py            # ~3-4 min of training on 2 cores (all arms)
    .venv/bin/python bench/ablate.py --quick    # ~30 s smoke run

A tiny byte-level transformer LM (2 layers, width 128, context 128; nothing from a hub) learns
the example corpus night by night, the way a model is trained on a corpus that grows:

1. A do-not-forget set is held out of night 1 (a stratified ~10 % per source, at least two
   documents per source so the rare strata count, none involved in a duplicate pair), and a
   held-out slice of night 3 measures learning of new data. Neither is ever trained on, and
   Glia never sees them.
2. Each night the real nightly flow (``flows.nightly.nightly_hygiene``: exact and near dedup,
   then the ``replay`` stage) runs over the delivered shards into one DuckDB catalog.
3. Night 1: the model trains on night 1's windows. The state is snapshotted.
4. Nights 2 and 3, from the same snapshot for each arm: every step is ``batch_new`` windows of
   tonight's new documents (identical for every arm) plus ``batch_replay`` windows of earlier
   nights' documents, drawn
   - (a) ``uniform``: uniformly (alpha = 0) from the same pool Glia draws from;
   - (b) ``tmr``: the replay set the flow's ``replay`` stage built and committed tonight
     (priorities from whatever terms have data, retention, IS weights that scale each
     replayed window's loss);
   - (c) ``tmr_loss``: the same build plus a user-supplied importance (``importance_sql`` over a
     Parquet file): the arm's own model's loss on each earlier document before the night,
     i.e. the trainer tells Glia what it finds hard. Built read-only (a what-if set).
   Same number of replay draws, same seed, same window sampling. (a) and (c) are built from
   the catalog without writing to it, so the retention state is the nightly stage's alone.
5. After each night: mean byte loss (nats) on the do-not-forget set, per source, micro
   (per byte) and macro (mean over sources), and on night 3's held-out documents.

Results go to ``bench/results/ablate.json`` (``ablate_quick.json`` with ``--quick``). The
numbers are whatever they are: this is a measurement, not a demonstration.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
COMMONS = ROOT / "examples" / "commons"
sys.path.insert(0, str(ROOT / "bench"))

from tinylm import (  # noqa: E402  (the shared tiny LM; see bench/tinylm.py)
    Budget, eval_set, learner_losses, make_model, train, whatif_plan,
)

DEFAULT = Budget(night1_steps=300, night_steps=150, batch_new=16, batch_replay=16)
QUICK = Budget(night1_steps=40, night_steps=20, batch_new=8, batch_replay=8, eval_windows=1)


# -- corpus -----------------------------------------------------------------------------------


def load_nights() -> dict[int, pa.Table]:
    return {n: pa.concat_tables([pq.read_table(p) for p in sorted((COMMONS / f"night{n}").glob("*.parquet"))])
            for n in (1, 2, 3)}


def stratified_holdout(table: pa.Table, share: float, minimum: int, avoid: set[str], rng: np.random.Generator) -> np.ndarray:
    """A mask of held-out rows: ``share`` of each source (at least ``minimum``), never an id in ``avoid``."""
    src = np.asarray(table["source"].to_pylist(), dtype=object)
    ids = np.asarray(table["id"].to_pylist(), dtype=object)
    mask = np.zeros(table.num_rows, bool)
    for s in sorted(set(src)):
        cand = np.flatnonzero((src == s) & ~np.isin(ids, list(avoid)))
        k = min(len(cand) - 1, max(minimum, int(round(share * (src == s).sum()))))
        if k > 0:
            mask[rng.choice(cand, size=k, replace=False)] = True
    return mask


def split_corpus(seed: int) -> tuple[dict[int, pa.Table], pa.Table, pa.Table]:
    """Training documents per night, the do-not-forget set (night 1) and the new-data set (night 3)."""
    with (COMMONS / "planted.csv").open(newline="") as fh:
        paired = {r[k] for r in csv.DictReader(fh) for k in ("doc_id", "duplicate_of")}
    rng = np.random.default_rng(seed)
    nights = load_nights()
    dnf = stratified_holdout(nights[1], 0.10, 2, paired, rng)
    new = stratified_holdout(nights[3], 0.05, 1, paired, rng)
    train = dict(nights)
    train[1] = nights[1].filter(pa.array(~dnf))
    train[3] = nights[3].filter(pa.array(~new))
    return train, nights[1].filter(pa.array(dnf)), nights[3].filter(pa.array(new))


# -- Glia -------------------------------------------------------------------------------------


def write_night(table: pa.Table, root: Path, night: int) -> None:
    """Deliver a night's training documents as two shards."""
    folder = root / f"night{night}"
    folder.mkdir(parents=True)
    half = table.num_rows // 2
    pq.write_table(table.slice(0, half), folder / "part-00000.parquet")
    pq.write_table(table.slice(half), folder / "part-00001.parquet")


def composition(items: list[dict[str, Any]], source_of: dict[str, str]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for it in items:
        s = source_of.get(it["doc_id"], "?")
        counts[s] = counts.get(s, 0) + 1
    w = np.array([it["weight"] for it in items])
    return {"share_by_source": {k: round(v / len(items), 4) for k, v in sorted(counts.items())},
            "distinct_documents": len({it["doc_id"] for it in items}), "mean_weight": float(w.mean()),
            "min_weight": float(w.min())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a ~30 s smoke run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="result JSON (default bench/results/ablate.json, _quick with --quick)")
    ap.add_argument("--workdir", type=Path, help="keep the shards and catalog here (default: a temp folder)")
    ap.add_argument("--taggers", default="exact,minhash", help="taggers for the nightly runs")
    ap.add_argument("--stages", default="dedup", help="night stages before replay (e.g. dedup,novelty,decide)")
    ap.add_argument("--no-is-weights", action="store_true", help="ignore the TMR set's IS weights in the loss")
    ap.add_argument("--arms", default="uniform,tmr,tmr_loss",
                    help="uniform | tmr (tonight's replay set) | tmr_loss (+ the learner's loss as importance)")
    ap.add_argument("--night1-steps", type=int)
    ap.add_argument("--night-steps", type=int)
    args = ap.parse_args(argv)
    b = QUICK if args.quick else DEFAULT
    if args.night1_steps or args.night_steps:
        b = Budget(**{**asdict(b), **{k: v for k, v in (("night1_steps", args.night1_steps),
                                                          ("night_steps", args.night_steps)) if v}})
    arms = [a for a in args.arms.split(",") if a]
    unknown = sorted(set(arms) - {"uniform", "tmr", "tmr_loss"})
    if unknown:
        ap.error(f"unknown arm(s) {unknown}; arms are uniform, tmr, tmr_loss")
    out = args.out or ROOT / "bench" / "results" / ("ablate_quick.json" if args.quick else "ablate.json")

    work = args.workdir or Path(tempfile.mkdtemp(prefix="glia-ablate-"))
    if args.workdir and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("GLIA_HOME", str(work / "glia-home"))
    import torch

    from glia.curation.dataloader import ReplayPlan, iter_replay
    from glia.flows.nightly import nightly_hygiene

    torch.manual_seed(args.seed)
    t_start = time.monotonic()
    train_docs, dnf, new_eval = split_corpus(args.seed)
    source_of = {i: s for t in train_docs.values() for i, s in zip(t["id"].to_pylist(), t["source"].to_pylist())}
    size = b.night_steps * b.batch_replay
    # The nightly stage's replay budget and seed; the what-if arms draw with the same ones.
    flow_params = {"size": size, "seed": args.seed, "new_fraction": 0.0}
    stages = [s for s in args.stages.split(",") if s and s != "replay"] + ["replay"]
    rules = work / "rules.toml"
    rules.write_text(
        f"[run]\ntaggers = {json.dumps(args.taggers.split(','))}\nstages = {json.dumps(stages)}\n"
        "[stages.replay]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in flow_params.items()))
    root, db = work / "shards", work / "glia.duckdb"

    def night_run(n: int) -> float:
        write_night(train_docs[n], root, n)
        t = time.monotonic()
        outcome = nightly_hygiene(shards_root=str(root), db_path=str(db), rules_path=str(rules))
        if outcome.status != "completed":
            raise RuntimeError(f"night {n}: the nightly run ended {outcome.status}")
        return time.monotonic() - t

    result: dict[str, Any] = {
        "budget": asdict(b), "seed": args.seed, "mode": "quick" if args.quick else "default",
        "taggers": args.taggers.split(","), "stages": stages, "is_weights": not args.no_is_weights,
        "do_not_forget": {"documents": dnf.num_rows, "by_source": dict(zip(*np.unique(dnf["source"].to_pylist(),
                                                                                      return_counts=True)))},
        "new_eval_documents": new_eval.num_rows,
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                    "torch": torch.__version__},
        "arms_run": arms, "glia_seconds": {},
    }
    result["do_not_forget"]["by_source"] = {k: int(v) for k, v in result["do_not_forget"]["by_source"].items()}

    # Night 1: shared by every arm.
    result["glia_seconds"]["night1"] = round(night_run(1), 2)
    model = make_model(b)
    opt = torch.optim.AdamW(model.parameters(), lr=b.lr, weight_decay=0.01)
    info = train(model, opt, b, b.night1_steps, train_docs[1]["text"].to_pylist(), None, args.seed, 1, False, 0)
    result["night1"] = {"train": info, "do_not_forget": eval_set(model, dnf, b), "new": eval_set(model, new_eval, b)}
    print(f"night 1: {info['seconds']} s, do-not-forget loss {result['night1']['do_not_forget']['micro']:.4f}", flush=True)
    states = {arm: (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())) for arm in arms}
    result["arms"] = {arm: {} for arm in arms}

    from glia.curation.replay import TERMS, ReplayParams
    from glia.storage.catalog import Catalog

    for n in (2, 3):
        result["glia_seconds"][f"night{n}"] = round(night_run(n), 2)
        earlier = {i: t for k in range(1, n) for i, t in zip(train_docs[k]["id"].to_pylist(), train_docs[k]["text"].to_pylist())}
        for arm in arms:
            model.load_state_dict(states[arm][0])
            opt.load_state_dict(states[arm][1])
            if arm == "tmr":  # the set tonight's replay stage built and committed
                plan = ReplayPlan.from_db(db)
                with Catalog(db, read_only=True) as cat:
                    set_row = cat.con.sql("SELECT * EXCLUDE (params, created_at) FROM replay_sets WHERE set_id = ?",
                                          params=[plan.set_id]).to_arrow_table().to_pylist()[0]
            elif arm == "uniform":  # alpha = 0: P(i) = 1/N over the same pool, every IS weight 1
                plan, set_row = whatif_plan(db, ReplayParams(**flow_params, alpha=0.0, record_state=False,
                                                             weights={t: 0.0 for t in TERMS}))
            else:  # tmr_loss: the same TMR build plus the learner's own loss as user-supplied importance
                path = learner_losses(model, earlier, b, work / f"losses-night{n}.parquet")
                sql = f"SELECT doc_id, loss AS importance FROM read_parquet('{path}')"
                plan, set_row = whatif_plan(db, ReplayParams(**flow_params, record_state=False, importance_sql=sql))
            items = list(iter_replay(plan, seed=args.seed, epoch=n))
            assert len(items) == size, (arm, n, len(items))
            use_w = arm != "uniform" and not args.no_is_weights
            info = train(model, opt, b, b.night_steps, train_docs[n]["text"].to_pylist(), items, args.seed, n, use_w,
                         b.night1_steps + (n - 2) * b.night_steps)
            keep = ("set_id", "size", "beta", "n_pool", "terms", "terms_missing", "rarity_source", "origin")
            result["arms"][arm][f"night{n}"] = {
                "train": info, "replay_set": {k: set_row.get(k) for k in keep},
                "replay_draws": composition(items, source_of), "do_not_forget": eval_set(model, dnf, b)}
            if n == 3:
                result["arms"][arm]["new_data_after_night3"] = eval_set(model, new_eval, b)
                d = result["arms"][arm]["night3"]["do_not_forget"]
                print(f"{arm:8s} do-not-forget after night 3: micro {d['micro']:.4f}, macro {d['macro']:.4f}; "
                      f"new data {result['arms'][arm]['new_data_after_night3']['micro']:.4f}", flush=True)
            states[arm] = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()))

    final = {arm: result["arms"][arm]["night3"]["do_not_forget"] for arm in arms}
    result["summary"] = {
        "do_not_forget_micro": {"after_night1": result["night1"]["do_not_forget"]["micro"],
                                **{a: final[a]["micro"] for a in arms}},
        "do_not_forget_macro": {"after_night1": result["night1"]["do_not_forget"]["macro"],
                                **{a: final[a]["macro"] for a in arms}},
        "do_not_forget_rare_strata": {a: {s: final[a]["per_source"][s] for s in ("devil", "jargon")
                                          if s in final[a]["per_source"]} for a in arms},
        "new_data": {a: result["arms"][a]["new_data_after_night3"]["micro"] for a in arms},
        "best_micro": min(arms, key=lambda a: final[a]["micro"]),
        "best_macro": min(arms, key=lambda a: final[a]["macro"]),
    }
    result["total_seconds"] = round(time.monotonic() - t_start, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=lambda o: o.item() if hasattr(o, "item") else str(o)) + "\n")
    s = result["summary"]
    print(json.dumps({k: s[k] for k in ("do_not_forget_micro", "do_not_forget_macro", "do_not_forget_rare_strata",
                                        "new_data")}, indent=1))
    print(f"wrote {out} ({result['total_seconds']} s; work folder {work})")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(math.isfinite(v) for v in s["new_data"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
