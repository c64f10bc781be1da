"""The default toxicity head of the ``risk`` tagger: trained locally, offline, in seconds.

No installable package ships a transformer toxicity model (detoxify downloads its weights), so
Glia's default is a linear classifier trained here, on first use, from data in this repository:

- positives: Davidson et al. 2017 tweets labelled hate speech (class 0) or offensive (class 1),
  negatives: tweets labelled neither (class 2); only the ``train`` split of
  ``models/data/davidson-2017/labeled_data.parquet`` (the stored, stratified 20 % ``test`` split is
  never trained on);
- more negatives: clean prose, the paragraphs of ``examples/commons/night1`` cut into chunks
  (Austen, the King James Bible, Shakespeare, Debian licences, the Jargon File, the Devil's
  Dictionary). Without them a tweet-trained model flags many literary paragraphs (she/her,
  "fetch", "itching" share n-grams with the slurs; ``bench/bench_risk.py`` measures this
  ablation). Nights 2 and 3 are held out, and
  so is every document of them that is a copy or near copy of a night-1 document
  (``examples/commons/planted.csv``): the clean-prose false-positive rate is measured there.

Features: word 1-2-grams and byte 2-5-grams of the space-padded text (character n-grams for
ASCII), each hashed into 2^20 buckets in numpy (no vocabulary to store, no Python per n-gram),
sublinear tf times smooth idf, L2-normalised per block; one L2-regularised logistic regression
over both blocks, classes balanced. Documents are cut into tweet-sized chunks (sentences packed
up to 300 characters, never across a blank line) and scored as the maximum over their chunks:
one toxic paragraph in a long document counts, and a long clean document is neither diluted
into looking clean nor summed into looking toxic.

The trained head is an ``npz`` of idf and weights plus a JSON of its recipe, stored under
``core.runtime.model_cache_dir("risk")/head-<key>/``; ``key`` hashes the training data,
the recipe and the code (this module's and ``core.text``'s source), so a change to any of
them trains a new head (and, through the
tagger's config, recomputes the tags). ``glia models train-risk`` builds it ahead of time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse as sp

from glia.core.runtime import file_stamps, hash_files, model_cache_dir

log = logging.getLogger(__name__)

# The artefact key hashes the source of this module and of core/text.py (the word hashes), so
# any change to how heads are trained or scored trains a new one; bump CODE_VERSION for a change
# elsewhere that alters training.
CODE_VERSION = "1"
CODE_FILES = (Path(__file__).resolve(), Path(__file__).resolve().parents[1] / "core" / "text.py")
# Training data ships inside the package (models/data, package data of the wheel), so an installed
# Glia trains its own head; the held-out evaluation reads the example corpus of a checkout.
DATA = Path(__file__).resolve().parent / "data"
DAVIDSON = DATA / "davidson-2017" / "labeled_data.parquet"
PROSE = DATA / "risk_prose.parquet"  # night 1 of the example corpus (examples/build_risk_prose.py)


def _checkout_root() -> Path:
    """The source tree with ``examples/commons``: the one this module lives in, else the working
    directory (an installed package run from its checkout, as in the Docker image)."""
    here = Path(__file__).resolve().parents[1]
    return next((root for root in (here, Path.cwd()) if (root / "examples" / "commons").exists()), here)


COMMONS = _checkout_root() / "examples" / "commons"
TRAIN_NIGHTS = ("night1",)
HELDOUT_NIGHTS = ("night2", "night3")
# Literary sources of the example corpus: the clean-prose false-positive rate is measured on them.
LITERARY = ("austen", "kjv", "shakespeare", "devil", "jargon")
# Flag threshold on the default head's probability, chosen from leave-one-source-out runs (train on
# all prose but one source, score that source; bench/bench_risk.py repeats them): at 0.7 the worst
# unseen source (Shakespeare) had 0.5 % of its paragraphs flagged (3.7 % at 0.5) while 94 % of the
# held-out toxic tweets were.
DEFAULT_THRESHOLD = 0.7


@dataclass(frozen=True)
class Recipe:
    """Everything that shapes the head besides the data. Part of the artefact key."""

    word_ngrams: tuple[int, int] = (1, 2)
    byte_ngrams: tuple[int, int] = (2, 5)
    n_features: int = 2**20  # per block
    C: float = 4.0
    max_chars: int = 300  # chunk size for training prose (and the default at inference)
    seed: int = 0
    threshold: float = DEFAULT_THRESHOLD


# -- text -------------------------------------------------------------------------------------

_URL = r"(?:https?://|www\.)\S+"
_MENTION = r"@\w+"
_RETWEET = r"\brt\b:?"
_NUMERIC_ENTITY = r"&#\d+;"  # emoji in the tweets are HTML entities; in documents they are characters
_ENTITIES = (("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">"), ("&quot;", '"'), ("&#39;", "'"))


def normalize(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Lower-cased text without URLs, @mentions, retweet markers and HTML entities, whitespace
    folded (vectorised with RE2): the tweet-only markup is no evidence either way."""
    x = pc.utf8_lower(texts)
    for entity, char in _ENTITIES:
        x = pc.replace_substring(x, entity, char)
    x = pc.replace_substring_regex(x, "|".join((_URL, _MENTION, _RETWEET, _NUMERIC_ENTITY)), " ")
    x = pc.utf8_trim_whitespace(pc.replace_substring_regex(x, r"\s+", " "))
    return x.combine_chunks() if isinstance(x, pa.ChunkedArray) else x


