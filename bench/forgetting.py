"""Forgetting under a real distribution shift: no replay vs uniform vs Glia's TMR replay at equal training tokens.

    .venv/bin/python bench/forgetting.py            # the full benchmark (4 seeds, two at a time on 2 cores)
    .venv/bin/python bench/forgetting.py --quick    # CI smoke: tiny budgets, one seed, same arms and output

The corpus (``examples/forgetting``, built by ``bench/make_forgetting_corpus.py`` from the
pinned bench inputs) has night 1 = Austen + the King James Bible + two rare sources (the
Jargon File, The Devil's Dictionary; 4 % and 2 % of the night) and nights 2-3 = Shakespeare's
plays only: a hard shift to text night 1 never had.

Model: the tiny byte-level transformer LM of ``bench/tinylm.py`` (shared with ``bench/ablate.py``;
width 64, context 64 here), trained from scratch on night 1 to a stable loss: 5,120 steps of 40
windows (about 13 passes over night 1) under a cosine schedule (peak 1e-2, warm-up 30 steps,
decayed to a tenth by the end), its held-out losses recorded after each eighth of night 1 so the
result shows the curve flattening. Each later night re-warms (6 steps) and decays again, as
Ibrahim et al. (2024) recommend for continual pre-training, so every arm ends night 3 at the same
low learning rate. It is not SmolLM2-135M: on 2 CPU cores a full gradient step of SmolLM2 runs at
0.6-0.9 documents/s, so 4 seeds x 6 arms x 120 steps x 40 documents, plus a night 1 that learns
the corpus, would take days, not the 20 minutes this benchmark has; the tiny LM does a 40-window
step in ~0.02-0.04 s of one core.

Per seed:

1. Glia runs its real nights over the corpus (``engine.night.run_night``: exact and near
   dedup, ``decide`` with protected strata, then the ``replay`` stage; the rules are written
   into the work folder and recorded in the result), one catalog per replay configuration. Protected strata: rare sources by share
   (``[stages.decide.protect.rarity]``, share below 5 %) and an explicit ``do_not_forget``
   stratum from the corpus's id file. The replay stage builds tonight's TMR set over the
   earlier nights' documents (``new_fraction = 0``: replay is of old documents only).
2. The LM trains ``night1_steps`` steps of ``batch`` windows of night 1. Its losses on the
   strata are the "before" numbers.
3. Nights 2 and 3, every arm from the same night-1 state, ``night_steps`` steps of ``batch``
   windows each (so every arm trains on exactly the same number of tokens):

   - ``none``: all ``batch`` windows from tonight's new documents;
   - ``uniform@r``: ``(1 - r) batch`` new windows + ``r batch`` replayed ones drawn uniformly
     (alpha = 0) from the same pool Glia draws from;
   - ``tmr@r``: the same, the replayed windows taken from the set tonight's ``replay`` stage
     committed, read through ``curation.dataloader.iter_replay`` as a trainer would, each
     replayed loss scaled by its importance-sampling weight (1 under the default ``beta = 0``);
   - design variants (``--arms``), each with its own catalog filled by the replay stage:
     ``tmr_is@r`` (IS weights annealed 0.4 -> 1 as in Schaul et al., protected documents at
     weight 1: the default before this benchmark's second round), ``tmr_isw@r`` (the same with IS
     weights on protected documents too: the default before its first), ``tmr_noret@r`` (no
     retention decay: ``retention_floor = 1``), ``tmr_loss@r`` (before each night the arm's own
     model scores every old document and the night's replay stage takes that loss as
     ``importance_sql``) and ``tmr_prot3@r`` (the protected term weighs 3 instead of 1); and a
     diagnostic, not a policy:
     ``only_dnf@r`` spends every replayed window on the do-not-forget documents (uniformly), the
     most any replay set could do for that stratum at the budget;
   - ``union``: the upper bound, ``batch`` windows drawn from the union of every night's
     training documents so far (joint training at the same token budget).

   The new windows of every arm with the same replay ratio are identical (same seed and night).
   The ``r batch`` replay windows per step consume the first draws of the epoch's order of a
   set of ``night_steps * max_r * batch`` draws, so ``@5 %`` uses a uniform subsample of the set
   the ``@25 %`` arm uses.
4. Metrics after night 3, per stratum: ``forgetting = loss after - loss before`` (nats per byte,
   fixed windows) on night 1's held-out documents of each rare source (``rare_source:*``, the
   rarity-protected strata), on the do-not-forget documents (the explicit protected stratum;
   training documents, so this is memory of listed documents) and on the rest (night 1's
   held-out Austen and KJV), plus the loss on nights 2-3's held-out documents (``new``: plasticity).

Across seeds: mean and standard deviation per arm and stratum, and for each ratio the paired
difference TMR - uniform (same seed, same night-1 model, same new windows): it counts as
beyond the spread only when every seed has the same sign and ``|mean| > sd``.

Results: ``bench/results/forgetting.json`` (``forgetting_quick.json`` with ``--quick``) and a
printed table arm x stratum x ratio.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from tinylm import Budget, eval_set, learner_losses, make_model, train, whatif_plan  # noqa: E402

CORPUS = ROOT / "examples" / "forgetting"
NIGHTS = (1, 2, 3)
RATIOS = (0.05, 0.25)
BASE_ARMS = ("none", "uniform", "tmr", "union")
VARIANTS = ("tmr_is", "tmr_isw", "tmr_loss", "tmr_noret", "tmr_prot3", "only_dnf")
# The [stages.replay] lines each variant's own catalog adds to the benchmark's rules.
_SCHAUL = "beta = 0.4\nbeta_final = 1.0\n"  # IS weights annealed as in Schaul et al.
VARIANT_PARAMS = {"tmr_is": _SCHAUL + "protected_is_weight = false\n", "tmr_isw": _SCHAUL + "protected_is_weight = true\n",
                  "tmr_noret": "retention_floor = 1.0\n", "tmr_prot3": "weights = { protected = 3.0 }\n"}
RARE_SOURCES = ("jargon", "devil")  # the rare strata the rules protect (share < 5 % of the corpus)
NIGHT1_POINTS = 8  # night 1's held-out losses are evaluated after each eighth of its steps


@dataclass(frozen=True)
class Config:
    """The benchmark's budget: every arm gets ``night_steps`` steps of ``batch`` windows per later night."""

    night1_steps: int
    night_steps: int
    batch: int
    seeds: int
    eval_windows: int  # per evaluated document: its first eval_windows * ctx bytes
    ctx: int = 64
    d_model: int = 64  # ablate.py's 128 costs 3x the CPU per step: too much for 3 seeds x 6 arms in 20 min
    layers: int = 2
    heads: int = 4
    lr: float = 1e-2
    warmup: int = 30  # night 1's warm-up steps
    rewarm: int = 6  # each later night's warm-up steps (10 % of it) before its own cosine decay
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1

    def budget(self, replay_windows: int = 0, night: int = 1) -> Budget:
        """The tiny LM's budget for an arm that replays ``replay_windows`` of its ``batch`` windows."""
        return Budget(night1_steps=self.night1_steps, night_steps=self.night_steps,
                      batch_new=self.batch - replay_windows, batch_replay=replay_windows, ctx=self.ctx,
                      d_model=self.d_model, layers=self.layers, heads=self.heads, lr=self.lr,
                      warmup=self.warmup if night == 1 else self.rewarm, eval_windows=self.eval_windows,
                      schedule=self.schedule, min_lr_ratio=self.min_lr_ratio)


