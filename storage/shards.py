"""Shard discovery and the shard registry diff: which files are new, changed, unchanged.

A shard's fingerprint is its size plus a hash of its Parquet footer (the schema, row-group
offsets, sizes and statistics). Touching a file (new mtime, same bytes) does not make it
"changed"; rewriting it does, because the footer records every column chunk's offset and
size. Reading the footer costs two small ranged reads per file, also on object stores.

On an object store that reports an ETag (S3 and its clones), the ETag is hashed in with the
footer: it changes with the object's bytes, so even a rewrite that keeps every size and
statistic is seen, while a metadata-only copy of the same bytes keeps it.

Shards behind a URL are opened through fsspec with the run's ``[run].storage_options``
(endpoint, profile, ...) on top of what the backend reads from the environment
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...); every reader takes them the same way.
"""

from __future__ import annotations

import os
import posixpath
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow.parquet as pq
import xxhash

from glia.core import faults
from glia.storage.catalog import ShardRow

_MAGIC = b"PAR1"
# The footer usually fits in this many bytes at the end of the file: one ranged read, not two.
_TAIL_READ = 64 * 1024
# info() keys of content hashes that change with the bytes (s3fs: the object's ETag).
_CONTENT_TAGS = ("ETag",)

StorageOptions = Mapping[str, Any]

# Top-level packages whose exceptions say the store or the network failed, not the bytes.
_CLIENT_PACKAGES = ("botocore", "aiobotocore", "s3fs", "aiohttp", "urllib3", "requests", "gcsfs", "google", "adlfs", "azure")


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


def filesystem(path: str, storage_options: StorageOptions | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for a local path or URL, and the path within it.

    ``storage_options`` (``[run].storage_options``) go to the filesystem of a URL; a local
    path ignores them, so one rules file serves local and remote shard folders.
    """
    options = dict(storage_options or {}) if _is_remote(path) else {}
    try:
        return fsspec.core.url_to_fs(path, **options)
    except ImportError as exc:
        raise ImportError(f"{path}: {exc}; for s3:// install Glia's s3 extra (pip install 'glia[s3]')") from exc


def open_parquet(path: str, metadata: pq.FileMetaData | None = None,
                 storage_options: StorageOptions | None = None) -> pq.ParquetFile:
    """Open a shard for reading, locally or through fsspec (``metadata``: its footer, when read
    before, so it is not read again; ``storage_options``: as for :func:`filesystem`)."""
    if _is_remote(path):
        fs, inner = filesystem(path, storage_options)
        return pq.ParquetFile(fs.open(inner, "rb"), metadata=metadata)
    return pq.ParquetFile(path, metadata=metadata)


def is_storage_error(exc: BaseException) -> bool:
    """True when ``exc`` says the store or the network failed (endpoint unreachable, timeout,
    no credentials) rather than that the file is bad. Such a shard must not be rejected: the
    registry would keep it rejected until its bytes change. Its task is retried, then the
    night fails with the error instead."""
    for e in (exc, exc.__cause__):
        if e is None or isinstance(e, (FileNotFoundError, PermissionError)):
            continue
        if isinstance(e, (ConnectionError, TimeoutError)) or type(e).__module__.split(".")[0] in _CLIENT_PACKAGES:
            return True
    return False


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


def _content_tag(info: dict) -> bytes:
    for key in _CONTENT_TAGS:
        value = info.get(key)
        if value:
            return f"\0{key}\0{value}".encode()
    return b""


def fingerprint(fs: fsspec.AbstractFileSystem, inner: str, display: str) -> ShardFile:
    """Fingerprint one file; a file that is not Parquet gets ``error`` instead of a footer hash."""
    info = fs.info(inner)
    size = int(info["size"])
    mtime = _mtime_ns(info)
    if size < 12:
        return ShardFile(display, size, mtime, None, f"not a Parquet file: only {size} bytes")
    try:
        # Ranged reads, not fs.open(): an object store's file reads ahead a whole block on the
        # first read (50 MB for s3fs), which would fetch most of every shard just to hash it.
        head = fs.cat_file(inner, start=0, end=4)
        tail_start = max(4, size - _TAIL_READ)
        tail = fs.cat_file(inner, start=tail_start, end=size)
        footer_len = struct.unpack("<i", tail[-8:-4])[0]
        if head == _MAGIC and tail[-4:] != _MAGIC:
            return ShardFile(display, size, mtime, None,
                             "truncated Parquet file: it starts like Parquet but has no footer (an interrupted copy?)")
        if head != _MAGIC or tail[-4:] != _MAGIC:
            return ShardFile(display, size, mtime, None, "not a Parquet file: no PAR1 magic bytes")
        if not 0 < footer_len <= size - 12:
            return ShardFile(display, size, mtime, None, f"corrupt Parquet footer (length {footer_len})")
        footer_start = size - 8 - footer_len
        if footer_start >= tail_start:
            footer = tail[footer_start - tail_start:-8]
        else:
            footer = fs.cat_file(inner, start=footer_start, end=size - 8)
    except PermissionError as exc:
        return ShardFile(display, size, mtime, None,
                         f"permission denied: the file is not readable by this user ({exc.strerror}); fix its permissions")
    except OSError as exc:
        if is_storage_error(exc):
            raise
        return ShardFile(display, size, mtime, None, f"cannot read file: {exc}")
    return ShardFile(display, size, mtime, xxhash.xxh3_128_hexdigest(footer + _content_tag(info)))


def discover(root: str, pattern: str = "**/*.parquet", storage_options: StorageOptions | None = None) -> list[ShardFile]:
    """Every shard under ``root`` (a folder or URL), sorted by path, fingerprinted.

    Names starting with ``.`` or ``_`` are ignored (temporary files, Spark's ``_SUCCESS``).
    ``storage_options``: as for :func:`filesystem`.
    """
    fs, inner = filesystem(root, storage_options)
    # fsspec reuses one filesystem object per process and options, with the listings it has
    # seen: without this, a second night in the same process would see last night's sizes.
    fs.invalidate_cache()
    try:
        exists = fs.exists(inner)
    except Exception as exc:  # each backend raises its own errors for a bad endpoint or credentials
        if not _is_remote(root):
            raise
        raise OSError(
            f"cannot list {root}: {type(exc).__name__}: {exc}; check the endpoint and credentials "
            "(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or AWS_PROFILE for s3://) "
            "and [run].storage_options in the rules file") from exc
    if not exists:
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
        faults.point("discover")  # crash-test hook (core.faults); a no-op normally
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
