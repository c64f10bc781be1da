"""The novelty sample bank: a capped, persisted FAISS index of embeddings of earlier nights.

A bank is a uniform sample (reservoir sampling, Vitter's Algorithm R) of every document ever
offered to it, capped at ``capacity``: after a year of nights, the first night is still
represented in proportion to its size. Each run writes a *new* bank folder

    <state>/bank/run-<run_id:06d>/
        index.faiss   the vectors (inner product on L2-normalised vectors = cosine similarity)
        ids.parquet   slot -> doc_id, source, run_id that added it (the id map, slot order)
        bank.json     counters: documents seen (the reservoir's n), capacity, index kind, model

written under a temporary name and renamed whole. The catalog lists the folder as a ``bank``
index segment in the run's commit, so a bank becomes current only when its run commits, and
a crashed run's folder is never read (the novelty stage removes it).

The folder lives outside ``<state>/index/``: ``engine.pipeline.collect_garbage`` treats
every ``*.parquet`` under ``index/`` as a segment of its own and would delete ``ids.parquet``
of a bank registered by its folder.

Search indexes: ``flat`` (exact, the default; ~850 queries/s against 100k x 384 on 2 cores),
``hnsw`` (graph, approximate, built single-threaded so it is deterministic) and ``ivf``
(inverted lists, approximate; a small bank uses ``flat`` since it cannot train lists). The
index is rebuilt from the vectors each night: reservoir replacements are not removable from
HNSW or IVF lists, and rebuilding a flat index is a copy. With faiss-gpu and a GPU, flat and
IVF searches run on the GPU.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

BANK_KIND = "bank"
INDEX_FILE, IDS_FILE, META_FILE = "index.faiss", "ids.parquet", "bank.json"
INDEX_KINDS = ("flat", "hnsw", "ivf")
FORMAT = 1
IDS_SCHEMA = pa.schema([("doc_id", pa.string()), ("source", pa.string()), ("run_id", pa.int32())])

# Approximate-index shapes. IVF needs ~39 training points per list, so a bank smaller than
# IVF_MIN_ROWS searches flat (exact) instead.
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 80, 128
IVF_NPROBE, IVF_MIN_ROWS = 32, 10_000


def bank_root(state_dir: Path) -> Path:
    return state_dir / "bank"


def bank_dir(state_dir: Path, run_id: int) -> Path:
    return bank_root(state_dir) / f"run-{run_id:06d}"


def _faiss() -> Any:
    import faiss

    return faiss


def build_index(vectors: np.ndarray, kind: str) -> Any:
    """A CPU inner-product index of ``kind`` over ``vectors`` (ids are row numbers = slots)."""
    faiss = _faiss()
    if kind not in INDEX_KINDS:
        raise ValueError(f"index must be one of {', '.join(INDEX_KINDS)}, got {kind!r}")
    n, dim = vectors.shape
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)  # parallel inserts make the graph depend on thread timing
        try:
            index.add(vectors)
        finally:
            faiss.omp_set_num_threads(threads)
        return index
    if kind == "ivf" and n >= IVF_MIN_ROWS:
        nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = 1234  # k-means initialisation: fixed, so the same vectors give the same lists
        index.train(vectors)
        index.add(vectors)
        index.nprobe = IVF_NPROBE
        return index
    index = faiss.IndexFlatIP(dim)
    index.add(vectors)
    return index


def _vectors_of(index: Any) -> np.ndarray:
    faiss = _faiss()
    if index.ntotal == 0:
        return np.zeros((0, index.d), np.float32)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.make_direct_map()
    return index.reconstruct_n(0, index.ntotal)


def _on_device(index: Any, device: str) -> tuple[Any, Any]:
    """``(index to search, GPU resources to keep alive)``: on a GPU when faiss-gpu sees one
    and ``device`` allows it; HNSW always searches on the CPU (faiss has no GPU HNSW)."""
    faiss = _faiss()
    n_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if device == "cpu":
        return index, None
    if n_gpus == 0:
        if device.startswith("cuda"):
            raise RuntimeError(
                f"novelty device {device!r} needs faiss-gpu and a visible GPU (faiss sees none); install the gpu "
                "extra (pip install 'glia[gpu]') or set [stages.novelty] device = \"auto\" or \"cpu\""
            )
        return index, None
    if isinstance(index, faiss.IndexHNSW):
        return index, None
    gpu = int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0
    res = faiss.StandardGpuResources()
    return faiss.index_cpu_to_gpu(res, gpu, index), res


@dataclass(frozen=True)
class AddResult:
    """What one night's :meth:`Bank.add` did."""

    bank: Bank
    added: int  # tonight's documents now in the bank
    evicted: int  # earlier documents replaced by tonight's
    updated: int  # documents already in the bank (same doc_id) whose vector was refreshed