FULL = Config(night1_steps=5120, night_steps=60, batch=40, seeds=4, eval_windows=4)
QUICK = Config(night1_steps=12, night_steps=4, batch=20, seeds=1, eval_windows=1)


# -- corpus and strata --------------------------------------------------------------------------


def load_corpus(corpus: Path) -> tuple[dict[int, pa.Table], pa.Table, list[str]]:
    """Training documents per night, the held-out documents (with ``night``) and the do-not-forget ids."""
    if not (corpus / "night1").is_dir():
        raise FileNotFoundError(f"no forgetting corpus at {corpus}: run `python bench/make_forgetting_corpus.py`")
    nights = {n: pq.read_table(corpus / f"night{n}") for n in NIGHTS}
    held = pq.read_table(corpus / "heldout.parquet")
    dnf = [ln.strip() for ln in (corpus / "do_not_forget.txt").read_text().splitlines()
           if ln.strip() and not ln.startswith("#")]
    return nights, held, dnf


def strata_table(nights: dict[int, pa.Table], held: pa.Table, dnf: list[str]) -> pa.Table:
    """The evaluation documents with their ``stratum``: ``rare_source:<s>`` and ``rest`` (night 1's
    held-out documents), ``do_not_forget`` (the listed night-1 training documents), ``new``
    (nights 2-3's held-out documents)."""
    h_src = np.asarray(held["source"].to_pylist(), dtype=object)
    h_night = held["night"].to_numpy()
    stratum = np.where(h_night > 1, "new", np.where(np.isin(h_src, RARE_SOURCES),
                                                     np.char.add("rare_source:", h_src.astype(str)), "rest"))
    n1 = nights[1]
    keep = np.isin(np.asarray(n1["id"].to_pylist(), dtype=object), dnf)
    listed = n1.filter(pa.array(keep))
    return pa.table({
        "id": held["id"].to_pylist() + listed["id"].to_pylist(),
        "text": held["text"].to_pylist() + listed["text"].to_pylist(),
        "source": stratum.tolist() + ["do_not_forget"] * listed.num_rows,
    })


