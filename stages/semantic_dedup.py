"""The ``semantic_dedup`` night stage: documents whose embedding is almost identical to a kept one.

Reads the ``embedding`` tagger's ``_embedding`` and, when the ``novelty`` stage has committed a
bank, the bank of earlier nights' kept documents (``storage.bank``; it is a reservoir sample
of them, capped at ``[stages.novelty] capacity``). The algorithm and the survivor rule are in
``curation.semantic_dedup``. Documents the ``dedup`` stage already marked as exact or near
duplicates tonight are left out (they have their reason, and are no survivors).

Tags (output ``semantic_dup``): ``semantic_dup_of`` (the kept document, tonight's or the
bank's, whose cosine is >= ``1 - eps``; null otherwise), ``semantic_similarity`` (the cosine to
it, or to the nearest earlier kept document found when there is none; null when none was
seen). The built-in rule term ``semantic_dup`` (add it to ``prune_if_any``) prunes them with
the reason ``semantic_dup_of:<id>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from glia.core.context import RunContext
from glia.curation.semantic_dedup import normalize, resolve
from glia.stages.base import NightStage, StageInputs, StageOutput
from glia.stages.novelty import MODEL_IDENTITY, _duplicates, _matrix, _model_identity
from glia.storage.bank import BANK_KIND, Bank
from glia.storage.catalog import Segment

SEMANTIC_DUP = "semantic_dup"
SEMANTIC_DUP_SCHEMA = pa.schema([
    ("doc_id", pa.string()),
    ("semantic_dup_of", pa.string()),  # the kept document this one duplicates (null: none)
    ("semantic_similarity", pa.float32()),  # cosine to semantic_dup_of, else to the nearest earlier kept document
])


class SemanticDedupStage(NightStage):
    name = "semantic_dedup"
    version = "1"
    needs = ("embedding",)
    reads = ("dedup", "novelty")
    requires = ("faiss",)

    @dataclass(frozen=True)
    class Params:
        """``eps``: a document is a duplicate at cosine >= 1 - eps (0.05: measured on the example
        corpus with MiniLM, docs/benchmarks.md); ``k``: neighbours each document looks at; ``exact_max``:
        nights up to this many documents are searched exactly, larger ones with an IVF index
        searching ``nprobe`` lists; ``seed``: the IVF training sample's; ``use_bank``: compare
        with the novelty bank of earlier nights when there is one."""

        eps: float = 0.05
        k: int = 32
        exact_max: int = 10_000
        nprobe: int = 16
        seed: int = 0
        use_bank: bool = True

        def __post_init__(self) -> None:
            if not 0.0 < self.eps < 1.0:
                raise ValueError(f"eps must be in (0, 1) (duplicates at cosine >= 1 - eps), got {self.eps!r}")
            for key in ("k", "exact_max", "nprobe"):
                if getattr(self, key) < 1:
                    raise ValueError(f"{key} must be an integer >= 1, got {getattr(self, key)!r}")

    def __init__(self, **params: Any) -> None:
        self.configure(params)

    def outputs(self) -> dict[str, pa.Schema]:
        return {SEMANTIC_DUP: SEMANTIC_DUP_SCHEMA}

    def config(self) -> dict[str, Any]:
        p = self.params
        return {"eps": p.eps, "k": p.k, "exact_max": p.exact_max, "nprobe": p.nprobe, "seed": p.seed, "use_bank": p.use_bank}

    def load(self, con: duckdb.DuckDBPyConnection, ctx: RunContext) -> Segment | None:
        """The latest committed novelty bank, if any (read-only)."""
        from glia.storage.catalog import Catalog

        banks = [s for s in Catalog.segments_of(con) if s.kind == BANK_KIND]
        return max(banks, key=lambda s: int(s.params["run_id"])) if banks and self.params.use_bank else None

    def run(self, ctx: RunContext, state: Segment | None, inputs: StageInputs) -> StageOutput:
        files = inputs.files.get("embedding", [])
        if not files:
            return StageOutput()
        model = _model_identity([f.path for f in files])
        emb = inputs.read("embedding", ["_embedding"])
        emb = emb.filter(pc.invert(pc.is_in(emb["doc_id"], value_set=_duplicates(inputs))))
        emb = emb.take(pc.sort_indices(emb, sort_keys=[("doc_id", "ascending")]))
        ids = emb["doc_id"].combine_chunks()
        vectors = normalize(_matrix(emb["_embedding"], int(model["dim"])))
        p = self.params
        threshold = 1.0 - p.eps

        bank_sim = np.full(len(ids), np.nan, np.float32)
        bank_ids = pa.nulls(len(ids), pa.string())
        bank_size, bank_skipped = 0, 0
        if state is not None:
            bank = Bank.load(Path(state.path))
            if {k: bank.model.get(k) for k in MODEL_IDENTITY} == {k: model.get(k) for k in MODEL_IDENTITY}:
                bank_sim, bank_ids = bank.nearest(vectors, ids, "cpu")
                bank_size = bank.size
            else:  # another model's vectors are not comparable; the novelty stage reports the change
                bank_skipped = 1

        res = resolve(vectors, bank_sim, threshold, p.k, p.exact_max, p.nprobe, p.seed)
        tonight_of = pc.take(ids, pa.array(np.where(res.dup_of >= 0, res.dup_of, 0)))
        dup_of = pc.if_else(pa.array(res.bank_dup), bank_ids,
                            pc.if_else(pa.array(res.dup_of >= 0), tonight_of, pa.scalar(None, pa.string())))
        sim = pa.array(res.similarity, pa.float32(), mask=np.isnan(res.similarity))
        tags = pa.table({"doc_id": ids, "shard_id": emb["shard_id"].combine_chunks(),
                         "semantic_dup_of": dup_of, "semantic_similarity": sim})
        n_bank = int(res.bank_dup.sum())
        n_tonight = int((res.dup_of >= 0).sum())
        return StageOutput(
            tags={SEMANTIC_DUP: tags},
            counts={"compared": len(ids), "dups": n_bank + n_tonight, "dups_bank": n_bank, "dups_tonight": n_tonight,
                    "exact_search": int(res.exact), "saturated": res.saturated, "bank_size": bank_size,
                    "bank_skipped_model": bank_skipped, "threshold": threshold},
        )