@dataclass(frozen=True)
class Bank:
    """A bank in memory. ``vectors`` and ``ids`` are in slot order; ``seen`` counts every
    document ever offered (the reservoir's n). Immutable: :meth:`add` returns a new bank."""

    vectors: np.ndarray  # [size, dim] float32, L2-normalised
    ids: pa.Table  # IDS_SCHEMA, one row per slot
    seen: int
    capacity: int
    index_kind: str
    model: dict[str, Any]  # the embedding model's identity (from the embedding tagger's config)
    index: Any = None  # a CPU faiss index over ``vectors``, built on demand

    @classmethod
    def empty(cls, dim: int, capacity: int, index_kind: str = "flat", model: dict[str, Any] | None = None) -> Bank:
        return cls(np.zeros((0, dim), np.float32), IDS_SCHEMA.empty_table(), 0, capacity, index_kind, model or {})

    @property
    def size(self) -> int:
        return self.vectors.shape[0]

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def search_index(self) -> Any:
        return self.index if self.index is not None else build_index(self.vectors, self.index_kind)

    # -- scoring -------------------------------------------------------------------------------

    def nearest(self, vectors: np.ndarray, doc_ids: pa.Array | None = None,
                device: str = "cpu") -> tuple[np.ndarray, pa.Array]:
        """Cosine similarity of each vector to its nearest bank vector, and that document's id.

        A query whose ``doc_id`` is in the bank (a document delivered again) skips its own
        entry, so nothing is ever compared with itself. An empty bank gives NaN and null.
        """
        n = vectors.shape[0]
        if vectors.ndim != 2 or (n and vectors.shape[1] != self.dim):
            raise ValueError(f"expected vectors of shape [n, {self.dim}], got {vectors.shape}")
        if self.size == 0 or n == 0:
            return np.full(n, np.nan, np.float32), pa.nulls(n, pa.string())
        bank_ids = self.ids["doc_id"].combine_chunks()
        own = None
        if doc_ids is not None:
            own = pc.index_in(doc_ids, value_set=bank_ids)  # slot of the query's own entry, or null
            if own.null_count == n:
                own = None
        k = min(self.size, 1 if own is None else 2)
        index, _res = _on_device(self.search_index(), device)
        sims, slots = index.search(np.ascontiguousarray(vectors, np.float32), k)
        col = np.zeros(n, np.int64)
        if own is not None:  # where a query's own entry came first, take the second hit
            col = (slots[:, 0] == own.fill_null(-1).to_numpy()).astype(np.int64)
        rows, c = np.arange(n), np.minimum(col, k - 1)
        slot = np.where(col < k, slots[rows, c], -1)
        valid = slot >= 0
        sim = np.where(valid, sims[rows, c], np.nan).astype(np.float32)
        nearest = pc.take(bank_ids, pa.array(np.where(valid, slot, 0)))
        return sim, pc.if_else(pa.array(valid), nearest, pa.scalar(None, pa.string()))

    # -- reservoir update ------------------------------------------------------------------

    def add(self, vectors: np.ndarray, ids: pa.Table, run_id: int, rng: np.random.Generator) -> AddResult:
        """Offer tonight's documents (``ids``: ``doc_id``, ``source``; rows match ``vectors``).

        Documents already in the bank get their vector refreshed in place and do not count as
        new. The others are taken in ``doc_id`` order (so the result does not depend on shard
        order) through Algorithm R: the t-th document ever offered fills a free slot while the
        bank is below capacity, else replaces slot ``j ~ U[0, t)`` if ``j < capacity``. Every
        document ever offered is thus in the bank with the same probability ``capacity / seen``.
        """
        if vectors.shape != (ids.num_rows, self.dim):
            raise ValueError(f"{ids.num_rows} ids but vectors of shape {vectors.shape}; expected [n, {self.dim}]")
        if pc.count_distinct(ids["doc_id"]).as_py() != ids.num_rows:
            raise ValueError("doc_ids offered to the bank must be unique")
        order = pc.sort_indices(ids, sort_keys=[("doc_id", "ascending")]).to_numpy()
        vectors, ids = vectors[order], ids.take(pa.array(order))
        new_rows = pa.table({"doc_id": ids["doc_id"], "source": ids["source"].cast(pa.string()),
                             "run_id": pa.array(np.full(ids.num_rows, run_id, np.int32))}, schema=IDS_SCHEMA)

        bank_vecs, bank_ids = self.vectors.copy(), self.ids
        cap = self.capacity
        if self.size > cap:  # capacity lowered since: a uniform subsample of a uniform sample stays uniform
            keep = np.sort(rng.choice(self.size, size=cap, replace=False))
            bank_vecs, bank_ids = bank_vecs[keep], bank_ids.take(pa.array(keep))

        slot_of = pc.index_in(new_rows["doc_id"], value_set=bank_ids["doc_id"])
        returning = slot_of.is_valid().to_numpy(zero_copy_only=False)
        ret_rows = np.flatnonzero(returning)
        ret_slots = slot_of.filter(pc.is_valid(slot_of)).to_numpy().astype(np.int64)
        bank_vecs[ret_slots] = vectors[ret_rows]
        bank_ids = _put_rows(bank_ids, ret_slots, new_rows.take(pa.array(ret_rows)))

        fresh = np.flatnonzero(~returning)
        m = len(fresh)
        n_fill = min(m, max(0, cap - bank_vecs.shape[0]))
        fill = fresh[:n_fill]
        bank_vecs = np.concatenate([bank_vecs, vectors[fill]])
        bank_ids = pa.concat_tables([bank_ids, new_rows.take(pa.array(fill))])
        rest = fresh[n_fill:]
        # 1-based stream positions of the documents that meet a full bank.
        t = self.seen + n_fill + 1 + np.arange(len(rest), dtype=np.int64)
        j = rng.integers(0, t) if len(rest) else np.zeros(0, np.int64)
        hit = j < cap
        slots, items = j[hit], rest[hit]
        # Several of tonight's documents may draw the same slot: the last one drawn keeps it.
        _, last_rev = np.unique(slots[::-1], return_index=True)
        win = len(slots) - 1 - last_rev
        win_slots, win_items = slots[win], items[win]
        tonight_slots = np.arange(bank_vecs.shape[0] - n_fill, bank_vecs.shape[0])
        evicted = int(np.sum(win_slots < bank_vecs.shape[0] - n_fill))
        overwritten_tonight = int(np.isin(win_slots, tonight_slots).sum())
        bank_vecs[win_slots] = vectors[win_items]
        bank_ids = _put_rows(bank_ids, win_slots, new_rows.take(pa.array(win_items)))
        new = replace(self, vectors=np.ascontiguousarray(bank_vecs, np.float32), ids=bank_ids,
                      seen=self.seen + m, index=None)
        return AddResult(new, added=n_fill + len(win_slots) - overwritten_tonight, evicted=evicted,
                         updated=len(ret_rows))

    # -- persistence -----------------------------------------------------------------------

    def meta(self) -> dict[str, Any]:
        return {"format": FORMAT, "size": self.size, "dim": self.dim, "seen": self.seen, "capacity": self.capacity,
                "index": self.index_kind, "model": self.model}

    def save(self, folder: Path, extra: dict[str, Any] | None = None) -> Path:
        """Write the bank to ``folder`` atomically: a temporary sibling folder renamed into place.
        The search index is rebuilt from the vectors (see the module docstring)."""
        faiss = _faiss()
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}.tmp")
        tmp.mkdir()
        try:
            index = build_index(self.vectors, self.index_kind)
            faiss.write_index(index, str(tmp / INDEX_FILE))
            pq.write_table(self.ids.cast(IDS_SCHEMA), tmp / IDS_FILE, compression="zstd")
            (tmp / META_FILE).write_text(json.dumps({**self.meta(), **(extra or {})}, sort_keys=True, indent=1))
            for name in (INDEX_FILE, IDS_FILE, META_FILE):
                with open(tmp / name, "rb") as fh:
                    os.fsync(fh.fileno())
            if folder.exists():  # a rerun of a run id that crashed before its commit
                shutil.rmtree(folder)
            os.rename(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return folder

    @classmethod
    def load(cls, folder: Path) -> Bank:
        """Read a bank written by :meth:`save`; raises naming the folder if it is incomplete."""
        faiss = _faiss()
        missing = [n for n in (INDEX_FILE, IDS_FILE, META_FILE) if not (folder / n).exists()]
        if missing:
            raise FileNotFoundError(
                f"novelty bank {folder} lacks {', '.join(missing)}: restore the folder, or start the bank afresh "
                "with DELETE FROM index_segments WHERE kind = 'bank' (the next night then starts an empty bank)"
            )
        meta = json.loads((folder / META_FILE).read_text())
        index = faiss.read_index(str(folder / INDEX_FILE))
        ids = pq.read_table(folder / IDS_FILE).cast(IDS_SCHEMA)
        if index.ntotal != ids.num_rows or ids.num_rows != meta["size"]:
            raise ValueError(f"novelty bank {folder} is inconsistent: {index.ntotal} vectors, {ids.num_rows} ids, "
                             f"{meta['size']} in {META_FILE}")
        return cls(_vectors_of(index), ids, int(meta["seen"]), int(meta["capacity"]), meta["index"],
                   meta.get("model", {}), index)


def _put_rows(table: pa.Table, slots: np.ndarray, rows: pa.Table) -> pa.Table:
    """``table`` with rows ``slots`` replaced by ``rows`` (vectorised: one take over both)."""
    if len(slots) == 0:
        return table
    n = table.num_rows
    src = np.arange(n, dtype=np.int64)
    src[slots] = n + np.arange(len(slots))
    return pa.concat_tables([table, rows.cast(table.schema)]).take(pa.array(src))
