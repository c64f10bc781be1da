"""Does Glia's pruning make a better model? Every arm trained from scratch at equal tokens, paired by seed.

    .venv/bin/python bench/pruning.py            # the full benchmark (make bench-pruning)
    .venv/bin/python bench/pruning.py --quick    # CI smoke: the committed small corpus, tiny budgets, same arms

The corpus (``bench/make_pruning_corpus.py``, built into ``build/pruning/corpus`` from the
pinned bench inputs) is three nights of five clean sources (two of them rare) plus a web crawl
with what real crawls carry: long-tailed exact copies, edited near-copies, boilerplate pages
repeated 50-200 times, templated spam, machine-repetitive text, encoding junk, gibberish, toxic
posts, pages quoting the eval set, non-English text. Held-out clean documents of every source
are never trained on and never shown to Glia.

1. **Glia's nights.** The real engine (``glia.engine.night.run_night``) runs the three nights
   with every tagger and stage the default rule and the built-in terms read (the example
   rules' models: MiniLM embeddings, SmolLM2 scoring 32 documents a night on a CPU, the default
   risk LSTM, datatrove's quality rules, staleness, decontamination against the corpus's eval
   set, PII, language with ``expected = ["en"]``), then ``decide`` with the **built-in rule**,
   the rare sources protected by share, the listed do-not-forget documents protected, and
   ``lifecycle`` 0/0 so a queued document is applied at once and leaves ``v_manifest``. The
   nights do not depend on the seed; they are cached under ``build/pruning/nights/<key>``,
   where the key covers the corpus, the rules and Glia's code.
2. **Kept sets.** ``glia`` is ``v_manifest`` after night 3, read as a trainer reads it (shard
   path and row, through ``curation.dataloader.ShardTextReader``). Every other rule arm is the
   same ``decide`` (``curation.rules.decide``) applied to each night's tags and strata as the
   catalog holds them, with another rule: each built-in term alone (``only:<term>``), the
   default minus each of its terms (``minus:<term>``), protected strata off (``no_protect``),
   and the rule at several strictness levels (``rule@p``: the keep terms at ``q<p>`` and the
   night cap at ``p``). The benchmark checks that this replay of the default rule gives
   exactly ``v_manifest`` (``whatif_matches_manifest`` in the result). ``random`` keeps the
   same number of documents as ``glia`` in every night, uniformly (``random@p`` matches
   ``rule@p``); ``all`` keeps everything.
3. **Training.** For each seed, every arm's model starts from the same initialisation and
   trains from scratch (``bench/tinylm.py``: a byte-level transformer, 2 layers, width 64,
   context 64) on ``steps x batch`` windows of its kept documents packed into a stream
   (``tinylm.pack_windows``): exactly the same number of tokens for every arm, counted from the
   loss masks. From scratch, because pruning decides what a model learns from the corpus, and
   that is what DataComp-LM and FineWeb measure too; continued pre-training would mix in what a
   base model learnt elsewhere and need a base trained on data of its own.
4. **Metrics.** Held-out loss (nats/byte, each document's first windows) per clean source, the
   common sources' mean (``clean``) and the rare sources' (``rare``), and on the do-not-forget
   documents; the share of toxic, contaminated and junk bytes in what the model actually trained
   on; the loss on the planted eval items; coverage, the share of embedding clusters (k-means on
   every training document's MiniLM embedding) that keep a document. Mean and sd over seeds;
   a paired difference (same seed, same initialisation) is beyond the spread only when every
   seed has the same sign and ``|mean| > sd``.

Results: ``bench/results/pruning.json`` and ``pruning.png`` (``pruning_quick.*`` with
``--quick``), and printed tables.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from tinylm import Budget, eval_set, make_model, pack_windows, train_windows  # noqa: E402

CORPUS_SEED = 22  # the corpus make bench-pruning measures; the defaults were chosen on seed 21's (docs/pruning.md)
QUICK_CORPUS = ROOT / "tests" / "data" / "pruning_quick"
NIGHTS_CACHE = ROOT / "build" / "pruning" / "nights"
RESULTS = ROOT / "bench" / "results"
NIGHTS = (1, 2, 3)
COMMON = ("austen", "kjv", "shakespeare")
RARE = ("jargon", "devil")
JUNK = ("boilerplate", "spam", "repetitive", "encoding", "gibberish", "toxic", "contaminated", "non_english")
KEEP_TERMS = ("novelty", "utility", "surprise")  # value terms: a document is kept when one fires
SWEEP = (0.1, 0.2, 0.4)
CODE_DIRS = ("core", "storage", "models", "taggers", "curation", "stages", "engine")


@dataclass(frozen=True)
class Config:
    """Every arm trains ``steps`` steps of ``batch`` windows of ``ctx + 1`` bytes, from scratch."""

    steps: int
    batch: int
    seeds: int
    eval_windows: int  # per evaluated document: its first eval_windows * ctx bytes
    ctx: int = 64
    d_model: int = 64
    layers: int = 2
    heads: int = 4
    lr: float = 1e-2
    warmup: int = 30
    min_lr_ratio: float = 0.1
    clusters: int = 32  # k-means clusters for coverage
    light: bool = False  # --quick: the static embedder and no scoring LM in Glia's nights

    def budget(self) -> Budget:
        return Budget(night1_steps=self.steps, night_steps=0, batch_new=self.batch, batch_replay=0, ctx=self.ctx,
                      d_model=self.d_model, layers=self.layers, heads=self.heads, lr=self.lr, warmup=self.warmup,
                      eval_windows=self.eval_windows, schedule="cosine", min_lr_ratio=self.min_lr_ratio)

    @property
    def tokens(self) -> int:
        return self.steps * self.batch * self.ctx


FULL = Config(steps=256, batch=32, seeds=3, eval_windows=4, lr=3e-3)
QUICK = Config(steps=6, batch=8, seeds=2, eval_windows=1, ctx=32, d_model=32, warmup=2, clusters=8, light=True)


# -- the corpus and Glia's nights ------------------------------------------------------------------


def corpus_dir(seed: int) -> Path:
    return ROOT / "build" / "pruning" / f"corpus-s{seed}"


def ensure_corpus(corpus: Path, quick: bool, seed: int) -> dict[str, Any]:
    """The corpus manifest, building the full corpus (with ``seed``) from the pinned inputs when it is missing."""
    if not (corpus / "corpus.json").exists():
        if quick:
            raise FileNotFoundError(f"no pruning corpus at {corpus}: rebuild it with "
                                    "`python bench/make_pruning_corpus.py --scale 0.125 --out tests/data/pruning_quick`")
        import make_pruning_corpus

        print(f"building the corpus (seed {seed}) into {corpus} (bench/make_pruning_corpus.py)", flush=True)
        make_pruning_corpus.build(corpus, seed=seed)
    return json.loads((corpus / "corpus.json").read_text())


def rules_text(corpus: Path, work: Path, light: bool) -> str:
    """The Glia rules of the benchmark's nights (recorded in the result). ``[stages.decide]`` sets
    no rule keys: the nights decide with the built-in rule."""
    taggers = ["exact", "minhash", "embedding", "risk", "quality", "staleness", "decontaminate", "pii", "lang"]
    stages = ["dedup", "novelty", "semantic_dedup", "decide"]
    if not light:
        taggers.insert(3, "lm")
        stages.insert(3, "surprise")
    return (
        f"[run]\ntaggers = {json.dumps(taggers)}\nstages = {json.dumps(stages)}\nworkers = 2\norchestrator = \"plain\"\n"
        f"[taggers.embedding]\nmodel = \"{'static' if light else 'minilm'}\"\n"
        "[taggers.lang]\nexpected = [\"en\"]\n"
        f"[taggers.decontaminate]\nindex_dir = {json.dumps(str(work / 'decontaminate'))}\n"
        f"[taggers.decontaminate.sets.eval]\npath = {json.dumps(str(corpus / 'eval.parquet'))}\n"
        "fields = [\"text\"]\nid_field = \"id\"\n"
        "[stages.decide.lifecycle]\nquarantine_after = 0\napply_after = 0\n"
        f"[stages.decide.protect.explicit.do_not_forget]\nids_file = {json.dumps(str(corpus / 'do_not_forget.txt'))}\n"
    )


def code_fingerprint() -> str:
    """sha256 over Glia's code below the engine (what a night's catalog depends on)."""
    h = hashlib.sha256()
    for d in CODE_DIRS:
        for p in sorted((ROOT / d).rglob("*.py")):
            h.update(str(p.relative_to(ROOT)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def run_nights(corpus: Path, manifest: dict[str, Any], cache: Path, light: bool) -> tuple[Path, dict[str, Any]]:
    """Glia's three nights through the real engine, or the cached catalog of the same corpus, rules
    and code. Returns the database and what the nights recorded."""
    from glia.engine.config import load_config
    from glia.engine.night import run_night

    probe = rules_text(corpus, Path("WORK"), light)
    key = hashlib.sha256(json.dumps([manifest["sha256"], probe, code_fingerprint(), str(corpus.resolve())])
                         .encode()).hexdigest()[:16]
    work = cache / key
    done = work / "nights.json"
    if done.exists():
        info = json.loads(done.read_text())
        print(f"Glia's nights: cached catalog {work} (built in {info['seconds_total']:.0f} s)", flush=True)
        return work / "glia.duckdb", {**info, "cached": True}
    if work.exists():
        shutil.rmtree(work)
    (work / "shards").mkdir(parents=True)
    rules = work / "rules.toml"
    rules.write_text(rules_text(corpus, work, light))
    cfg = load_config(rules)
    db = work / "glia.duckdb"
    info: dict[str, Any] = {"key": key, "rules": rules.read_text(), "seconds": {}, "load_avg": {}}
    t0 = time.monotonic()
    for n in NIGHTS:
        shutil.copytree(corpus / f"night{n}", work / "shards" / f"night{n}")
        t = time.monotonic()
        outcome = run_night(work / "shards", db, cfg)
        if outcome.status != "completed":
            raise RuntimeError(f"night {n}: the Glia night ended {outcome.status}")
        info["seconds"][n] = round(time.monotonic() - t, 1)
        info["load_avg"][n] = round(os.getloadavg()[0], 2)
        print(f"Glia night {n}: {info['seconds'][n]} s (load average {info['load_avg'][n]})", flush=True)
    info["seconds_total"] = round(time.monotonic() - t0, 1)
    done.write_text(json.dumps(info, indent=2) + "\n")
    return db, {**info, "cached": False}


# -- kept sets --------------------------------------------------------------------------------------


@dataclass
class Catalog:
    """What the arms need from the nights' catalog."""

    docs: pa.Table  # doc_id, source, label, shard_id, run_id (the night that decided it), tag columns
    strata: dict[str, list[str]]  # doc_id -> its strata on its night
    manifest_ids: list[str]  # v_manifest after the last night
    manifest_texts: dict[str, str]  # read through the trainer's reader
    decided: dict[str, str]  # doc_id -> the night's real action
    embeddings: np.ndarray  # aligned with docs
    night_metrics: dict[str, float]


