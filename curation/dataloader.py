"""Reading a replay set for training: text and importance weights, streamed from the shards.

A replay set (``v_replay``) says which documents to rehearse, how often (``count``) and with
which importance-sampling weight. :class:`ReplayPlan` turns it into *draws*: one row per
draw (a document drawn three times is three draws), each with the shard path and row where
its text lives. The text is read from the source shards (locally or through fsspec), never
copied into the database; the catalog is opened read-only just long enough to read the plan.
Shards behind a URL (``s3://...``) are opened with the plan's ``storage_options``: by default,
for a plan read from the catalog, the ``[run].storage_options`` of the night that built the set
(credentials come from the environment, as for the night).

An epoch visits every draw exactly once, in an order fixed by ``(seed, epoch)``. The order is
cut into chunks of ``chunk_size`` draws and chunk ``k`` goes to part ``k mod n_parts``, so
DataLoader workers (and distributed ranks) split an epoch without overlap or gaps; with
``chunk_size`` equal to the batch size, a DataLoader yields the draws in the epoch's order.

Three ways in:

- :func:`iter_replay`: a plain Python iterator of dicts, for trainers that are not PyTorch;
- :class:`ReplayIterableDataset`: a ``torch.utils.data.IterableDataset`` (workers split by
  ``get_worker_info``, ranks by ``torch.distributed`` when initialised);
- :class:`ReplayDataset` + :class:`ReplaySampler`: map-style, one index per draw.

Each item is ``{"doc_id", "text", "weight", "draw", "set_id"}``; multiply the document's loss
by ``weight`` to correct the prioritised sampling's bias (Schaul et al. 2016).

In a process that has itself run a Prefect flow, start DataLoader workers with
``multiprocessing_context="forkserver"`` (or ``"spawn"``): Prefect 3.8 leaves a thread at-exit
hook behind that fails in forked children, and the DataLoader then reports a worker that
"exited unexpectedly with exit code 1".
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from glia.core.pii import placeholder_fn, redact_array
from glia.core.strings import as_utf8, id_strings
from glia.storage.shards import StorageOptions, open_parquet

DRAWS_SCHEMA = pa.schema([
    ("draw", pa.int64()),
    ("doc_id", pa.string()),
    ("weight", pa.float64()),
    ("count", pa.int64()),
    ("shard_path", pa.string()),
    ("row", pa.int64()),
])


@dataclass(frozen=True)
class ReplayPlan:
    """The draws of one replay set (:data:`DRAWS_SCHEMA`), in ``doc_id`` order.

    ``expand=True`` (default) repeats a document once per draw; ``expand=False`` gives one
    draw per distinct document (its ``count`` tells how often it was drawn).
    ``storage_options``: fsspec arguments for shards behind a URL (see :func:`storage.shards.filesystem`).
    """

    draws: pa.Table
    set_id: int
    text_column: str = "text"
    id_column: str = "id"
    storage_options: StorageOptions = field(default_factory=dict)

    @classmethod
    def from_rows(cls, rows: pa.Table, set_id: int, text_column: str = "text", id_column: str = "id",
                  expand: bool = True, storage_options: StorageOptions | None = None) -> ReplayPlan:
        """From ``v_replay``-shaped rows: ``doc_id, weight, count, shard_path, row``."""
        need = {"doc_id", "weight", "count", "shard_path", "row"}
        if not need <= set(rows.column_names):
            raise ValueError(f"replay rows need columns {sorted(need)}, got {rows.column_names}")
        rows = rows.sort_by("doc_id")
        missing = pc.sum(pc.cast(pc.or_(pc.is_null(rows["shard_path"]), pc.is_null(rows["row"])), pa.int64())).as_py()
        if missing:
            gone = rows.filter(pc.is_null(rows["shard_path"]))["doc_id"].to_pylist()[:5]
            raise ValueError(f"replay set {set_id}: {missing} document(s) are no longer in an active shard (e.g. {gone}); "
                             "their shard was rewritten or removed since the set was built: build a new set")
        counts = rows["count"].to_numpy(zero_copy_only=False).astype(np.int64)
        reps = counts if expand else np.ones(len(counts), np.int64)
        take = pa.array(np.repeat(np.arange(len(counts)), reps))
        cols = {c: pc.take(rows[c], take) for c in ("doc_id", "weight", "count", "shard_path", "row")}
        table = pa.table({"draw": pa.array(np.arange(len(take), dtype=np.int64)), **cols}).cast(DRAWS_SCHEMA)
        return cls(table, int(set_id), text_column, id_column, dict(storage_options or {}))

    @classmethod
    def from_db(cls, db_path: Path | str, set_id: int | None = None, expand: bool = True,
                storage_options: StorageOptions | None = None) -> ReplayPlan:
        """Read a set (default: the latest) from the catalog, opened read-only and closed at once.
        ``storage_options`` default to the ``[run].storage_options`` recorded with the set's run."""
        from glia.storage.catalog import Catalog
        from glia.storage.replay import replay_set_row

        with Catalog(db_path, read_only=True) as cat:
            meta = replay_set_row(cat.con, db_path, set_id, ": enable the replay stage or run `glia replay build`")
            sid = meta["set_id"]
            rows = cat.con.sql(
                'SELECT doc_id, weight, "count", shard_path, "row" FROM v_replay WHERE set_id = ?', params=[sid]).to_arrow_table()
            if storage_options is None:
                storage_options = _recorded_storage_options(cat.con, meta["run_id"])
        return cls.from_rows(rows, sid, meta["text_column"] or "text", meta["id_column"] or "id", expand, storage_options)

    @classmethod
    def from_parquet(cls, path: Path | str, expand: bool = True,
                     storage_options: StorageOptions | None = None) -> ReplayPlan:
        """Read a set exported by ``glia replay export`` (no database needed)."""
        table = pq.read_table(path)
        raw = (table.schema.metadata or {}).get(b"glia.replay_set")
        meta: dict[str, Any] = json.loads(raw) if raw else {}
        sid = meta.get("set_id", int(table["set_id"][0].as_py()) if table.num_rows and "set_id" in table.column_names else 0)
        return cls.from_rows(table, sid, meta.get("text_column") or "text", meta.get("id_column") or "id", expand,
                             storage_options)

    def __len__(self) -> int:
        return self.draws.num_rows

    def order(self, seed: int, epoch: int) -> np.ndarray:
        """The epoch's permutation of draw positions, fixed by ``(seed, epoch)``."""
        return np.random.default_rng([int(seed), int(epoch)]).permutation(len(self))

    def part(self, seed: int, epoch: int, part: int, n_parts: int, chunk_size: int) -> np.ndarray:
        """Draw positions of one part: chunks ``part, part + n_parts, ...`` of the epoch's order."""
        if not 0 <= part < n_parts:
            raise ValueError(f"part {part} out of range for {n_parts} parts")
        order = self.order(seed, epoch)
        chunk = np.arange(len(order)) // max(1, chunk_size)
        return order[chunk % n_parts == part]