def rules_text(cfg_size: int, seed: int, dnf_file: Path) -> str:
    """The Glia rules for the benchmark's nights (recorded in the result)."""
    return (
        "[run]\ntaggers = [\"exact\", \"minhash\"]\nstages = [\"dedup\", \"decide\", \"replay\"]\n"
        "workers = 1\norchestrator = \"plain\"\n"
        "[stages.decide.protect.rarity]\ncolumns = [\"source\"]\nshare_below = 0.05\nmax_share = 0.05\n"
        "[stages.decide.protect.clusters]\nenabled = false\n"
        f"[stages.decide.protect.explicit.do_not_forget]\nids_file = {json.dumps(str(dnf_file))}\n"
        f"[stages.replay]\nsize = {cfg_size}\nseed = {seed}\nnew_fraction = 0.0\n"
    )


# -- one seed -----------------------------------------------------------------------------------


def replay_windows(cfg: Config, r: float) -> int:
    return int(round(r * cfg.batch))


def arm_names(arms: list[str]) -> list[str]:
    """Expand arm kinds into run names: ``none``, ``union`` and ``<kind>@<r>`` for each ratio."""
    out = []
    for a in arms:
        out += [a] if a in ("none", "union") else [f"{a}@{int(r * 100)}%" for r in RATIOS]
    return out


def protected_summary(db: Path) -> dict[str, int]:
    """Documents per protected stratum in the catalog (what the decide stage protected)."""
    from glia.storage.catalog import Catalog

    with Catalog(db, read_only=True) as cat:
        cols = set(cat.con.sql("SELECT * FROM v_documents LIMIT 0").columns)
        if "strata" not in cols:
            return {}
        rows = cat.con.sql("SELECT s, count(DISTINCT doc_id) FROM (SELECT doc_id, unnest(strata) AS s FROM v_documents) "
                           "GROUP BY s ORDER BY s").fetchall()
    return {str(k): int(v) for k, v in rows}


def draws_by_stratum(items: list[dict[str, Any]], stratum_of: dict[str, str]) -> dict[str, float]:
    """Share of replay draws per stratum of the drawn document, and their mean IS weight per stratum."""
    counts: dict[str, int] = {}
    weights: dict[str, list[float]] = {}
    for it in items:
        s = stratum_of.get(it["doc_id"], "?")
        counts[s] = counts.get(s, 0) + 1
        weights.setdefault(s, []).append(float(it["weight"]))
    n = max(1, len(items))
    return {"share": {k: round(v / n, 4) for k, v in sorted(counts.items())},
            "mean_weight": {k: round(float(np.mean(v)), 4) for k, v in sorted(weights.items())}}


def catalog_key(name: str) -> str | None:
    """Which Glia catalog an arm reads its replay set from: one per replay configuration, every
    one filled by the real nightly stage (``tmr_loss`` has one per ratio: its importance is the
    arm's own model's loss, so the two ratios' sets differ)."""
    kind = name.partition("@")[0]
    if kind in ("none", "union", "only_dnf"):
        return None
    if kind in ("uniform", "tmr"):
        return "tmr"  # uniform: a read-only alpha = 0 build over the same catalog's pool
    return name.replace("%", "") if kind == "tmr_loss" else kind