def read_catalog(db: Path) -> Catalog:
    from glia.curation.dataloader import ShardTextReader
    from glia.curation.protect import embedding_matrix
    from glia.curation.rules import DEFAULT_TERMS
    from glia.storage.catalog import Catalog as GliaCatalog

    with GliaCatalog(db, read_only=True) as cat:
        have = set(cat.con.sql("SELECT * FROM v_documents LIMIT 0").columns)
        cols = sorted({t["column"] for t in DEFAULT_TERMS.values()} & have)
        extra = [c for c in ("quality_failed", "risk_flag", "age_days") if c in have]
        docs = cat.con.sql(
            "SELECT v.doc_id, CAST(v.source AS VARCHAR) AS source, CAST(v.label AS VARCHAR) AS label, v.shard_id, "
            f"d.run_id, d.action, d.strata, {', '.join(f'v.{c}' for c in cols + extra)} "
            "FROM v_documents v JOIN decisions d USING (doc_id) ORDER BY v.doc_id").to_arrow_table()
        man = cat.con.sql("SELECT doc_id, shard_path, \"row\" FROM v_manifest ORDER BY shard_path, \"row\"").to_arrow_table()
        files = cat.con.sql("SELECT path FROM tag_files WHERE tagger = 'embedding' ORDER BY shard_id").fetchall()
        metrics = dict(cat.con.sql("SELECT run_id || ':' || metric, value FROM run_metrics "
                                   "WHERE metric LIKE 'decide.%' OR metric LIKE '%seconds%'").fetchall())
    reader = ShardTextReader()
    texts = reader.read(man["shard_path"].combine_chunks(), man["row"].to_numpy(), man["doc_id"].combine_chunks())
    emb_t = pa.concat_tables([pq.read_table(p, columns=["doc_id", "_embedding"]) for (p,) in files])
    idx = pc.index_in(docs["doc_id"], value_set=emb_t["doc_id"].combine_chunks())
    emb, valid = embedding_matrix(emb_t["_embedding"].combine_chunks().take(idx))
    if not valid.all():
        raise RuntimeError("some training documents have no embedding")
    strata = dict(zip(docs["doc_id"].to_pylist(), [s or [] for s in docs["strata"].to_pylist()]))
    return Catalog(docs, strata, man["doc_id"].to_pylist(), dict(zip(man["doc_id"].to_pylist(), texts)),
                   dict(zip(docs["doc_id"].to_pylist(), docs["action"].to_pylist())), emb, metrics)


