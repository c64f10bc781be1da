"""Shard discovery and the shard registry diff: which files are new, changed, unchanged.

A shard's fingerprint is its size plus a hash of its Parquet footer (the schema, row-group
offsets, sizes and statistics). Touching a file (new mtime, same bytes) does not make it
"changed"; rewriting it does, because the footer records every column chunk's offset and
size. Reading the footer costs two small reads per file, also on object stores.
"""

from __future__ import annotations

import os
import posixpath
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import fsspec
import pyarrow.parquet as pq
import xxhash

from curation import faults
from storage.catalog import ShardRow

_MAGIC = b"PAR1"


@dataclass(frozen=True)
class ShardFile:
    """A discovered file. ``error`` is set when it is not a readable Parquet file."""

    path: str
    size: int
    mtime_ns: int | None
    footer_hash: str | None
    error: str | None = None

    @property
    def shard_id(self) -> str:
        """Identifies this *version* of the file: path, size and footer (or mtime if no footer)."""
        basis = f"{self.path}\0{self.size}\0{self.footer_hash or self.mtime_ns}"
        return xxhash.xxh3_64_hexdigest(basis.encode())


def _is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def filesystem(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for a local path or URL, and the path within it."""
    return fsspec.core.url_to_fs(path)


def open_parquet(path: str, metadata: pq.FileMetaData | None = None) -> pq.ParquetFile:
    """Open a shard for reading, locally or through fsspec (``metadata``: its footer, when read
    before, so it is not read again)."""
    if _is_remote(path):
        fs, inner = filesystem(path)
        return pq.ParquetFile(fs.open(inner, "rb"), metadata=metadata)
    return pq.ParquetFile(path, metadata=metadata)


def _mtime_ns(info: dict) -> int | None:
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(key)
        if value is None:
            continue
        if hasattr(value, "timestamp"):
            return int(value.timestamp() * 1e9)
        try:
            return int(float(value) * 1e9)
        except (TypeError, ValueError):
            continue
    return None


def fingerprint(fs: fsspec.AbstractFileSystem, inner: str, display: str) -> ShardFile:
    """Fingerprint one file; a file that is not Parquet gets ``error`` instead of a footer hash."""
    info = fs.info(inner)
    size = int(info["size"])
    mtime = _mtime_ns(info)
    if size < 12:
        return ShardFile(display, size, mtime, None, f"not a Parquet file: only {size} bytes")
    try:
        with fs.open(inner, "rb") as fh:
            head = fh.read(4)
            fh.seek(size - 8)
            tail = fh.read(8)
            footer_len = struct.unpack("<i", tail[:4])[0]
            if head == _MAGIC and tail[4:] != _MAGIC:
                return ShardFile(display, size, mtime, None,
                                 "truncated Parquet file: it starts like Parquet but has no footer (an interrupted copy?)")
            if head != _MAGIC or tail[4:] != _MAGIC:
                return ShardFile(display, size, mtime, None, "not a Parquet file: no PAR1 magic bytes")
            if not 0 < footer_len <= size - 12:
                return ShardFile(display, size, mtime, None, f"corrupt Parquet footer (length {footer_len})")
            fh.seek(size - 8 - footer_len)
            footer = fh.read(footer_len)
    except PermissionError as exc:
        return ShardFile(display, size, mtime, None,
                         f"permission denied: the file is not readable by this user ({exc.strerror}); fix its permissions")
    except OSError as exc:
        return ShardFile(display, size, mtime, None, f"cannot read file: {exc}")
    return ShardFile(display, size, mtime, xxhash.xxh3_128_hexdigest(footer))


def discover(root: str, pattern: str = "**/*.parquet") -> list[ShardFile]:
    """Every shard under ``root`` (a folder or URL), sorted by path, fingerprinted.

    Names starting with ``.`` or ``_`` are ignored (temporary files, Spark's ``_SUCCESS``).
    """
    fs, inner = filesystem(root)
    if not fs.exists(inner):
        raise FileNotFoundError(f"shard folder not found: {root}")
    if fs.isfile(inner):
        matches = [inner]
    else:
        matches = fs.glob(posixpath.join(inner.rstrip("/"), pattern))
        # `**/*.parquet` does not match files directly in the root with every fsspec backend.
        if pattern.startswith("**/"):
            matches = sorted(set(matches) | set(fs.glob(posixpath.join(inner.rstrip("/"), pattern[3:]))))
    out = []
    for m in sorted(matches):
        name = posixpath.basename(m)
        if name.startswith((".", "_")) or fs.isdir(m):
            continue
        display = os.path.abspath(m) if not _is_remote(root) else fs.unstrip_protocol(m)
        faults.point("discover")  # crash-test hook (curation.faults); a no-op normally
        out.append(fingerprint(fs, m, display))
    return out


@dataclass
class ShardPlan:
    """What tonight's run must do with each discovered file."""

    new: list[ShardFile] = field(default_factory=list)
    changed: list[tuple[ShardFile, ShardRow]] = field(default_factory=list)  # (new version, old row)
    unchanged: list[ShardRow] = field(default_factory=list)
    # Not Parquet, newly seen; with the registered version it replaces, if any.
    rejected: list[tuple[ShardFile, ShardRow | None]] = field(default_factory=list)
    missing: list[ShardRow] = field(default_factory=list)
    reactivated: list[ShardRow] = field(default_factory=list)
    mtime_updates: dict[str, int] = field(default_factory=dict)

    @property
    def to_ingest(self) -> list[ShardFile]:
        return sorted(self.new + [f for f, _ in self.changed], key=lambda f: f.path)

    @property
    def nothing_to_do(self) -> bool:
        return not (self.new or self.changed or self.rejected or self.missing or self.reactivated)


def plan(root: str, found: Sequence[ShardFile], registry: Sequence[ShardRow]) -> ShardPlan:
    """Compare discovered files with the registry.

    A registered path that is no longer under ``root`` becomes ``missing`` (its documents
    leave the views; nothing is deleted); if the same bytes come back, it is reactivated.
    """
    current: dict[str, ShardRow] = {}
    for row in registry:
        if row.status != "superseded":
            current[row.path] = row
    p = ShardPlan()
    seen: set[str] = set()
    for f in found:
        seen.add(f.path)
        row = current.get(f.path)
        same = row is not None and row.size == f.size and row.footer_hash == f.footer_hash and (
            f.footer_hash is not None or row.mtime_ns == f.mtime_ns
        )
        if same:
            assert row is not None
            if row.status == "missing":
                p.reactivated.append(row)
            else:
                p.unchanged.append(row)
            if f.mtime_ns is not None and f.mtime_ns != row.mtime_ns:
                p.mtime_updates[row.shard_id] = f.mtime_ns
        elif f.error is not None:
            p.rejected.append((f, row))
        elif row is None:
            p.new.append(f)
        else:
            p.changed.append((f, row))
    root_abs = root if _is_remote(root) else os.path.abspath(root)
    prefix = root_abs.rstrip("/") + "/"
    for path, row in current.items():
        under = path == root_abs or path.startswith(prefix)
        if under and path not in seen and row.status == "active":
            p.missing.append(row)
    return p