def _recorded_storage_options(con: Any, run_id: int) -> dict[str, Any]:
    """The ``[run].storage_options`` recorded with run ``run_id`` (empty when it had none)."""
    row = con.execute("SELECT config FROM runs WHERE run_id = ?", [run_id]).fetchall()
    try:
        cfg = json.loads(row[0][0]) if row and row[0][0] else {}
    except ValueError:
        cfg = {}
    return dict(cfg.get("run", {}).get("storage_options") or {})


class ShardTextReader:
    """Reads the texts of given (shard path, row) pairs, a row group at a time, with a small
    LRU cache of row groups so that nearby draws do not reread a group. Checks that each row
    still holds the expected id, so a shard rewritten since the catalog indexed it fails loudly.
    ``storage_options``: fsspec arguments for shards behind a URL."""

    def __init__(self, text_column: str = "text", id_column: str = "id", cache_groups: int = 16,
                 verify_ids: bool = True, storage_options: StorageOptions | None = None) -> None:
        self.text_column, self.id_column = text_column, id_column
        self.cache_groups, self.verify_ids = cache_groups, verify_ids
        self.storage_options = dict(storage_options or {})
        self._groups: OrderedDict[tuple[str, int], pa.Table] = OrderedDict()
        self._bounds: dict[str, np.ndarray] = {}
        # Footer and column names per shard, read once: every row group read reuses them.
        self._meta: dict[str, tuple[pq.FileMetaData, list[str]]] = {}

    def _metadata(self, path: str) -> tuple[pq.FileMetaData, list[str]]:
        if path not in self._meta:
            md = open_parquet(path, storage_options=self.storage_options).metadata
            self._meta[path] = (md, md.schema.to_arrow_schema().names)
        return self._meta[path]

    def _starts(self, path: str) -> np.ndarray:
        if path not in self._bounds:
            md, _ = self._metadata(path)
            sizes = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
            self._bounds[path] = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        return self._bounds[path]

    def _group(self, path: str, g: int) -> pa.Table:
        key = (path, g)
        if key in self._groups:
            self._groups.move_to_end(key)
            return self._groups[key]
        cols = [self.text_column] + ([self.id_column] if self.verify_ids else [])
        md, names = self._metadata(path)
        absent = [c for c in cols if c not in names]
        if absent:
            raise ValueError(f"{path}: cannot read columns {absent} (it has {names}); the replay set "
                             "names the columns its run read (replay_sets.text_column / id_column)")
        table = open_parquet(path, metadata=md, storage_options=self.storage_options).read_row_group(g, columns=cols)
        # Any string encoding (dictionary, view, binary holding UTF-8) reads as the strings ingest saw.
        table = table.set_column(0, self.text_column, as_utf8(table[self.text_column])[0])
        if self.verify_ids:
            table = table.set_column(1, self.id_column, id_strings(table[self.id_column])[0])
        self._groups[key] = table
        if len(self._groups) > self.cache_groups:
            self._groups.popitem(last=False)
        return table

    def read(self, paths: pa.Array, rows: np.ndarray, doc_ids: pa.Array) -> list[str]:
        """Texts for each (path, row), in the order given."""
        out: list[str | None] = [None] * len(rows)
        path_arr = pc.cast(paths, pa.string())
        uniq = pc.unique(path_arr)
        which = pc.index_in(path_arr, value_set=uniq).to_numpy()
        for u, path in enumerate(uniq.to_pylist()):
            sel = np.flatnonzero(which == u)
            starts = self._starts(path)
            beyond = (rows[sel] < 0) | (rows[sel] >= starts[-1])
            if beyond.any():
                raise ValueError(f"{path} has {int(starts[-1])} rows, the replay set wants row {int(rows[sel][beyond][0])}: "
                                 "the shard changed since it was indexed; rerun `glia run` and build a new replay set")
            groups = np.searchsorted(starts, rows[sel], side="right") - 1
            for g in np.unique(groups):
                here = sel[groups == g]
                table = self._group(path, int(g))
                local = pa.array(rows[here] - starts[g])
                texts = pc.take(table[self.text_column], local).to_pylist()
                if self.verify_ids:
                    got = pc.cast(pc.take(table[self.id_column], local), pa.string())
                    want = doc_ids.take(pa.array(here))
                    bad = pc.invert(pc.fill_null(pc.equal(got, want), False))
                    if pc.any(bad).as_py():
                        i = int(np.flatnonzero(bad.to_numpy(zero_copy_only=False))[0])
                        raise ValueError(f"{path} row {int(rows[here][i])} holds id {got[i].as_py()!r}, not "
                                         f"{want[i].as_py()!r}: the shard changed since it was indexed; rerun `glia run` "
                                         "and build a new replay set")
                for pos, text in zip(here.tolist(), texts):
                    out[pos] = text
        return out  # type: ignore[return-value]