# The built-in rule before this benchmark (issue 21), measured beside the current one.
PREVIOUS_DEFAULT = {"keep_if_any": ["novelty", "utility"], "prune_if_any": ["exact_dup", "near_dup", "risk"]}
# Rules given with --rule NAME=JSON: arms ``rule:NAME`` (any [stages.decide] rule keys).
CUSTOM_RULES: dict[str, dict[str, Any]] = {}


def rule_config(name: str) -> tuple[dict[str, Any] | None, bool]:
    """The ``[stages.decide]`` rule keys of a rule arm and whether its strata protect; None for
    arms that are not a rule (``all``, ``random...``)."""
    from glia.curation.rules import DEFAULT_KEEP, DEFAULT_PRUNE, DEFAULT_TERMS

    if name in ("glia", "no_protect"):
        return {}, name != "no_protect"
    if name == "previous_default":
        return dict(PREVIOUS_DEFAULT), True
    if name.startswith("rule:"):
        return dict(CUSTOM_RULES[name.partition(":")[2]]), True
    kind, _, arg = name.partition(":") if ":" in name else name.partition("@")
    keep, prune = list(DEFAULT_KEEP), list(DEFAULT_PRUNE)
    if kind == "only":
        keep = [arg] if arg in KEEP_TERMS else []
        return {"keep_if_any": keep, "prune_if_any": [] if keep else [arg]}, True
    if kind == "minus":
        return {"keep_if_any": [t for t in keep if t != arg], "prune_if_any": [t for t in prune if t != arg]}, True
    if kind == "plus":
        return {"keep_if_any": keep + [arg] if arg in KEEP_TERMS else keep,
                "prune_if_any": prune if arg in KEEP_TERMS else prune + [arg]}, True
    if kind == "rule":
        # The sweep's one knob: the night cap at p (the per-source cap off), and the value terms'
        # quantile at p, so that there are candidates enough for it.
        p = float(arg)
        terms = {t: {"threshold": f"q{p:g}"} for t in keep if str(DEFAULT_TERMS[t].get("threshold", "")).startswith("q")}
        return {"terms": terms, "cap": {"night": p, "source": 1.0}}, True
    return None, True


def arm_names(terms: list[str]) -> list[str]:
    """Every arm: the baselines, each built-in term alone, the default minus each of its terms and
    plus each other built-in term, protected strata off, the previous built-in rule, and the
    sweep (rule and random at each level)."""
    from glia.curation.rules import DEFAULT_KEEP, DEFAULT_PRUNE

    default = (*DEFAULT_KEEP, *DEFAULT_PRUNE)
    names = ["all", "glia", "random"]
    names += [f"only:{t}" for t in terms]
    names += [f"minus:{t}" for t in default]
    names += [f"plus:{t}" for t in terms if t not in default]
    names += ["no_protect"]
    if (list(DEFAULT_KEEP), list(DEFAULT_PRUNE)) != (PREVIOUS_DEFAULT["keep_if_any"], PREVIOUS_DEFAULT["prune_if_any"]):
        names += ["previous_default"]
    names += [x for p in SWEEP for x in (f"rule@{p:g}", f"random@{p:g}")]
    names += [f"rule:{n}" for n in CUSTOM_RULES]
    return names


# ``make bench-pruning`` runs these; ``--arms`` picks others (``plus:*`` arms were the search
# for the defaults, docs/pruning.md).
DEFAULT_ARMS = ("all", "glia", "random", "only:*", "minus:*", "no_protect", "previous_default", "rule@*", "random@*",
                "rule:*")