def night1_key(cfg: Config, seed: int, corpus: Path) -> str:
    """What night 1's model depends on: the seed, the fields of the budget night 1 uses, the corpus
    and torch's version."""
    import hashlib

    import torch

    fields = {k: v for k, v in asdict(cfg).items() if k not in ("night_steps", "seeds", "rewarm")}
    blob = json.dumps([seed, fields, (corpus / "corpus.json").read_text(), torch.__version__], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_seed(seed: int, cfg: Config, arms: list[str], corpus: Path, work: Path,
             night1_cache: Path | None = None) -> dict[str, Any]:
    """Glia's nights and every arm's training for one seed; losses per stratum before and after."""
    import torch

    from glia.engine.config import load_config
    from glia.curation.dataloader import ReplayPlan, iter_replay
    from glia.engine.night import run_night
    from glia.curation.replay import TERMS, ReplayParams

    torch.manual_seed(seed)
    nights, held, dnf = load_corpus(corpus)
    evals = strata_table(nights, held, dnf)
    n1_src = dict(zip(nights[1]["id"].to_pylist(), nights[1]["source"].to_pylist()))
    dnf_set = set(dnf)
    n1_text = dict(zip(nights[1]["id"].to_pylist(), nights[1]["text"].to_pylist()))
    dnf_ids = [i for i in n1_text if i in dnf_set]
    stratum_of = {i: ("do_not_forget" if i in dnf_set else f"rare_source:{s}" if s in RARE_SOURCES else "rest")
                  for i, s in n1_src.items()}
    for n in (2, 3):
        stratum_of.update({i: f"night{n}" for i in nights[n]["id"].to_pylist()})
    k_max = max(replay_windows(cfg, r) for r in RATIOS)
    size = cfg.night_steps * k_max
    seed_dir = work / f"seed{seed}"
    root = seed_dir / "shards"
    seed_dir.mkdir(parents=True)
    dnf_file = (corpus / "do_not_forget.txt").resolve()
    names = arm_names(arms)
    keys = sorted({k for k in map(catalog_key, names) if k})
    out: dict[str, Any] = {"seed": seed, "glia_seconds": {}, "arms": {}, "rules": {}}

    def night_run(key: str, n: int, importance: Path | None = None) -> Path:
        """Night ``n`` of catalog ``key`` through the real engine; returns the database."""
        extra = VARIANT_PARAMS.get(key, "")
        if importance is not None:
            extra += f"importance_sql = {json.dumps(f'SELECT doc_id, loss AS importance FROM read_parquet({chr(39)}{importance}{chr(39)})')}\n"
        rules = seed_dir / f"rules-{key}-n{n}.toml"
        rules.write_text(rules_text(size, seed, dnf_file) + extra)
        db = seed_dir / f"glia-{key}.duckdb"
        t = time.monotonic()
        outcome = run_night(root, db, load_config(rules))
        if outcome.status != "completed":
            raise RuntimeError(f"seed {seed} night {n} ({key}): the Glia night ended {outcome.status}")
        out["glia_seconds"][f"{key}/night{n}"] = round(time.monotonic() - t, 2)
        out["rules"][key] = rules.read_text()
        return db

    shutil.copytree(corpus / "night1", root / "night1")
    dbs = {key: night_run(key, 1) for key in keys}
    b1 = cfg.budget(0)
    model = make_model(b1)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    texts1 = nights[1]["text"].to_pylist()
    cached = night1_cache / f"night1-{night1_key(cfg, seed, corpus)}.pt" if night1_cache else None
    if cached is not None and cached.exists():
        # The night-1 model is a pure function of the seed, the night-1 budget and the corpus
        # (training is deterministic on CPU), so a design variant can start from the same one.
        saved = torch.load(cached, weights_only=False)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        out["night1"] = {**saved["night1"], "cache": str(cached)}
        before = out["night1"]["strata"]
    else:
        # In NIGHT1_POINTS segments, evaluating after each, so the result shows that night 1's held-out
        # loss had flattened before the shift (a stable loss): ``last_segment_change`` is the change
        # of the held-out losses over night 1's last segment, next to what the shift later costs.
        curve, seconds, tokens, done = [], 0.0, 0, 0
        for q in range(NIGHT1_POINTS):
            steps = cfg.night1_steps * (q + 1) // NIGHT1_POINTS - done
            info = train(model, opt, b1, steps, texts1, None, seed, 100 + q, False, done, (0, cfg.night1_steps))
            done += steps
            seconds += info["seconds"]
            tokens += info["tokens"]
            curve.append({"step": done, "train_loss": info["mean_new_loss"], "heldout": eval_set(model, evals, b1)["per_source"]})
        before = curve[-1]["heldout"]
        night1_strata = [s for s in before if s != "new"]
        out["night1"] = {"curve": curve, "tokens": tokens, "seconds": seconds, "strata": before,
                         "last_segment_change": {s: before[s] - curve[-2]["heldout"][s] for s in night1_strata}
                         if len(curve) > 1 else {}}
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "night1": out["night1"]}, cached)
    n1 = out["night1"]
    print(f"seed {seed} night 1: {n1['seconds']:.0f} s, {cfg.night1_steps} steps; held-out rest by segment "
          f"{[round(c['heldout']['rest'], 3) for c in n1['curve']]}; last segment's change "
          f"{json.dumps({k: round(v, 4) for k, v in n1['last_segment_change'].items()})}; "
          f"strata {json.dumps({k: round(v, 3) for k, v in before.items()})}", flush=True)
    states = {a: (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())) for a in names}
    for a in names:
        out["arms"][a] = {"tokens": 0, "replay_windows": 0, "catalog": catalog_key(a), "nights": {}}
    step0 = cfg.night1_steps
    for n in (2, 3):
        shutil.copytree(corpus / f"night{n}", root / f"night{n}")
        earlier = {i: t for k in range(1, n) for i, t in zip(nights[k]["id"].to_pylist(), nights[k]["text"].to_pylist())}
        for key in keys:
            importance = None
            if key.startswith("tmr_loss"):  # the trainer's scoring pass over the old documents, then the night
                arm = next(a for a in names if catalog_key(a) == key)
                model.load_state_dict(states[arm][0])
                importance = learner_losses(model, earlier, b1, seed_dir / f"losses-{key}-n{n}.parquet")
            dbs[key] = night_run(key, n, importance)
        new_texts = nights[n]["text"].to_pylist()
        union_texts = [t for k in range(1, n + 1) for t in nights[k]["text"].to_pylist()]
        sets = {key: list(iter_replay(ReplayPlan.from_db(db), seed=seed, epoch=n)) for key, db in dbs.items()}
        if "uniform" in arms:  # alpha = 0 over the same pool: P(i) = 1/N, every IS weight 1
            plan, _ = whatif_plan(dbs["tmr"], ReplayParams(size=size, seed=seed, new_fraction=0.0, record_state=False,
                                                           alpha=0.0, weights={t: 0.0 for t in TERMS}))
            sets["uniform"] = list(iter_replay(plan, seed=seed, epoch=n))
        for name in names:
            kind, _, pct = name.partition("@")
            r = float(pct.rstrip("%")) / 100 if pct else 0.0
            k = replay_windows(cfg, r)
            model.load_state_dict(states[name][0])
            opt.load_state_dict(states[name][1])
            if kind == "union":
                items = None
                info = train(model, opt, cfg.budget(0, n), cfg.night_steps, union_texts, None, seed, 10 + n, False, step0)
            elif kind == "only_dnf":
                k_rng = np.random.default_rng([seed, n, 3])
                items = [{"doc_id": dnf_ids[i], "text": n1_text[dnf_ids[i]], "weight": 1.0}
                         for i in k_rng.integers(0, len(dnf_ids), cfg.night_steps * k)]
                info = train(model, opt, cfg.budget(k, n), cfg.night_steps, new_texts, items, seed, n, False, step0)
            elif kind == "none":
                items = None
                info = train(model, opt, cfg.budget(0, n), cfg.night_steps, new_texts, None, seed, n, False, step0)
            else:
                # The first night_steps * k draws of the epoch's order: a uniform subsample of the set.
                items = sets["uniform" if kind == "uniform" else catalog_key(name)][:cfg.night_steps * k]
                assert len(items) == cfg.night_steps * k, (name, n, len(items))
                info = train(model, opt, cfg.budget(k, n), cfg.night_steps, new_texts, items, seed, n,
                             kind != "uniform", step0)
            rec = out["arms"][name]
            rec["tokens"] += info["tokens"]
            rec["replay_windows"] += len(items) if items is not None else 0
            rec["nights"][n] = {"train_seconds": info["seconds"], "mean_new_loss": info["mean_new_loss"]}
            if items:
                rec["nights"][n]["replay"] = draws_by_stratum(items, stratum_of)
            if n == 3:
                after = eval_set(model, evals, b1)["per_source"]
                rec["after"] = after
                rec["forgetting"] = {s: after[s] - before[s] for s in after if s != "new"}
                print(f"  seed {seed} {name:14s} forgetting " + " ".join(f"{s} {v:+.3f}" for s, v in rec["forgetting"].items())
                      + f"; new {after['new']:.3f}", flush=True)
            states[name] = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()))
        step0 += cfg.night_steps
    out["protected_strata"] = protected_summary(dbs["tmr"]) if "tmr" in dbs else {}
    return out