_PARAGRAPHS = re.compile(r"\n\s*\n")
_PIECES = re.compile(r"[^\n.!?;:]*(?:[.!?;:]+[\"')\]]*|\n+|$)")


def _split_long(text: str, max_chars: int, paragraphs: bool = True) -> list[str]:
    """Chunks of at most ``max_chars`` characters that never cross a paragraph break (a blank
    line): inside a paragraph, sentence-like pieces are packed greedily; a piece longer than the
    limit is cut at its last space before it. A toxic paragraph thus stays its own chunk instead of
    being averaged with the clean sentences around it. With ``paragraphs=False`` sentences are
    packed across paragraph breaks too (fewer, fuller windows: a play's one-line speeches or a
    dictionary's short entries do not each become a window of their own)."""
    chunks: list[str] = []
    for paragraph in (_PARAGRAPHS.split(text) if paragraphs else [text]):
        cur = ""
        for piece in _PIECES.findall(paragraph):
            piece = piece.strip()
            while len(piece) > max_chars:
                cut = piece.rfind(" ", 0, max_chars)
                cut = cut if cut > 0 else max_chars
                if cur:
                    chunks.append(cur)
                    cur = ""
                chunks.append(piece[:cut])
                piece = piece[cut:].strip()
            if not piece:
                continue
            if cur and len(cur) + 1 + len(piece) > max_chars:
                chunks.append(cur)
                cur = piece
            else:
                cur = f"{cur} {piece}" if cur else piece
        if cur:
            chunks.append(cur)
    return chunks or [text[:max_chars]]


def chunk(texts: pa.Array | pa.ChunkedArray, max_chars: int, paragraphs: bool = True) -> tuple[pa.Array, np.ndarray]:
    """``(chunks, owner)``: texts of at most ``max_chars`` characters pass whole; longer ones are
    cut at sentence ends (and at paragraph breaks unless ``paragraphs=False``, see :func:`_split_long`).
    ``owner[i]`` is the index of the text chunk ``i`` came from, ascending."""
    if max_chars < 20:
        raise ValueError(f"max_chars must be at least 20 (a chunk needs a few words), got {max_chars}")
    texts = texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts
    lengths = pc.utf8_length(texts).to_numpy(zero_copy_only=False)
    long_rows = np.flatnonzero(lengths > max_chars)
    if len(long_rows) == 0:
        return texts, np.arange(len(texts))
    pieces = texts.to_pylist()
    per_text: list[list[str]] = [[s] for s in pieces]
    for i in long_rows:  # only the long texts take the Python path
        per_text[i] = _split_long(pieces[i], max_chars, paragraphs)
    counts = np.fromiter(map(len, per_text), np.int64, len(per_text))
    flat = [c for cs in per_text for c in cs]
    return pa.array(flat, pa.string()), np.repeat(np.arange(len(per_text)), counts)