def whatif_kept(cat: Catalog, config: dict[str, Any], protect: bool) -> set[str]:
    """The documents a rule keeps: ``decide`` on each night's tags and strata as the catalog holds
    them (with lifecycle 0/0 a pruned document is applied at once, so the kept set is every
    document minus each night's prunes)."""
    from glia.curation.rules import Rules, decide

    rules = Rules.from_config(config)
    keep: set[str] = set()
    runs = cat.docs["run_id"].to_numpy()
    for run in np.unique(runs):
        t = cat.docs.filter(pa.array(runs == run))
        cols = ["doc_id", "source", "label"] + [c for c in t.column_names if c not in
                                                  ("doc_id", "source", "label", "shard_id", "run_id", "action", "strata")]
        tags = t.select(cols)
        strata = t["strata"] if protect else pa.array([[]] * t.num_rows, pa.list_(pa.string()))
        tags = tags.append_column("strata", pc.fill_null(strata.cast(pa.list_(pa.string())),
                                                         pa.scalar([], pa.list_(pa.string()))))
        d = decide(tags, rules).table
        keep |= set(d.filter(pc.equal(d["action"], "keep"))["doc_id"].to_pylist())
    return keep


def random_kept(cat: Catalog, per_night: dict[int, int], seed: int) -> set[str]:
    """``per_night[n]`` documents of night ``n``, uniformly at random (the draw depends on the seed and the size)."""
    runs = cat.docs["run_id"].to_numpy()
    ids = np.asarray(cat.docs["doc_id"].to_pylist(), dtype=object)
    out: set[str] = set()
    for run in np.unique(runs):
        pool = np.sort(ids[runs == run])
        k = per_night[int(run)]
        rng = np.random.default_rng([seed, int(run), k])
        out |= set(pool[rng.choice(len(pool), k, replace=False)].tolist())
    return out


def per_night_counts(cat: Catalog, kept: set[str]) -> dict[int, int]:
    runs = cat.docs["run_id"].to_numpy()
    ids = cat.docs["doc_id"].to_pylist()
    counts = {int(r): 0 for r in np.unique(runs)}
    for i, r in zip(ids, runs):
        if i in kept:
            counts[int(r)] += 1
    return counts


def kept_sets(cat: Catalog, names: list[str], seeds: list[int]) -> tuple[dict[str, dict[int, set[str]]], dict[str, Any]]:
    """``arm -> seed -> kept ids`` (rule arms do not depend on the seed) and the replay check."""
    every = set(cat.docs["doc_id"].to_pylist())
    rule_sets: dict[str, set[str]] = {}
    for name in names:
        config, protect = rule_config(name)
        if config is not None:
            rule_sets[name] = whatif_kept(cat, config, protect)
    manifest = set(cat.manifest_ids)
    real_keep = {d for d, a in cat.decided.items() if a == "keep"}
    check = {"whatif_matches_manifest": rule_sets.get("glia", manifest) == manifest,
             "manifest_is_real_keeps": manifest == real_keep,
             "manifest_docs": len(manifest), "whatif_docs": len(rule_sets.get("glia", manifest))}
    if not check["whatif_matches_manifest"]:
        raise RuntimeError(f"the replayed default rule does not give v_manifest: {check}")
    rule_sets["glia"] = manifest  # what a trainer reads
    out: dict[str, dict[int, set[str]]] = {}
    for name in names:
        if name == "all":
            out[name] = dict.fromkeys(seeds, every)
        elif name in rule_sets:
            out[name] = dict.fromkeys(seeds, rule_sets[name])
        elif name.startswith("random"):
            ref = "glia" if name == "random" else "rule@" + name.partition("@")[2]
            if ref not in rule_sets:
                rule_sets[ref] = whatif_kept(cat, *rule_config(ref))
            counts = per_night_counts(cat, rule_sets[ref])
            out[name] = {s: random_kept(cat, counts, s) for s in seeds}
    return out, check


# -- training ---------------------------------------------------------------------------------------

_W: dict[str, Any] = {}  # per worker process: the corpus texts and the evaluation table