# -- across seeds -------------------------------------------------------------------------------


def stratum_names(result: dict[str, Any]) -> list[str]:
    first = next(iter(result["seeds"][0]["arms"].values()))
    rare = sorted(s for s in first["after"] if s.startswith("rare_source:"))
    return [*rare, "rare", "do_not_forget", "rest", "new"]


def arm_metrics(seed_arm: dict[str, Any]) -> dict[str, float]:
    """One seed's metrics for one arm: forgetting per stratum (``rare`` = mean over rare sources)
    and ``new`` = the loss on the new nights' held-out documents."""
    f = dict(seed_arm["forgetting"])
    f["rare"] = float(np.mean([v for k, v in f.items() if k.startswith("rare_source:")]))
    f["new"] = seed_arm["after"]["new"]
    return f


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """Mean and sd over seeds per arm and stratum, and the paired TMR - uniform differences."""
    names = list(result["seeds"][0]["arms"])
    strata = stratum_names(result)
    per = {a: [arm_metrics(s["arms"][a]) for s in result["seeds"]] for a in names}
    table = {a: {st: {"mean": float(np.mean([m[st] for m in per[a]])), "sd": float(np.std([m[st] for m in per[a]], ddof=1))
                      if len(per[a]) > 1 else 0.0, "seeds": [m[st] for m in per[a]]} for st in strata} for a in names}
    comparisons = {}
    for a in names:
        kind, _, pct = a.partition("@")
        if not pct or kind == "uniform" or f"uniform@{pct}" not in per:
            continue
        comp = {}
        for st in strata:
            d = np.array([m[st] for m in per[a]]) - np.array([m[st] for m in per[f"uniform@{pct}"]])
            sd = float(np.std(d, ddof=1)) if len(d) > 1 else float("nan")
            same_sign = bool(np.all(d < 0) or np.all(d > 0))
            comp[st] = {"mean": float(d.mean()), "sd": sd, "per_seed": d.tolist(),
                        "beyond_spread": bool(len(d) > 1 and same_sign and abs(d.mean()) > sd)}
        comparisons[f"{a} - uniform@{pct}"] = comp
    return {"strata": strata, "table": table, "paired_vs_uniform": comparisons}