def max_by_owner(scores: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """Per text, the largest score of its chunks (``owner`` ascending, every text has a chunk)."""
    if n == 0:
        return np.empty(0, scores.dtype)
    starts = np.searchsorted(owner, np.arange(n))
    return np.maximum.reduceat(scores, starts)


# -- features -------------------------------------------------------------------------------
#
# Both blocks are hashed with numpy over the flat Arrow buffers (no Python per n-gram): words
# and word bigrams with ``core.text`` (the MinHash tagger's xxh3 word hashes), byte 2-5-grams
# of `` text `` with a rolling polynomial hash and splitmix64's finaliser. Each block's hashes
# land in ``n_features`` buckets; counts per (chunk, bucket) make a CSR matrix.

_U64 = np.uint64
_POLY = _U64(0x100000001B3)  # FNV-1a's prime: a rolling byte polynomial
_MIX1, _MIX2 = _U64(0xBF58476D1CE4E5B9), _U64(0x94D049BB133111EB)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit moves every output bit (buckets = low bits)."""
    with np.errstate(over="ignore"):
        h = (h ^ (h >> _U64(30))) * _MIX1
        h = (h ^ (h >> _U64(27))) * _MIX2
        return h ^ (h >> _U64(31))


def _bucket_matrix(rows: np.ndarray, hashes: np.ndarray, n_rows: int, n_features: int) -> sp.csr_matrix:
    cols = (hashes % _U64(n_features)).astype(np.int32)
    m = sp.csr_matrix((np.ones(len(cols), np.float32), (rows.astype(np.int32), cols)), shape=(n_rows, n_features))
    m.sum_duplicates()
    return m


def word_counts(texts: pa.Array, ngrams: tuple[int, int], n_features: int) -> sp.csr_matrix:
    """Hashed counts of each text's word n-grams (``\\w+`` words), ``ngrams`` = (low, high)."""
    from glia.core.text import shingle_hashes, word_hashes

    words, offsets = word_hashes(texts)
    rows, hashes = [], []
    for n in range(ngrams[0], ngrams[1] + 1):
        h, off = (words, offsets) if n == 1 else shingle_hashes(words, offsets, n)
        rows.append(np.repeat(np.arange(len(texts)), np.diff(off)))
        hashes.append(_mix(h ^ _U64(n)))  # a salt per n: a one-word text's "bigram" is not its unigram
    return _bucket_matrix(np.concatenate(rows), np.concatenate(hashes), len(texts), n_features)


def byte_counts(texts: pa.Array, ngrams: tuple[int, int], n_features: int) -> sp.csr_matrix:
    """Hashed counts of each text's byte n-grams, the text padded with a space at both ends (so
    word starts and ends are n-grams of their own, as scikit-learn's ``char_wb``)."""
    padded = pc.binary_join_element_wise(" ", texts.cast(pa.string()), " ", "").cast(pa.large_binary())
    offsets = np.frombuffer(padded.buffers()[1], np.int64)[padded.offset: padded.offset + len(padded) + 1]
    data = np.frombuffer(padded.buffers()[2], np.uint8)[offsets[0]: offsets[-1]].astype(_U64)
    offsets = offsets - offsets[0]
    doc = np.repeat(np.arange(len(texts), dtype=np.int32), np.diff(offsets))
    room = offsets[1:][doc] - np.arange(len(data))  # bytes from each position to its text's end
    rows, hashes = [], []
    h = np.zeros(len(data), _U64)
    with np.errstate(over="ignore"):
        for n in range(1, ngrams[1] + 1):
            nxt = np.zeros(len(data), _U64)
            nxt[: len(data) - n + 1] = data[n - 1:]
            h = h * _POLY + nxt + _U64(1)  # +1: a zero byte still changes the hash
            if n >= ngrams[0]:
                ok = room >= n
                rows.append(doc[ok])
                hashes.append(_mix(h[ok]))
    return _bucket_matrix(np.concatenate(rows), np.concatenate(hashes), len(texts), n_features)


def _counts(recipe: Recipe, texts: pa.Array) -> list[sp.csr_matrix]:
    return [word_counts(texts, recipe.word_ngrams, recipe.n_features),
            byte_counts(texts, recipe.byte_ngrams, recipe.n_features)]


def _tfidf(counts: sp.csr_matrix, idf: np.ndarray) -> sp.csr_matrix:
    """Sublinear tf times idf, each row L2-normalised (as scikit-learn's TfidfTransformer)."""
    from sklearn.preprocessing import normalize as l2_rows

    x = counts.tocsr(copy=True)
    x.data = ((1.0 + np.log(x.data)) * idf[x.indices]).astype(np.float32)
    return l2_rows(x, norm="l2", copy=False)


def _smooth_idf(counts: sp.csr_matrix) -> np.ndarray:
    n = counts.shape[0]
    df = np.bincount(counts.indices, minlength=counts.shape[1])
    return (np.log((1.0 + n) / (1.0 + df)) + 1.0).astype(np.float32)


# -- the head -----------------------------------------------------------------------------------


@dataclass
class RiskHead:
    """A trained head: per block idf, the logistic regression's weights, its recipe and key."""

    recipe: Recipe
    key: str
    idf: list[np.ndarray]
    coef: np.ndarray  # (2 * n_features,) float32: word block, then char block
    intercept: float
    info: dict = field(default_factory=dict)  # training counts and seconds, for people

    @property
    def threshold(self) -> float:
        return self.recipe.threshold

    def features(self, normalized: pa.Array) -> sp.csr_matrix:
        blocks = [_tfidf(c, idf) for c, idf in zip(_counts(self.recipe, normalized), self.idf)]
        return sp.hstack(blocks, format="csr")

    def predict_chunks(self, chunks: pa.Array, slice_size: int = 8192) -> np.ndarray:
        """Probability of toxicity per chunk (float32 in [0, 1]), ``slice_size`` chunks at a time
        (bounds the memory of the n-gram buffers)."""
        out = np.empty(len(chunks), np.float32)
        for start in range(0, len(chunks), slice_size):
            part = normalize(chunks.slice(start, slice_size))
            z = self.features(part) @ self.coef + self.intercept
            out[start:start + len(part)] = 1.0 / (1.0 + np.exp(-z.astype(np.float64)))
        return out

    def score(self, texts: pa.Array | pa.ChunkedArray, max_chars: int | None = None) -> np.ndarray:
        """Probability of toxicity per document: the maximum over its chunks."""
        chunks, owner = chunk(texts, max_chars or self.recipe.max_chars)
        return max_by_owner(self.predict_chunks(chunks), owner, len(texts))

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(folder / "head.npz", idf_word=self.idf[0], idf_char=self.idf[1], coef=self.coef,
                            intercept=np.array([self.intercept], np.float64))
        meta = {"key": self.key, "recipe": asdict(self.recipe), "info": self.info}
        (folder / "head.json").write_text(json.dumps(meta, indent=2, sort_keys=True))

    @classmethod
    def load(cls, folder: Path) -> RiskHead:
        meta = json.loads((folder / "head.json").read_text())
        r = meta["recipe"]
        recipe = Recipe(**{**r, "word_ngrams": tuple(r["word_ngrams"]), "byte_ngrams": tuple(r["byte_ngrams"])})
        with np.load(folder / "head.npz") as z:
            return cls(recipe, meta["key"], [z["idf_word"], z["idf_char"]], z["coef"], float(z["intercept"][0]),
                       meta.get("info", {}))


# -- training data ------------------------------------------------------------------------------


def _require(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: the n-gram risk head trains on models/data (shipped with Glia) and is evaluated "
            "on examples/commons of a checkout. Reinstall Glia, or train the head once where the data is "
            "(`glia models train-risk --out DIR`) and point [taggers.risk] models_dir at DIR."
        )
    return path


def _night_files(nights: tuple[str, ...]) -> list[Path]:
    return sorted(f for n in nights for f in _require(COMMONS / n).glob("*.parquet"))


def davidson(split: str) -> tuple[pa.Array, np.ndarray]:
    """``(tweets, toxic)`` of one stored split (``train`` or ``test``); toxic = hate or offensive."""
    t = pq.read_table(_require(DAVIDSON), columns=["tweet", "class", "split"])
    t = t.filter(pc.equal(pc.cast(t["split"], pa.string()), split))
    return t["tweet"].combine_chunks(), (t["class"].to_numpy() != 2).astype(np.int8)


def _read_nights(nights: tuple[str, ...]) -> pa.Table:
    return pa.concat_tables([pq.read_table(f, columns=["id", "text", "source"]) for f in _night_files(nights)])


def train_prose() -> pa.Array:
    """The clean paragraphs the head is trained on as negatives (every source of night 1)."""
    return pq.read_table(_require(PROSE), columns=["text"])["text"].combine_chunks()


def heldout_prose(sources: tuple[str, ...] = LITERARY) -> pa.Table:
    """Paragraphs of nights 2 and 3 from ``sources``, minus every copy or near copy (any pair in
    ``planted.csv``) of a night-1 document: clean prose the head has not seen."""
    held = _read_nights(HELDOUT_NIGHTS)
    held = held.filter(pc.is_in(held["source"], pa.array(list(sources))))
    seen = pc.unique(_read_nights(TRAIN_NIGHTS)["id"])
    pairs = _planted()
    linked = pc.or_(pc.is_in(pairs["doc_id"], seen), pc.is_in(pairs["duplicate_of"], seen))
    related = pc.unique(pa.concat_arrays([pairs["doc_id"].filter(linked).combine_chunks(),
                                          pairs["duplicate_of"].filter(linked).combine_chunks()]))
    return held.filter(pc.invert(pc.is_in(held["id"], related)))


def _planted() -> pa.Table:
    import pyarrow.csv as pacsv

    return pacsv.read_csv(_require(COMMONS / "planted.csv"))


_DATA_HASHES: dict[tuple[object, ...], str] = {}


def training_data_hash(recipe: Recipe) -> str:
    """The artefact key: sha256 over the training files, the recipe, the code (:data:`CODE_FILES`,
    :data:`CODE_VERSION`) and the scikit-learn version (whose solver defines the weights).

    Cached per process while the files' sizes and mtimes stay the same: the tagger asks for
    the key on every batch (its cache key and its ``risk_model`` column).
    """
    import sklearn

    data = [_require(DAVIDSON), _require(PROSE)]
    recipe_json = json.dumps(asdict(recipe), sort_keys=True)
    stamp = (recipe_json, sklearn.__version__, file_stamps([*data, *CODE_FILES]))
    if stamp not in _DATA_HASHES:
        h = hashlib.sha256()
        hash_files(h, ((f.name, f) for f in data))
        h.update(recipe_json.encode())
        for f in CODE_FILES:
            h.update(f.read_bytes())
        h.update(f"code={CODE_VERSION};sklearn={sklearn.__version__}".encode())
        _DATA_HASHES[stamp] = h.hexdigest()[:16]
    return _DATA_HASHES[stamp]


# -- training, storing, loading ---------------------------------------------------------------------


def train(recipe: Recipe = Recipe(), prose: pa.Array | None = None, key: str | None = None) -> RiskHead:
    """Fit the head on Davidson's train split plus clean ``prose`` chunks (default: night 1).

    ``prose`` lets the benchmark train leave-one-source-out variants; the default head always
    uses :func:`train_prose`.
    """
    from sklearn.linear_model import LogisticRegression

    t0 = time.monotonic()
    tweets, toxic = davidson("train")
    custom = prose is not None
    prose = prose if custom else train_prose()
    prose_chunks, _ = chunk(prose, recipe.max_chars)
    texts = normalize(pa.concat_arrays([tweets, prose_chunks.cast(pa.string())]))
    y = np.concatenate([toxic, np.zeros(len(prose_chunks), np.int8)])
    counts = _counts(recipe, texts)
    idf = [_smooth_idf(c) for c in counts]
    x = sp.hstack([_tfidf(c, i) for c, i in zip(counts, idf)], format="csr")
    clf = LogisticRegression(C=recipe.C, class_weight="balanced", solver="liblinear", max_iter=1000,
                             random_state=recipe.seed)
    clf.fit(x, y)
    info = {"n_tweets": len(tweets), "n_toxic_tweets": int(toxic.sum()), "n_prose_docs": len(prose),
            "n_prose_chunks": len(prose_chunks), "train_seconds": round(time.monotonic() - t0, 2),
            "trained_on": {"davidson": "split=train", "prose": "custom" if custom else list(TRAIN_NIGHTS)}}
    return RiskHead(recipe, key or "custom", idf, clf.coef_[0].astype(np.float32), float(clf.intercept_[0]), info)


def head_dir(models_dir: Path | None = None, recipe: Recipe = Recipe()) -> Path:
    """Where the head for the current data and recipe lives (it may not exist yet).

    Without the training data (an installation that ships no source tree) the key cannot be
    computed; then the most recently built head in ``models_dir`` is used, e.g. one made with
    ``glia models train-risk --out DIR`` on a checkout.
    """
    root = Path(models_dir) if models_dir else model_cache_dir("risk")
    try:
        return root / f"head-{training_data_hash(recipe)}"
    except FileNotFoundError:
        built = sorted(root.glob("head-*/head.json"), key=lambda f: f.stat().st_mtime)
        if not built:
            raise
        log.warning("risk: no training data here to check the head's key; using the newest built head, %s",
                    built[-1].parent)
        return built[-1].parent


def build(models_dir: Path | None = None, recipe: Recipe = Recipe()) -> tuple[RiskHead, Path]:
    """Train the default head and store it atomically (a finished folder is renamed into place,
    so a reader never sees half a head, and two processes training at once both succeed)."""
    folder = head_dir(models_dir, recipe)
    head = train(recipe, key=folder.name.removeprefix("head-"))
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".head-", dir=folder.parent))
    head.save(staging)
    staging.chmod(0o755)  # mkdtemp makes it private; a model cache is shared
    try:
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        os.rename(staging, folder)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)  # another process put the same head in place first
        if not (folder / "head.json").exists():
            raise
    return head, folder