def _worker_init(corpus: str, cfg: Config, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    corpus_p = Path(corpus)
    docs = pa.concat_tables([pq.read_table(corpus_p / f"night{n}", columns=["id", "text"]) for n in NIGHTS])
    truth = pq.read_table(corpus_p / "truth.parquet", columns=["id", "kind"])
    kind_of = dict(zip(truth["id"].to_pylist(), truth["kind"].to_pylist()))
    _W["text"] = dict(zip(docs["id"].to_pylist(), docs["text"].to_pylist()))
    _W["kind"] = kind_of
    _W["evals"] = eval_table(corpus_p, _W["text"])
    _W["cfg"] = cfg


def eval_table(corpus: Path, texts: dict[str, str]) -> pa.Table:
    """Evaluation documents and their stratum: held-out documents per source, the do-not-forget
    documents (training documents a user listed), the eval items planted in the corpus and the rest."""
    held = pq.read_table(corpus / "heldout.parquet")
    dnf = [ln.strip() for ln in (corpus / "do_not_forget.txt").read_text().splitlines()
           if ln.strip() and not ln.startswith("#")]
    ev = pq.read_table(corpus / "eval.parquet")
    strata = held["source"].to_pylist() + ["do_not_forget"] * len(dnf) + \
        ["eval_planted" if p else "eval_clean" for p in ev["planted"].to_pylist()]
    return pa.table({"text": held["text"].to_pylist() + [texts[d] for d in dnf] + ev["text"].to_pylist(),
                     "stratum": strata})


def train_arm(seed: int, ids: list[str]) -> dict[str, Any]:
    """Train one arm's model from scratch on its kept documents; its losses and training mixture."""
    import torch

    cfg: Config = _W["cfg"]
    b = cfg.budget()
    texts = [_W["text"][i] for i in ids]
    kinds = np.asarray([_W["kind"][i] for i in ids], dtype=object)
    torch.manual_seed(seed)
    model = make_model(b)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    batch, owner = pack_windows(texts, ids, cfg.steps * cfg.batch, cfg.ctx, seed)
    info = train_windows(model, opt, b, batch, cfg.batch)
    per = eval_set(model, _W["evals"], b, group="stratum")["per_source"]
    by_kind = np.unique(kinds[owner], return_counts=True)
    mixture = {str(k): int(n) / len(owner) for k, n in zip(*by_kind)}
    return {"tokens": info["tokens"], "seconds": info["seconds"], "train_loss": info["train_loss"], "loss": per,
            "mixture": mixture, "epochs": round(len(owner) * cfg.ctx / sum(len(t.encode()) for t in texts), 3)}


def metrics_of(run: dict[str, Any]) -> dict[str, float]:
    """One seed's metrics for one arm."""
    loss = run["loss"]
    m = {s: loss[s] for s in (*COMMON, *RARE) if s in loss}
    m["clean"] = float(np.mean([loss[s] for s in COMMON]))
    m["rare"] = float(np.mean([loss[s] for s in RARE]))
    m["do_not_forget"] = loss["do_not_forget"]
    m["eval_planted"] = loss.get("eval_planted", float("nan"))
    m["eval_clean"] = loss.get("eval_clean", float("nan"))
    mix = run["mixture"]
    m["toxic_share"] = mix.get("toxic", 0.0)
    m["contaminated_share"] = mix.get("contaminated", 0.0)
    m["junk_share"] = sum(mix.get(k, 0.0) for k in JUNK)
    return m


LOSS_KEYS = ("clean", "austen", "kjv", "shakespeare", "rare", "jargon", "devil", "do_not_forget", "eval_planted")
MIX_KEYS = ("junk_share", "toxic_share", "contaminated_share")


# -- coverage and the sets' composition ------------------------------------------------------------


def cluster_labels(emb: np.ndarray, k: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=3, random_state=0).fit_predict(emb)


def composition(cat: Catalog, kind_of: dict[str, str], labels: np.ndarray, kept: set[str]) -> dict[str, Any]:
    """Kept share per kind of document, pruned share (documents), cluster coverage."""
    ids = cat.docs["doc_id"].to_pylist()
    src = cat.docs["source"].to_pylist()
    mask = np.array([i in kept for i in ids])
    kinds = np.asarray([kind_of[i] for i in ids], dtype=object)
    kept_by_kind = {str(k): round(float(mask[kinds == k].mean()), 4) for k in sorted(set(kinds))}
    for s in RARE:
        sel = (np.asarray(src, dtype=object) == s) & (kinds == "clean")
        kept_by_kind[f"clean:{s}"] = round(float(mask[sel].mean()), 4) if sel.any() else float("nan")
    covered = len(np.unique(labels[mask])) if mask.any() else 0
    return {"kept": int(mask.sum()), "pruned_share": round(1 - float(mask.mean()), 4), "kept_share_by_kind": kept_by_kind,
            "cluster_coverage": round(covered / len(np.unique(labels)), 4)}


# -- the tag table ----------------------------------------------------------------------------------


def tag_table(cat: Catalog, kind_of: dict[str, str]) -> dict[str, Any]:
    """For every built-in term at its default threshold (and each quality family), the share of
    documents it fires on, per source and per kind of document (a value term: its miss)."""
    from glia.curation.rules import DEFAULT_TERMS, Rules, decide

    ids = cat.docs["doc_id"].to_pylist()
    src = np.asarray(cat.docs["source"].to_pylist(), dtype=object)
    kinds = np.asarray([kind_of[i] for i in ids], dtype=object)
    groups = {f"source:{s}": src == s for s in sorted(set(src))}
    groups.update({f"clean:{s}": (src == s) & (kinds == "clean") for s in (*COMMON, *RARE)})
    groups["copies"] = np.isin(kinds, ["exact_copy", "near_copy"])
    groups.update({f"junk:{k}": kinds == k for k in JUNK})
    groups["all"] = np.ones(len(ids), bool)
    rows: dict[str, dict[str, float]] = {}
    runs = cat.docs["run_id"].to_numpy()
    off = {"night": 1.0, "source": 1.0}
    for term in sorted(DEFAULT_TERMS):
        keep = term in KEEP_TERMS
        rules = Rules.from_config({"keep_if_any": [term] if keep else [], "prune_if_any": [] if keep else [term],
                                   "cap": off})
        fires = np.zeros(len(ids), bool)
        known = True
        for run in np.unique(runs):
            sel = runs == run
            t = cat.docs.filter(pa.array(sel)).drop_columns(["strata"])
            d = decide(t, rules)
            known = known and term not in d.report.skipped
            fires[sel] = pc.equal(d.table["action"], "prune").to_numpy(zero_copy_only=False)
        spec = DEFAULT_TERMS[term]
        label = f"{term} ({spec['column']} {spec['op']} {spec.get('threshold', '')})".replace(" )", ")")
        rows[label] = {g: round(float(fires[m].mean()), 4) if m.any() else float("nan") for g, m in groups.items()} \
            if known else {g: float("nan") for g in groups}
    if "quality_failed" in cat.docs.column_names:
        failed = cat.docs["quality_failed"].to_pylist()
        for fam in ("gopher_quality", "gopher_repetition", "c4", "fineweb"):
            fires = np.array([any(r.startswith(fam + ":") for r in (f or [])) for f in failed])
            rows[f"quality family {fam} fails"] = {g: round(float(fires[m].mean()), 4) for g, m in groups.items()}
    return {"groups": list(groups), "rows": rows}


# -- across seeds -----------------------------------------------------------------------------------


def _stat(values: list[float]) -> dict[str, Any]:
    a = np.asarray(values, float)
    return {"mean": float(a.mean()), "sd": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "seeds": a.tolist()}


def _paired(a: list[float], b: list[float]) -> dict[str, Any]:
    d = np.asarray(a, float) - np.asarray(b, float)
    sd = float(d.std(ddof=1)) if len(d) > 1 else float("nan")
    same = bool(np.all(d < 0) or np.all(d > 0))
    return {"mean": float(d.mean()), "sd": sd, "per_seed": d.tolist(),
            "beyond_spread": bool(len(d) > 1 and same and abs(d.mean()) > sd)}


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """Mean and sd per arm and metric; paired differences: each arm - ``all``, ``glia`` and each
    ``rule@p`` - its ``random``, and each variant of the default - ``glia`` (``minus:<term>``:
    positive means the term helped; ``plus:<term>``: negative means adding it would help)."""
    arms = result["arms"]
    per = {a: [metrics_of(s["runs"][a]) for s in result["seeds"]] for a in arms}
    keys = list(next(iter(per.values()))[0])
    table = {a: {k: _stat([m[k] for m in per[a]]) for k in keys} for a in arms}
    pairs: dict[str, tuple[str, str]] = {f"{a} - all": (a, "all") for a in arms if a != "all"}
    pairs["glia - random"] = ("glia", "random")
    for p in SWEEP:
        pairs[f"rule@{p:g} - random@{p:g}"] = (f"rule@{p:g}", f"random@{p:g}")
    for a in arms:
        if a.startswith(("minus:", "plus:", "rule:")) or a in ("no_protect", "previous_default"):
            pairs[f"{a} - glia"] = (a, "glia")
    paired = {name: {k: _paired([m[k] for m in per[a]], [m[k] for m in per[b]]) for k in keys}
              for name, (a, b) in pairs.items() if a in per and b in per}
    return {"table": table, "paired": paired}


def fmt(stat: dict[str, Any], digits: int = 4) -> str:
    star = "*" if stat.get("beyond_spread") else ""
    return f"{stat['mean']:+.{digits}f} ± {stat['sd']:.{digits}f}{star}" if "beyond_spread" in stat \
        else f"{stat['mean']:.{digits}f} ± {stat['sd']:.{digits}f}"


def print_tables(result: dict[str, Any]) -> None:
    s = result["summary"]
    comp = result["composition"]
    print(f"\nheld-out loss (nats/byte), mean ± sd over {len(result['seeds'])} seed(s); pruned = share of documents")
    print(f"{'arm':22s}{'pruned':>8s}" + "".join(f"{k:>20s}" for k in LOSS_KEYS[:8]))
    for arm, row in s["table"].items():
        print(f"{arm:22s}{comp[arm]['pruned_share']:8.3f}" + "".join(f"{fmt(row[k]):>20s}" for k in LOSS_KEYS[:8]))
    print("\ntraining mixture (share of trained bytes) and coverage")
    print(f"{'arm':22s}" + "".join(f"{k:>22s}" for k in MIX_KEYS) + f"{'cluster_coverage':>18s}")
    for arm, row in s["table"].items():
        print(f"{arm:22s}" + "".join(f"{fmt(row[k]):>22s}" for k in MIX_KEYS) + f"{comp[arm]['cluster_coverage']:18.3f}")
    print("\npaired differences (same seed); * = beyond the spread (every seed the same sign and |mean| > sd)")
    for name, row in s["paired"].items():
        print(f"{name:28s}" + "  ".join(f"{k} {fmt(row[k])}" for k in ("clean", "rare", "do_not_forget", "junk_share")))


# -- the markdown the docs quote -------------------------------------------------------------------


def _md(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(r) + " |" for r in rows])


