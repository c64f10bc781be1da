"""The ``novelty`` night stage: how unlike everything kept on earlier nights each document is.

``novelty = 1 - max cosine(document, bank)``, where the bank (``storage.bank``) is a capped
uniform sample of the embeddings of documents kept on earlier nights; ``novelty_nearest`` is
the bank document it came closest to. Tonight's documents are scored first and added after,
so a document is never compared with itself or with tonight's other documents (duplicates
within tonight are the ``dedup`` stage's job). Documents ``dedup`` marked as exact or near
duplicates tonight are scored but not added: the bank samples what was kept.

The bank only moves forward by a committed run: tonight's bank is a new folder registered in
the run's commit, and the stage always starts from the latest committed one.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Literal

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from glia.core.context import RunContext
from glia.core.runtime import check_device
from glia.stages.base import NightStage, StageInputs, StageOutput
from glia.storage.bank import BANK_KIND, INDEX_KINDS, Bank, bank_dir, bank_root
from glia.storage.catalog import Segment
from glia.storage.parquet_io import read_metadata

NOVELTY = "novelty"
NOVELTY_SCHEMA = pa.schema([
    ("doc_id", pa.string()),
    ("novelty", pa.float32()),  # 1 - max cosine to the bank; 1.0 when the bank is empty
    ("novelty_nearest", pa.string()),  # doc_id of the nearest bank document (null: empty bank)
    ("novelty_bank_size", pa.int64()),  # documents in the bank this one was compared with
])
# Which embedding model a bank's vectors came from: vectors of two models are not comparable.
MODEL_IDENTITY = ("model_hash", "dim")
DUP_COLUMNS = {"exact_dup": "exact_dup_of", "near_dup": "near_dup_of"}


class NoveltyStage(NightStage):
    name = "novelty"
    version = "1"
    needs = ("embedding",)
    requires = ("faiss",)

    @dataclass(frozen=True)
    class Params:
        """``capacity``: documents the bank keeps; ``index``: ``flat`` (exact), ``hnsw`` or ``ivf``
        (approximate, for large banks); ``seed``: the reservoir's seed (with the run id);
        ``device``: ``auto`` uses faiss-gpu when installed and a GPU is visible;
        ``keep_snapshots``: earlier committed bank folders kept beside tonight's (0 keeps all;
        the current one is always kept until tonight's commits, so a failed night loses nothing);
        ``on_model_change``: ``error`` or ``reset`` (start an empty bank) when tonight's
        embeddings come from another model than the bank's."""

        capacity: int = 100_000
        index: str = "flat"
        seed: int = 0
        device: str = "auto"
        keep_snapshots: int = 1
        on_model_change: Literal["error", "reset"] = "error"

        def __post_init__(self) -> None:
            if self.capacity < 1:
                raise ValueError(f"capacity must be a positive integer, got {self.capacity!r}")
            if self.index not in INDEX_KINDS:
                raise ValueError(f"index must be one of {', '.join(INDEX_KINDS)}, got {self.index!r}")
            check_device(self.device)
            if self.keep_snapshots < 0:
                raise ValueError(f"keep_snapshots must be an integer >= 0 (0 keeps all), got {self.keep_snapshots!r}")

    def __init__(self, **params: Any) -> None:
        p = self.configure(params)
        self.capacity, self.index, self.seed, self.device = p.capacity, p.index, p.seed, p.device
        self.keep_snapshots, self.on_model_change = p.keep_snapshots, p.on_model_change

    def outputs(self) -> dict[str, pa.Schema]:
        return {NOVELTY: NOVELTY_SCHEMA}

    def config(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "index": self.index, "seed": self.seed, "on_model_change": self.on_model_change}

    def load(self, con: duckdb.DuckDBPyConnection, ctx: RunContext) -> list[Segment]:
        """Committed bank segments, oldest first (the last one is the current bank)."""
        from glia.storage.catalog import Catalog

        banks = [s for s in Catalog.segments_of(con) if s.kind == BANK_KIND]
        return sorted(banks, key=lambda s: int(s.params["run_id"]))

    def run(self, ctx: RunContext, state: list[Segment] | None, inputs: StageInputs) -> StageOutput:
        state = state or []
        files = inputs.files.get("embedding", [])
        if not files:
            return StageOutput()
        model = _model_identity([f.path for f in files])
        emb = inputs.read("embedding", ["_embedding"])
        emb = emb.take(pc.sort_indices(emb, sort_keys=[("doc_id", "ascending")]))
        vectors = _matrix(emb["_embedding"], int(model["dim"]))

        bank = Bank.load(Path(state[-1].path)) if state else Bank.empty(vectors.shape[1], self.capacity, self.index, model)
        reset = 0
        if bank.size and {k: bank.model.get(k) for k in MODEL_IDENTITY} != {k: model.get(k) for k in MODEL_IDENTITY}:
            if self.on_model_change == "error":
                raise ValueError(
                    f"the novelty bank {state[-1].path} holds embeddings of model {bank.model}, but tonight's come from "
                    f"{model}; keep [taggers.embedding] model as it was, or set [stages.novelty] on_model_change = "
                    "\"reset\" to start an empty bank"
                )
            bank, reset = Bank.empty(vectors.shape[1], self.capacity, self.index, model), 1
        _remove_stale_banks(ctx.state_dir, state, ctx.run_id, self.keep_snapshots)

        sim, nearest = bank.nearest(vectors, emb["doc_id"], self.device)
        novelty = np.where(np.isnan(sim), 1.0, np.clip(1.0 - sim, 0.0, 2.0)).astype(np.float32)
        tags = pa.table({
            "doc_id": emb["doc_id"], "shard_id": emb["shard_id"], "novelty": novelty, "novelty_nearest": nearest,
            "novelty_bank_size": pa.array(np.full(emb.num_rows, bank.size, np.int64)),
        })

        keep = pc.invert(pc.is_in(emb["doc_id"], value_set=_duplicates(inputs)))
        kept = emb.filter(keep)
        docs = inputs.documents
        src = pc.take(docs["source"], pc.index_in(kept["doc_id"], value_set=docs["doc_id"]))
        rng = np.random.default_rng([int(self.seed), int(ctx.run_id)])
        bank = Bank(bank.vectors, bank.ids, bank.seen, self.capacity, self.index, model, bank.index)
        res = bank.add(vectors[keep.to_numpy(zero_copy_only=False)],
                       pa.table({"doc_id": kept["doc_id"], "source": src}), ctx.run_id, rng)
        folder = res.bank.save(bank_dir(ctx.state_dir, ctx.run_id), {"run_id": ctx.run_id, "seed": self.seed})
        segment = Segment(BANK_KIND, str(folder), res.bank.size,
                          {"run_id": ctx.run_id, **{k: v for k, v in res.bank.meta().items() if k != "size"}})
        return StageOutput(
            tags={NOVELTY: tags}, segments=[segment],
            counts={"scored": emb.num_rows, "novelty_mean": float(novelty.mean()) if len(novelty) else 0.0,
                    "bank_size_before": bank.size, "bank_size": res.bank.size, "bank_seen": res.bank.seen,
                    "bank_added": res.added, "bank_evicted": res.evicted, "bank_updated": res.updated,
                    "bank_reset": reset},
        )