def ensure(models_dir: Path | None = None, force: bool = False) -> tuple[RiskHead, Path, bool]:
    """``(head, folder, trained)``: the default head for the current data and recipe, trained
    only if it is missing (or ``force``)."""
    folder = head_dir(models_dir)
    if force or not (folder / "head.json").exists():
        head, folder = build(models_dir)
        return head, folder, True
    return RiskHead.load(folder), folder, False


_LOADED: dict[Path, RiskHead] = {}
_LOAD_LOCK = threading.Lock()


def load_default(models_dir: Path | None = None) -> RiskHead:
    """The default head, loaded once per process; trained (with a log line) when missing."""
    folder = head_dir(models_dir)
    with _LOAD_LOCK:
        if folder not in _LOADED:
            if not (folder / "head.json").exists():
                log.warning("risk: no default toxicity head at %s; training it now from models/data and "
                            "examples/commons/night1 (once, ~20-60 s; `glia models train-risk` does it ahead)", folder)
                head, _ = build(models_dir)
                log.warning("risk: trained in %.1f s", head.info["train_seconds"])
            _LOADED[folder] = RiskHead.load(folder)
        return _LOADED[folder]


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC-AUC (ties count half), so callers need no extra dependency for one number."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def evaluate(head: RiskHead, max_chars: int | None = None) -> dict[str, float]:
    """Held-out numbers: ROC-AUC on Davidson's test split (toxic = hate or offensive), the share of
    held-out literary paragraphs flagged at the head's threshold, and rates on the tweets."""
    tweets, toxic = davidson("test")
    p = head.score(tweets, max_chars)
    prose = heldout_prose()
    s = head.score(prose["text"], max_chars)
    thr = head.threshold
    return {
        "roc_auc_davidson_test": roc_auc(toxic, p),
        "n_davidson_test": len(tweets),
        "threshold": thr,
        "tweet_tpr": float(np.mean(p[toxic == 1] >= thr)),
        "tweet_fpr": float(np.mean(p[toxic == 0] >= thr)),
        "prose_fpr": float(np.mean(s >= thr)),
        "n_prose_heldout": len(s),
        "prose_max_risk": float(s.max()) if len(s) else 0.0,
    }