def markdown(result: dict[str, Any]) -> str:
    """Every table of the result as Markdown (``pruning.md`` beside the JSON; docs/pruning.md quotes it)."""
    s, comp = result["summary"], result["composition"]
    table, paired = s["table"], s["paired"]
    out = [f"Seeds: {len(result['seeds'])}; {result['config']['steps'] * result['config']['batch'] * result['config']['ctx']:,}"
           " training bytes per arm. Loss in nats/byte, mean ± sd over seeds; `*` = a paired difference beyond the "
           "spread (every seed the same sign and |mean| > sd).\n"]
    keys = ("clean", "austen", "kjv", "shakespeare", "rare", "jargon", "devil", "do_not_forget")
    out.append("### Held-out loss per arm and stratum\n")
    out.append(_md(["arm", "pruned", *keys], [[f"`{a}`", f"{comp[a]['pruned_share']:.3f}", *(fmt(table[a][k]) for k in keys)]
                                             for a in table]))
    out.append("\n### Paired differences (same seed)\n")
    out.append(_md(["comparison", *keys, "junk_share"],
                   [[f"`{n}`", *(fmt(row[k]) for k in (*keys, "junk_share"))] for n, row in paired.items()]))
    out.append("\n### Training mixture, eval items and coverage\n")
    mix = ("junk_share", "toxic_share", "contaminated_share", "eval_planted", "eval_clean")
    out.append(_md(["arm", *mix, "cluster_coverage", "kept: clean jargon", "kept: clean devil"],
                   [[f"`{a}`", *(fmt(table[a][k]) for k in mix), f"{comp[a]['cluster_coverage']:.3f}",
                     f"{comp[a]['kept_share_by_kind'].get('clean:jargon', float('nan')):.3f}",
                     f"{comp[a]['kept_share_by_kind'].get('clean:devil', float('nan')):.3f}"] for a in table]))
    kinds = sorted({k for a in comp for k in comp[a]["kept_share_by_kind"] if ":" not in k})
    out.append("\n### Share of each kind of document kept\n")
    out.append(_md(["arm", *kinds], [[f"`{a}`", *(f"{comp[a]['kept_share_by_kind'][k]:.3f}" for k in kinds)] for a in comp]))
    tt = result["tag_table"]
    groups = tt["groups"]
    out.append("\n### Where each term fires at its default threshold (share of documents)\n")
    out.append(_md(["term", *groups], [[label, *(f"{row[g]:.3f}" for g in groups)] for label, row in tt["rows"].items()]))
    return "\n".join(out) + "\n"