def iter_replay(plan: ReplayPlan, seed: int = 0, epoch: int = 0, part: int = 0, n_parts: int = 1,
                chunk_size: int = 256, reader: ShardTextReader | None = None,
                redact_pii: str | None = None) -> Iterator[dict[str, Any]]:
    """Yield one part of an epoch's draws as ``{"doc_id", "text", "weight", "draw", "set_id"}``.

    With ``n_parts = 1`` (default) every draw of the set comes exactly once, in the order fixed
    by ``(seed, epoch)``. Texts are read a chunk at a time, grouped by shard. ``redact_pii``: a
    placeholder (``"<{kind}>"``) that replaces PII in the yielded text (``core.pii``; the shards
    are not changed).
    """
    if redact_pii is not None:
        placeholder_fn(redact_pii)  # a bad placeholder fails here, not in the first batch
    reader = reader or ShardTextReader(plan.text_column, plan.id_column, storage_options=plan.storage_options)
    positions = plan.part(seed, epoch, part, n_parts, chunk_size)
    d = plan.draws
    for start in range(0, len(positions), chunk_size):
        pos = pa.array(positions[start:start + chunk_size])
        chunk = d.take(pos)
        texts = reader.read(chunk["shard_path"].combine_chunks(), chunk["row"].to_numpy(),
                            chunk["doc_id"].combine_chunks())
        if redact_pii is not None:
            texts = redact_array(pa.array(texts, pa.string()), redact_pii).to_pylist()
        for doc_id, text, weight, draw in zip(chunk["doc_id"].to_pylist(), texts, chunk["weight"].to_pylist(),
                                              chunk["draw"].to_pylist()):
            yield {"doc_id": doc_id, "text": text, "weight": weight, "draw": draw, "set_id": plan.set_id}


