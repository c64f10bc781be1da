"""Parquet attribute files: written whole to a temporary name, then renamed into place.

A reader (or a rerun after a crash) therefore sees either no file or a complete one, never
a half-written one. ``os.replace`` is atomic within one filesystem, and the temporary file
lives in the destination folder for that reason.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from glia.core import faults

GLIA_META_KEY = b"glia"


class AtomicWriter:
    """One Parquet file written to a temporary name beside ``path`` and renamed into place by
    :meth:`commit` (after an fsync), or removed by :meth:`abort`: the file appears whole or not
    at all. Several can be open at once, so one pass over a shard can feed several files.

    ``metadata`` is stored as JSON under the ``glia`` key of the Parquet footer (tagger name,
    version, config, shard fingerprint), so a file says where it came from on its own.
    """

    def __init__(self, path: Path, schema: pa.Schema, metadata: Mapping[str, object] | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        if metadata is not None:
            schema = schema.with_metadata({GLIA_META_KEY: json.dumps(metadata, sort_keys=True).encode()})
        self.schema = schema
        self.rows = 0
        # Hash and signature columns are uniformly random: compressing or dictionary-encoding them
        # costs time (a third of the dedup stage's writes) and saves nothing.
        random = [f.name for f in schema if _is_hash_like(f)]
        compression = {f.name: ("none" if f.name in random else "zstd") for f in schema}
        dictionary = [f.name for f in schema if f.name not in random]
        self._writer = pq.ParquetWriter(self.tmp, schema, compression=compression, use_dictionary=dictionary)

    def write(self, batch: pa.Table) -> None:
        self._writer.write_table(batch.cast(self.schema))
        self.rows += batch.num_rows
        faults.point("write_atomic.batch")  # crash-test hook: a half-written temp file

    def commit(self) -> int:
        """Close, fsync and rename into place; the number of rows written."""
        try:
            self._writer.close()
            with open(self.tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(self.tmp, self.path)
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise
        return self.rows

    def abort(self) -> None:
        """Close and remove the temporary file (safe to call after a failed commit)."""
        try:
            self._writer.close()
        except Exception:  # the write that failed may have left the writer unusable
            pass
        self.tmp.unlink(missing_ok=True)


def write_atomic(
    path: Path,
    batches: Iterable[pa.Table],
    schema: pa.Schema,
    metadata: Mapping[str, object] | None = None,
) -> int:
    """Stream ``batches`` into ``path`` atomically (:class:`AtomicWriter`); return the number
    of rows written."""
    writer = AtomicWriter(path, schema, metadata)
    try:
        for batch in batches:
            writer.write(batch)
    except BaseException:
        writer.abort()
        raise
    return writer.commit()


@dataclass(frozen=True)
class FileWrite:
    """One :func:`write_atomic` call, for :func:`write_all`."""

    path: Path
    table: pa.Table
    schema: pa.Schema
    metadata: Mapping[str, object] | None = None


def write_all(writes: Sequence[FileWrite], workers: int | None = None) -> list[int]:
    """:func:`write_atomic` each of ``writes`` on a few threads; return their row counts in order.

    Encoding, compression and fsync run outside the GIL, so a stage's dozen output files are
    written side by side instead of one after the other. Each file is still atomic on its own;
    an error in one is raised after the others have finished.
    """
    workers = workers or min(4, os.cpu_count() or 1)
    if len(writes) <= 1 or workers <= 1:
        return [write_atomic(w.path, [w.table], w.schema, w.metadata) for w in writes]
    with ThreadPoolExecutor(min(workers, len(writes))) as pool:
        futures = [pool.submit(write_atomic, w.path, [w.table], w.schema, w.metadata) for w in writes]
    return [f.result() for f in futures]


def _is_hash_like(field: pa.Field) -> bool:
    t = field.type
    if pa.types.is_fixed_size_list(t):
        return pa.types.is_integer(t.value_type)
    return pa.types.is_uint64(t) and ("hash" in field.name or field.name in ("key",) or field.name.startswith("_"))


def read_metadata(path: Path) -> dict[str, object] | None:
    """The ``glia`` footer metadata of a file written by :func:`write_atomic`, or None."""
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(GLIA_META_KEY)
    return json.loads(raw) if raw else None