# -- the plot ---------------------------------------------------------------------------------------


def plot(result: dict[str, Any], path: Path) -> None:
    """Held-out loss against the share pruned, the rule's sweep vs random at the same sizes, per stratum.

    The y axis is each arm's loss minus ``all``'s for the same seed (so 0 is no pruning), mean and
    sd over seeds: the paired differences the claims rest on. The absolute losses are in the tables.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    comp = result["composition"]
    per = {a: [metrics_of(s["runs"][a]) for s in result["seeds"]] for a in result["arms"]}

    def delta(arm: str, key: str) -> tuple[float, float]:
        d = np.array([m[key] for m in per[arm]]) - np.array([m[key] for m in per["all"]])
        return float(d.mean()), float(d.std(ddof=1)) if len(d) > 1 else 0.0

    panels = ("clean", "rare", "do_not_forget", "austen", "kjv", "shakespeare", "jargon", "devil")
    fig, axes = plt.subplots(2, 4, figsize=(16, 7.5))
    rule_arms = ["all"] + [f"rule@{p:g}" for p in SWEEP if f"rule@{p:g}" in per]
    rand_arms = ["all"] + [f"random@{p:g}" for p in SWEEP if f"random@{p:g}" in per]
    for ax, key in zip(axes.ravel(), panels):
        for arms, label, style in ((rule_arms, "Glia rule (sweep, source cap off)", "o-"),
                                   (rand_arms, "random, same sizes", "s--")):
            stats = [delta(a, key) for a in arms]
            ax.errorbar([comp[a]["pruned_share"] for a in arms], [m for m, _ in stats], yerr=[e for _, e in stats],
                        fmt=style, capsize=3, label=label)
        for arm, marker, label in (("glia", "*", "glia (the default rule)"), ("random", "x", "random (glia's sizes)")):
            m, e = delta(arm, key)
            ax.errorbar([comp[arm]["pruned_share"]], [m], yerr=[e], fmt=marker, markersize=12, capsize=3, label=label)
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_title(key)
        ax.set_xlabel("share of documents pruned")
        ax.set_ylabel("held-out loss - all's, same seed (nats/byte)")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    cfg = result["config"]
    fig.suptitle(f"Pruning at equal tokens ({cfg['steps'] * cfg['batch'] * cfg['ctx']:,} bytes per arm): held-out loss "
                 f"relative to no pruning, mean ± sd over {len(result['seeds'])} seeds (lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# -- main -------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI smoke: the committed small corpus, tiny budgets")
    ap.add_argument("--seeds", type=int)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--lr", type=float, help="peak learning rate (default 3e-3 for the full run, 1e-2 with --quick)")
    ap.add_argument("--corpus", type=Path, help="a corpus folder (default: build/pruning/corpus-s<seed>)")
    ap.add_argument("--corpus-seed", type=int, default=CORPUS_SEED,
                    help=f"the seed of the corpus built when --corpus is not given (default {CORPUS_SEED}; the "
                         "defaults were chosen on 21)")
    ap.add_argument("--rule", action="append", default=[], metavar="NAME=JSON",
                    help="an extra rule arm rule:NAME, e.g. 'strict={\"keep_if_any\": [], \"prune_if_any\": [\"exact_dup\"]}'")
    ap.add_argument("--arms", help="comma-separated arm names or patterns, e.g. 'plus:*,minus:*' (default: "
                                   + ",".join(DEFAULT_ARMS) + "; all, glia and random always run)")
    ap.add_argument("--nights-cache", type=Path, default=NIGHTS_CACHE,
                    help="where Glia's nights are kept, keyed by corpus, rules and code (default build/pruning/nights)")
    ap.add_argument("--out", type=Path, help="result JSON (default bench/results/pruning.json, _quick with --quick)")
    ap.add_argument("--jobs", type=int, default=2, help="training processes (default 2, one torch thread each)")
    ap.add_argument("--report", type=Path, metavar="JSON",
                    help="write the plot and the Markdown tables of an earlier result again (nothing is run)")
    args = ap.parse_args(argv)
    if args.report:
        result = json.loads(args.report.read_text())
        plot(result, args.report.with_suffix(".png"))
        args.report.with_suffix(".md").write_text(markdown(result))
        print(f"wrote {args.report.with_suffix('.png')} and {args.report.with_suffix('.md')}")
        return 0
    t_start = time.monotonic()
    load_start = os.getloadavg()
    cfg = QUICK if args.quick else FULL
    cfg = replace(cfg, **{k: v for k, v in (("seeds", args.seeds), ("steps", args.steps), ("lr", args.lr)) if v})
    corpus = (args.corpus or (QUICK_CORPUS if args.quick else corpus_dir(args.corpus_seed))).resolve()
    for spec in args.rule:
        name, _, body = spec.partition("=")
        try:
            CUSTOM_RULES[name] = json.loads(body)
        except json.JSONDecodeError as exc:
            ap.error(f"--rule {spec!r}: NAME=JSON with a JSON object of [stages.decide] rule keys ({exc})")
    out = args.out or RESULTS / ("pruning_quick.json" if args.quick else "pruning.json")
    out.parent.mkdir(parents=True, exist_ok=True)

    manifest = ensure_corpus(corpus, args.quick, args.corpus_seed)
    t_nights = time.monotonic()
    db, nights = run_nights(corpus, manifest, args.nights_cache, cfg.light)
    t_arms = time.monotonic()
    cat = read_catalog(db)
    truth = pq.read_table(corpus / "truth.parquet", columns=["id", "kind"])
    kind_of = dict(zip(truth["id"].to_pylist(), truth["kind"].to_pylist()))
    corpus_text = {i: t for n in NIGHTS for i, t in zip(*(pq.read_table(corpus / f"night{n}", columns=["id", "text"])
                                                          .column(c).to_pylist() for c in ("id", "text")))}
    if any(corpus_text[i] != t for i, t in cat.manifest_texts.items()):
        raise RuntimeError("a text read through v_manifest differs from the corpus")
    from glia.curation.rules import DEFAULT_TERMS

    every = arm_names(sorted(DEFAULT_TERMS))
    patterns = args.arms.split(",") if args.arms else list(DEFAULT_ARMS)
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in every)]
    if args.arms and unmatched:
        ap.error(f"--arms {unmatched} match no arm; arms: {', '.join(every)}")
    # The baselines always run: every comparison needs them.
    names = [n for n in every if n in ("all", "glia", "random") or any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    seeds = list(range(cfg.seeds))
    sets, check = kept_sets(cat, names, seeds)
    labels = cluster_labels(cat.embeddings, cfg.clusters)
    comp = {a: composition(cat, kind_of, labels, sets[a][seeds[0]]) for a in names}
    for a in names:
        comp[a]["kept_per_night"] = per_night_counts(cat, sets[a][seeds[0]])
    print(f"kept sets: {len(names)} arms; replayed default rule == v_manifest: {check['whatif_matches_manifest']}; "
          + ", ".join(f"{a} {comp[a]['pruned_share']:.3f}" for a in names), flush=True)

    # Identical (kept set, seed) pairs train identically: each is trained once and shared.
    jobs: dict[tuple[str, int], tuple[int, list[str]]] = {}
    same_as: dict[tuple[str, int], tuple[str, int]] = {}
    first: dict[tuple[str, int], tuple[str, int]] = {}
    for a in names:
        for s in seeds:
            ids = sorted(sets[a][s])
            key = (hashlib.sha256("\n".join(ids).encode()).hexdigest(), s)
            if key in first:
                same_as[(a, s)] = first[key]
            else:
                first[key] = (a, s)
                jobs[(a, s)] = (s, ids)
    print(f"training {len(jobs)} models ({len(names) * len(seeds) - len(jobs)} arm/seed pairs share an identical "
          f"kept set), {cfg.tokens:,} bytes each, {args.jobs} process(es)", flush=True)
    t_train = time.monotonic()
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    runs: dict[tuple[str, int], dict[str, Any]] = {}
    with ProcessPoolExecutor(max(1, args.jobs), mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_init, initargs=(str(corpus), cfg, 1)) as pool:
        futures = {k: pool.submit(train_arm, s, ids) for k, (s, ids) in jobs.items()}
        for k, f in futures.items():
            runs[k] = f.result()
            print(f"  {k[0]:22s} seed {k[1]}  clean {metrics_of(runs[k])['clean']:.4f}  "
                  f"rare {metrics_of(runs[k])['rare']:.4f}  ({runs[k]['seconds']:.0f} s)", flush=True)
    for k, src in same_as.items():
        runs[k] = {**runs[src], "same_kept_set_as": src[0]}
    train_seconds = time.monotonic() - t_train

    result: dict[str, Any] = {
        "config": asdict(cfg), "mode": "quick" if args.quick else "full", "arms": names,
        "corpus": {k: manifest[k] for k in ("sha256", "scale", "seed", "nights", "kinds", "junk_char_share", "heldout",
                                            "eval", "do_not_forget")} | {"path": str(corpus)},
        "nights": {k: v for k, v in nights.items()}, "check": check, "catalog_metrics": cat.night_metrics,
        "composition": comp, "rules": {a: rule_config(a)[0] for a in names},
        "seeds": [{"seed": s, "runs": {a: runs[(a, s)] for a in names}} for s in seeds],
        "tag_table": tag_table(cat, kind_of),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "jobs": args.jobs,
                    "load_avg_start": [round(x, 2) for x in load_start]},
    }
    result["summary"] = summarise(result)
    result["machine"]["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    result["seconds"] = {"nights": round(t_arms - t_nights, 1), "kept_sets": round(t_train - t_arms, 1),
                         "training": round(train_seconds, 1), "total": round(time.monotonic() - t_start, 1)}
    png = out.with_suffix(".png")
    plot(result, png)
    out.with_suffix(".md").write_text(markdown(result))
    out.write_text(json.dumps(result, indent=2, default=lambda o: o.item() if hasattr(o, "item") else str(o)) + "\n")
    print_tables(result)
    print(f"\nwrote {out} and {png} ({result['seconds']['total']:.0f} s: nights {result['seconds']['nights']:.0f}, "
          f"training {result['seconds']['training']:.0f}; load average {load_start[0]:.1f} at the start, "
          f"{result['machine']['load_avg_end'][0]:.1f} at the end)")
    tokens = {runs[k]["tokens"] for k in runs}
    return 0 if tokens == {cfg.tokens} else 1


if __name__ == "__main__":
    sys.exit(main())
