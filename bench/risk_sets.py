"""The labelled toxicity sets the MiniLM risk models train on, and how they are split for
leave-one-platform-out measurement. Read by ``bench/build_risk_minilm.py`` and
``bench/quality_risk.py``.

Training sets (``../shared/data`` beside the checkout, or ``$GLIA_RISK_DATA``; each keeps its
``SOURCE.md`` there):

- ``davidson``: Davidson et al. 2017, tweets (MIT), the ``train`` split of the copy Glia vendors
  (``models/data/davidson-2017``); toxic = hate speech or offensive. Its stored ``test`` split is
  never trained on by any model (the benchmark's ``davidson_test``).
- ``implicit_hate``: the Implicit Hate corpus, stage-1 labels (ElSherief et al. 2021, tweets,
  CC BY 4.0); toxic = explicit or implicit hate.
- ``hatexplain``: HateXplain (Mathew et al. 2021, tweets and Gab posts mixed, MIT); toxic =
  offensive or hate speech. Lower-cased, without punctuation.

Platforms. The per-post source of HateXplain is lost in the copy (its ``platform`` is
``twitter+gab`` for every row), so the folds are the three sets, each one a different
collection: ``davidson`` (Twitter, 2017, sampled by a hate lexicon, mostly profanity),
``implicit_hate`` (Twitter, 2015-2019, tweets of extremist groups' accounts and their replies) and
``hatexplain`` (Twitter and Gab, 2019-2020). Held out, ``hatexplain`` is the one fold with a
platform the training set lacks (Gab: the other two are Twitter only); the two Twitter folds
measure crossing collections, years and labelling guides. ETHOS (YouTube and Reddit) is the one
fully unseen platform: evaluation only, read from ``../shared/data/ethos`` and never copied here.

Tweet markup (``@user``, ``RT``, URLs, HTML entities, HateXplain's ``<user>``/``<number>``
placeholders) is removed from training texts by :func:`clean`: documents in a corpus rarely carry
it, and a model should not learn that a ``<user>`` token means anything. Held-out posts of a fold
whose cleaned text also occurs in that fold's training sets are dropped before scoring.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
SETS = ("davidson", "implicit_hate", "hatexplain")
# Seeded held-out samples per fold, equal sizes so every fold's ROC-AUC has the same precision.
HELDOUT_N = 4_000
SEED = 0
# Posts kept out of every training set: the risk default's test fixture (tests/fixtures/make_risk_heldout.py).
FIXTURE = ROOT / "tests" / "fixtures" / "risk_heldout.csv"


def data_dir() -> Path:
    """``$GLIA_RISK_DATA``, else ``../shared/data`` beside the checkout."""
    return Path(os.environ.get("GLIA_RISK_DATA") or ROOT.parent / "shared" / "data")


_MARKUP = re.compile(r"(?:https?://|www\.)\S+|@\w+|\brt\b:?|&#\d+;|<(?:user|url|number)>", re.IGNORECASE)
_ENTITIES = (("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">"), ("&quot;", '"'), ("&#39;", "'"))
_SPACES = re.compile(r"\s+")


def clean(text: str) -> str:
    """Tweet markup out, entities decoded, whitespace folded."""
    for entity, char in _ENTITIES:
        text = text.replace(entity, char)
    text = _MARKUP.sub(" ", text)
    return _SPACES.sub(" ", text).strip().strip('"').strip()


def _require(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the risk training sets are read from ../shared/data beside the "
                                "checkout (or $GLIA_RISK_DATA); see bench/risk_sets.py")
    return path


def raw_set(name: str) -> tuple[list[str], list[str], np.ndarray]:
    """``(ids, texts, labels)`` of one training set as stored (texts not cleaned)."""
    if name == "davidson":
        t = pq.read_table(ROOT / "models" / "data" / "davidson-2017" / "labeled_data.parquet")
        t = t.filter(pc.equal(pc.cast(t["split"], pa.string()), "train"))
        return ([f"davidson-{r}" for r in t["row"].to_pylist()], t["tweet"].to_pylist(),
                (t["class"].to_numpy() != 2).astype(np.int8))
    file = {"implicit_hate": "implicit-hate/implicit_hate.parquet", "hatexplain": "hatexplain/hatexplain.parquet"}[name]
    t = pq.read_table(_require(data_dir() / file), columns=["id", "text", "label"])
    return t["id"].to_pylist(), t["text"].to_pylist(), t["label"].to_numpy().astype(np.int8)


def fixture_ids() -> set[str]:
    """The ids of the test fixture's posts, which no model trains on."""
    if not FIXTURE.exists():
        return set()
    import pyarrow.csv as pacsv

    return set(pacsv.read_csv(FIXTURE)["id"].to_pylist())


def training_set(name: str) -> tuple[list[str], np.ndarray]:
    """``(cleaned texts, labels)`` of a set, without the fixture's posts and texts left empty by cleaning."""
    ids, texts, y = raw_set(name)
    skip = fixture_ids()
    keep = [i for i, (d, t) in enumerate(zip(ids, texts)) if d not in skip and len(clean(t)) >= 3]
    return [clean(texts[i]) for i in keep], y[keep]


def heldout_pool(name: str) -> tuple[list[str], np.ndarray]:
    """``(cleaned texts, labels)`` a fold holding ``name`` out samples from: the set without the
    fixture's posts, or for ``davidson`` its stored ``test`` split (never trained on)."""
    if name != "davidson":
        return training_set(name)
    t = pq.read_table(ROOT / "models" / "data" / "davidson-2017" / "labeled_data.parquet")
    t = t.filter(pc.equal(pc.cast(t["split"], pa.string()), "test"))
    return [clean(s) for s in t["tweet"].to_pylist()], (t["class"].to_numpy() != 2).astype(np.int8)


def heldout_sample(name: str, train_texts: set[str]) -> tuple[list[str], np.ndarray, int]:
    """A fold's held-out posts: :func:`heldout_pool` minus texts the fold trained on (and texts
    cleaning left empty), then a seeded sample of :data:`HELDOUT_N`. Also returns how many were
    dropped as training duplicates."""
    texts, y = heldout_pool(name)
    keep = [i for i, s in enumerate(texts) if s not in train_texts and len(s) >= 3]
    dropped = len(texts) - len(keep)
    rng = np.random.default_rng(SEED)
    pick = np.sort(rng.choice(len(keep), min(HELDOUT_N, len(keep)), replace=False))
    rows = [keep[i] for i in pick]
    return [texts[i] for i in rows], y[rows], dropped


ETHOS = ROOT.parent / "shared" / "data" / "ethos" / "Ethos_Dataset_Binary.csv"


def ethos() -> tuple[list[str], np.ndarray] | None:
    """ETHOS binary (evaluation only; hate = ``isHate >= 0.5``), raw, or None where absent."""
    path = Path(os.environ["GLIA_RISK_DATA"]) / "ethos" / ETHOS.name if os.environ.get("GLIA_RISK_DATA") else ETHOS
    if not path.exists():
        return None
    with open(path, encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter=";"))
    return [r["comment"] for r in rows], np.array([float(r["isHate"]) >= 0.5 for r in rows], np.int8)