def iter_batches(items: Iterator[dict[str, Any]], batch_size: int) -> Iterator[dict[str, list[Any]]]:
    """Group items into column batches (``{"text": [...], "weight": [...], ...}``), the last one short."""
    batch: list[dict[str, Any]] = []
    for item in items:
        batch.append(item)
        if len(batch) == batch_size:
            yield {k: [b[k] for b in batch] for k in batch[0]}
            batch = []
    if batch:
        yield {k: [b[k] for b in batch] for k in batch[0]}


# -- PyTorch ----------------------------------------------------------------------------------

try:
    import torch.distributed as _dist
    from torch.utils.data import Dataset as _Dataset
    from torch.utils.data import IterableDataset as _IterableDataset
    from torch.utils.data import Sampler as _Sampler
    from torch.utils.data import get_worker_info as _worker_info
except ImportError:  # the plain iterator above works without torch
    _IterableDataset = _Dataset = _Sampler = object  # type: ignore[misc,assignment]
    _dist = None  # type: ignore[assignment]

    def _worker_info() -> None:  # type: ignore[misc]
        return None


def _rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        return rank, world_size
    if _dist is not None and _dist.is_available() and _dist.is_initialized():
        return _dist.get_rank(), _dist.get_world_size()
    return 0, 1


class ReplayIterableDataset(_IterableDataset):  # type: ignore[misc,valid-type]
    """A ``torch.utils.data.IterableDataset`` over a replay set's draws.

    Each DataLoader worker (and each distributed rank) takes its own chunks of the epoch's
    order, so every draw is yielded exactly once per epoch. Call :meth:`set_epoch` before each
    epoch (with ``persistent_workers=True`` the workers keep the epoch they started with).
    """

    def __init__(self, plan: ReplayPlan, seed: int = 0, chunk_size: int = 256,
                 rank: int | None = None, world_size: int | None = None, redact_pii: str | None = None) -> None:
        self.plan, self.seed, self.chunk_size = plan, seed, chunk_size
        self.redact_pii = redact_pii  # a placeholder such as "<{kind}>": PII replaced in the text
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = _worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        rank, world = _rank_world(self.rank, self.world_size)
        return iter_replay(self.plan, self.seed, self.epoch, rank * nw + wid, world * nw, self.chunk_size,
                           redact_pii=self.redact_pii)


class ReplayDataset(_Dataset):  # type: ignore[misc,valid-type]
    """Map-style: item ``i`` is draw ``i`` of the plan (use with :class:`ReplaySampler`)."""

    def __init__(self, plan: ReplayPlan) -> None:
        self.plan = plan
        self._reader: ShardTextReader | None = None

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self._reader is None:  # per worker process: readers hold open files and a cache
            self._reader = ShardTextReader(self.plan.text_column, self.plan.id_column,
                                           storage_options=self.plan.storage_options)
        row = self.plan.draws.slice(int(i), 1)
        text = self._reader.read(row["shard_path"].combine_chunks(), row["row"].to_numpy(), row["doc_id"].combine_chunks())[0]
        return {"doc_id": row["doc_id"][0].as_py(), "text": text, "weight": row["weight"][0].as_py(),
                "draw": int(i), "set_id": self.plan.set_id}


class ReplaySampler(_Sampler):  # type: ignore[misc,valid-type]
    """Yields draw indices in the epoch's order (fixed by ``(seed, epoch)``), split over
    distributed ranks by striding. With ``index`` (the doc ids of your own map-style dataset,
    in its order) it yields positions in *your* dataset instead; :meth:`weights` gives the
    importance weights in the same order."""

    def __init__(self, plan: ReplayPlan, seed: int = 0, index: Sequence[str] | None = None,
                 rank: int | None = None, world_size: int | None = None) -> None:
        self.plan, self.seed, self.epoch = plan, seed, 0
        self.rank, self.world_size = _rank_world(rank, world_size)
        self._map: np.ndarray | None = None
        if index is not None:
            pos = pc.index_in(plan.draws["doc_id"], value_set=pa.array(list(index), pa.string()))
            if pos.null_count:
                raise ValueError(f"{pos.null_count} replay draws name documents that are not in the given index")
            self._map = pos.to_numpy(zero_copy_only=False).astype(np.int64)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _positions(self) -> np.ndarray:
        return self.plan.order(self.seed, self.epoch)[self.rank::self.world_size]

    def __iter__(self) -> Iterator[int]:
        pos = self._positions()
        return iter((self._map[pos] if self._map is not None else pos).tolist())

    def __len__(self) -> int:
        return len(range(self.rank, len(self.plan), self.world_size))

    def weights(self) -> np.ndarray:
        """Importance weights of the draws, in this epoch's order."""
        return self.plan.draws["weight"].to_numpy()[self._positions()]