def _model_identity(paths: list[str]) -> dict[str, Any]:
    """The embedding tagger's config recorded in tonight's files; all must agree."""
    recorded = [(read_metadata(Path(p)) or {}).get("config") or {} for p in paths]
    configs = {str(sorted(c.items())): p for c, p in zip(recorded, paths)}
    if len(configs) != 1:
        raise ValueError(f"tonight's embedding files come from {len(configs)} model configurations "
                         f"(e.g. {', '.join(sorted(configs.values())[:2])}); rerun with one [taggers.embedding]")
    cfg = recorded[0]
    if "dim" not in cfg:
        raise ValueError(f"{paths[0]} does not record its embedding model; it was not written by the embedding tagger")
    return dict(cfg)


def _matrix(column: pa.ChunkedArray, dim: int) -> np.ndarray:
    """A fixed_size_list<float32>[dim] column as a contiguous [n, dim] float32 matrix."""
    if column.num_chunks == 0 or len(column) == 0:
        return np.zeros((0, dim), np.float32)
    flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(flat.reshape(-1, dim), np.float32)


def _duplicates(inputs: StageInputs) -> pa.Array:
    """doc_ids that tonight's ``dedup`` marked as exact or near duplicates (none if it did not run)."""
    dups = [pa.array([], pa.string())]
    for name, col in DUP_COLUMNS.items():
        if name in inputs.files:
            t = inputs.read(name, [col])
            dups.append(t.filter(pc.is_valid(t[col]))["doc_id"].combine_chunks())
    return pa.concat_arrays(dups)


def _remove_stale_banks(state_dir: Path, committed: list[Segment], run_id: int, keep: int) -> None:
    """Delete bank folders no committed run lists (a crashed run's), half-written ones, and
    committed ones older than the newest ``keep`` (0: keep every committed one). The newest
    committed bank is never deleted here: it stays current until tonight's run commits."""
    root = bank_root(state_dir)
    if not root.exists():
        return
    names = [Path(s.path).name for s in committed]
    wanted = set(names if keep == 0 else names[-max(keep, 1):])
    wanted.add(bank_dir(state_dir, run_id).name)
    for d in root.iterdir():
        if d.is_dir() and d.name not in wanted:
            shutil.rmtree(d, ignore_errors=True)