def print_table(summary: dict[str, Any], seeds: int) -> None:
    strata = summary["strata"]
    print(f"\nforgetting = loss after night 3 - loss after night 1 (nats/byte); new = loss on nights 2-3 held out; "
          f"mean ± sd over {seeds} seed(s)")
    print(f"{'arm':16s}" + "".join(f"{s:>22s}" for s in strata))
    for arm, row in summary["table"].items():
        print(f"{arm:16s}" + "".join(f"{row[s]['mean']:+13.4f} ± {row[s]['sd']:.4f}" for s in strata))
    print("\npaired difference vs uniform at the same ratio (negative = less forgetting / lower new loss); "
          "* = beyond the spread (every seed the same sign and |mean| > sd)")
    for name, comp in summary["paired_vs_uniform"].items():
        print(f"{name:30s}" + "".join(f"{s}: {c['mean']:+.4f}±{c['sd']:.4f}{'*' if c['beyond_spread'] else ' '}  "
                                      for s, c in comp.items()))


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI smoke: tiny budgets, one seed")
    ap.add_argument("--seeds", type=int, help="number of seeds (default 3; 1 with --quick)")
    ap.add_argument("--arms", default="none,uniform,tmr,union",
                    help=f"arm kinds: {', '.join(BASE_ARMS + VARIANTS)} (replay kinds run at r = 5 %% and 25 %%)")
    ap.add_argument("--night1-steps", type=int)
    ap.add_argument("--night-steps", type=int)
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    ap.add_argument("--out", type=Path, help="result JSON (default bench/results/forgetting.json, _quick with --quick)")
    ap.add_argument("--workdir", type=Path, help="keep the shards and catalogs here (default: a temp folder, removed)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    ap.add_argument("--jobs", type=int, help="seeds run in this many processes at once (default: one per CPU, "
                                             "at most one per seed); results do not depend on it")
    ap.add_argument("--night1-cache", type=Path, metavar="DIR",
                    help="keep each seed's night-1 model here and start from it when it matches (design variants "
                         "then skip night 1's training; the result records the file)")
    ap.add_argument("--seed-list", help="run these seeds (e.g. 2 or 0,1) instead of 0..seeds-1: split a run "
                                        "across processes, then --merge the results")
    ap.add_argument("--merge", nargs="+", type=Path, metavar="JSON",
                    help="combine results of the same config and arms (different seeds) into --out, and print the table")
    args = ap.parse_args(argv)
    if args.merge:
        parts = [json.loads(p.read_text()) for p in args.merge]
        merged = {**parts[0], "seeds": [s for p in parts for s in p["seeds"]],
                  "total_seconds": sum(p["total_seconds"] for p in parts)}
        if any(p["config"] != merged["config"] or p["arms"] != merged["arms"] for p in parts):
            ap.error("--merge: the results differ in config or arms")
        merged["summary"] = summarise(merged)
        out = args.out or ROOT / "bench" / "results" / "forgetting.json"
        out.write_text(json.dumps(merged, indent=2) + "\n")
        print_table(merged["summary"], len(merged["seeds"]))
        print(f"\nwrote {out} (seeds {[s['seed'] for s in merged['seeds']]})")
        return 0
    cfg = QUICK if args.quick else FULL
    cfg = replace(cfg, **{k: v for k, v in (("seeds", args.seeds), ("night1_steps", args.night1_steps),
                                            ("night_steps", args.night_steps)) if v})
    arms = [a for a in args.arms.split(",") if a]
    unknown = sorted(set(arms) - set(BASE_ARMS + VARIANTS))
    if unknown:
        ap.error(f"unknown arm(s) {unknown}; arms are {', '.join(BASE_ARMS + VARIANTS)}")
    if any(v in arms for v in VARIANTS) and "uniform" not in arms:
        arms.append("uniform")  # the variants are compared with uniform replay at the same ratio
    out = args.out or ROOT / "bench" / "results" / ("forgetting_quick.json" if args.quick else "forgetting.json")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="glia-forgetting-"))
    if args.workdir and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("GLIA_HOME", str(work / "glia-home"))
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.monotonic()
    result: dict[str, Any] = {
        "config": asdict(cfg), "mode": "quick" if args.quick else "full", "arms": arm_names(arms), "ratios": list(RATIOS),
        "corpus": json.loads((args.corpus / "corpus.json").read_text()),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(), "torch": torch.__version__},
        "seeds": [],
    }
    seeds = [int(x) for x in args.seed_list.split(",")] if args.seed_list else list(range(cfg.seeds))
    jobs = max(1, min(len(seeds), args.jobs or os.cpu_count() or 1))
    result["machine"]["jobs"] = jobs
    if jobs == 1:
        result["seeds"] = [run_seed(seed, cfg, arms, args.corpus, work, args.night1_cache) for seed in seeds]
    else:
        # Seeds are independent (own folder, catalogs and model), so they run side by side.
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
                                 initargs=(args.threads,)) as pool:
            result["seeds"] = list(pool.map(run_seed, seeds, [cfg] * len(seeds), [arms] * len(seeds),
                                            [args.corpus] * len(seeds), [work] * len(seeds),
                                            [args.night1_cache] * len(seeds)))
    result["summary"] = summarise(result)
    result["total_seconds"] = round(time.monotonic() - t0, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=lambda o: o.item() if hasattr(o, "item") else str(o)) + "\n")
    print_table(result["summary"], len(result["seeds"]))
    print(f"\nwrote {out} ({result['total_seconds']} s)")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    tokens = {a: [s["arms"][a]["tokens"] for s in result["seeds"]] for a in result["arms"]}
    return 0 if len({t for v in tokens.values() for t in v}) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
