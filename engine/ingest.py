"""Reading shards into documents: schema checks, id checks, row skips.

Every stage that reads a shard goes through :func:`read_documents`, so every tagger sees
exactly the same documents: rows with a null id, a null or blank text, a text that is not
valid UTF-8 or longer than ``[run].max_doc_bytes``, or an id already taken are left out, and
:func:`scan_ids` / :func:`read_documents` report each of them with the file and the 0-based row.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from glia.core.strings import as_utf8, id_strings, is_integer_like, is_string_like, is_utf8_like, plain_strings
from glia.engine.config import Columns, RunOptions
from glia.storage.shards import ShardFile, StorageOptions, is_storage_error, open_parquet
from glia.storage.catalog import SKIPPED_SCHEMA


class ShardRejected(ValueError):
    """The whole shard cannot be used; the message names the file and what to fix."""


TIMESTAMP = pa.timestamp("us", tz="UTC")


def _check_schema(shard: ShardFile, schema: pa.Schema, cols: Columns) -> dict[str, str]:
    """Validate required columns and types; return canonical name -> shard column for the
    optional metadata columns present in this shard."""
    names = set(schema.names)
    for role, col in (("id", cols.id), ("text", cols.text)):
        if col not in names:
            raise ShardRejected(
                f"{shard.path}: missing required {role} column {col!r} (columns: {', '.join(schema.names)}); "
                f"set [columns].{role} in the rules file if it has another name"
            )
    # Any string encoding is text: plain, large, view, dictionary (categoricals), binary holding UTF-8.
    text_type = schema.field(cols.text).type
    if not is_string_like(text_type):
        raise ShardRejected(
            f"{shard.path}: text column {cols.text!r} has type {text_type}, expected a string column "
            "(string, large_string, string_view, dictionary of strings, or binary holding UTF-8)"
        )
    id_type = schema.field(cols.id).type
    if not (is_string_like(id_type) or is_integer_like(id_type)):
        raise ShardRejected(f"{shard.path}: id column {cols.id!r} has type {id_type}, expected string or integer")
    present = {}
    for canon, col in cols.optional().items():
        if col in names:
            present[canon] = col
    if "timestamp" in present:
        ts = schema.field(present["timestamp"]).type
        if not (pa.types.is_timestamp(ts) or pa.types.is_date(ts) or is_utf8_like(ts)):
            raise ShardRejected(
                f"{shard.path}: timestamp column {present['timestamp']!r} has type {ts}; "
                "expected a timestamp, a date or an ISO-8601 string"
            )
    return present


def _skips(shard: ShardFile, rows: np.ndarray, ids: pa.Array | None, reason: str) -> pa.Table:
    n = len(rows)
    return pa.table(
        {
            "shard_id": pa.array([shard.shard_id] * n, pa.string()),
            "path": pa.array([shard.path] * n, pa.string()),
            "row": pa.array(rows, pa.int64()),
            "doc_id": ids if ids is not None else pa.nulls(n, pa.string()),
            "reason": pa.array([reason] * n, pa.string()),
        },
        schema=SKIPPED_SCHEMA,
    )


def _row_skips(shard: ShardFile, rows: np.ndarray, ids: pa.Array | None, reasons: list[str]) -> pa.Table:
    """Like :func:`_skips`, with a reason per row."""
    return _skips(shard, rows, ids, "").set_column(4, "reason", pa.array(reasons, pa.string()))


def empty_skips() -> pa.Table:
    return SKIPPED_SCHEMA.empty_table()


def scan_ids(shard: ShardFile, cols: Columns,
             storage_options: StorageOptions | None = None) -> tuple[pa.Table, pa.Table]:
    """Read a shard's ids. Returns ``(ids, skipped)``: ``ids`` has ``doc_id`` and ``row`` for
    the usable ids (first occurrence wins inside the shard), ``skipped`` the rows dropped.
    ``storage_options``: fsspec arguments for a shard behind a URL (``[run].storage_options``).

    Raises :class:`ShardRejected` if the shard cannot be read or lacks the required columns.
    """
    try:
        pf = open_parquet(shard.path, storage_options=storage_options)
        schema = pf.schema_arrow
    except Exception as exc:  # pyarrow raises several types for corrupt files
        if is_storage_error(exc):
            raise
        raise ShardRejected(f"{shard.path}: cannot read Parquet: {exc}") from exc
    _check_schema(shard, schema, cols)
    try:
        raw = pf.read(columns=[cols.id]).column(0)
    except Exception as exc:
        if is_storage_error(exc):
            raise
        raise ShardRejected(f"{shard.path}: cannot read column {cols.id!r}: {exc}") from exc
    ids, bad_ids = id_strings(raw) if raw.num_chunks else (pa.array([], pa.string()), [])
    rows = np.arange(len(ids), dtype=np.int64)
    skipped = [empty_skips()]
    bad = np.zeros(len(ids), dtype=bool)
    bad[[i for i, _ in bad_ids]] = True
    null = pc.is_null(ids).to_numpy(zero_copy_only=False) & ~bad
    if null.any():
        skipped.append(_skips(shard, rows[null], None, f"null id (column {cols.id!r})"))
    if bad_ids:
        skipped.append(_row_skips(shard, rows[bad], None, [f"id is {reason}" for _, reason in bad_ids]))
    ok = ~(null | bad)
    table = pa.table({"doc_id": ids.filter(pa.array(ok)), "row": rows[ok]})
    # Keep the first occurrence of each id; later ones are recorded with the row they repeat.
    first = pc.index_in(table["doc_id"], value_set=pc.unique(table["doc_id"]))
    first_row = pa.table({"k": first, "row": table["row"]}).group_by("k").aggregate([("row", "min")])
    first_of = np.empty(len(first_row), np.int64)
    first_of[first_row["k"].to_numpy()] = first_row["row_min"].to_numpy()
    firsts = first_of[first.to_numpy()]
    dup = firsts != table["row"].to_numpy()
    if dup.any():
        d_rows = table["row"].to_numpy()[dup]
        d_ids = table["doc_id"].filter(pa.array(dup))
        reasons = [f"duplicate id within shard (first at row {r})" for r in firsts[dup]]
        skipped.append(_row_skips(shard, d_rows, d_ids, reasons))
        table = table.filter(pa.array(~dup))
    return table, pa.concat_tables(skipped)


@dataclass(frozen=True)
class ReadSpec:
    """Everything :func:`read_documents` needs; hashable inputs make the task cache key."""

    shard: ShardFile
    columns: Columns
    batch_size: int
    excluded_rows: tuple[int, ...] = ()
    max_doc_bytes: int = RunOptions.max_doc_bytes  # 0: no limit
    # fsspec arguments for a shard behind a URL; they travel with the spec to whichever thread
    # or Dask worker process reads it. Not hashed: they say where the bytes are, not which.
    storage_options: StorageOptions = field(default_factory=dict, hash=False)


def read_documents(spec: ReadSpec, with_skips: list[pa.Table] | None = None) -> Iterator[pa.Table]:
    """Yield batches of ``doc_id`` (string), ``row`` (int64), ``text`` and the optional
    metadata columns under their canonical names (``timestamp`` as UTC microseconds).

    Rows with a null or blank text, a text that is not valid UTF-8 (a binary text column is
    decoded) or longer than ``max_doc_bytes`` bytes, and the ``excluded_rows`` are left out; if
    ``with_skips`` is a list, a table of the text skips is appended to it per batch.
    """
    shard, cols = spec.shard, spec.columns
    try:
        pf = open_parquet(shard.path, storage_options=spec.storage_options)
    except Exception as exc:
        if is_storage_error(exc):
            raise
        raise ShardRejected(f"{shard.path}: cannot read Parquet: {exc}") from exc
    meta = _check_schema(shard, pf.schema_arrow, cols)
    wanted = [cols.id, cols.text] + [c for c in meta.values() if c not in (cols.id, cols.text)]
    excluded = np.asarray(spec.excluded_rows, dtype=np.int64)
    offset = 0
    batches = pf.iter_batches(batch_size=spec.batch_size, columns=list(dict.fromkeys(wanted)))
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as exc:
            if is_storage_error(exc):
                raise
            raise ShardRejected(f"{shard.path}: unreadable data after row {offset}: {exc}") from exc
        n = batch.num_rows
        rows = np.arange(offset, offset + n, dtype=np.int64)
        offset += n
        ids, _ = id_strings(batch.column(cols.id))  # ids that are not UTF-8 were reported by scan_ids
        null_text = pc.is_null(batch.column(cols.text)).to_numpy(zero_copy_only=False)
        text, bad_utf8 = as_utf8(batch.column(cols.text))
        nbytes = pc.fill_null(pc.binary_length(text), 0).to_numpy(zero_copy_only=False)
        too_big = nbytes > spec.max_doc_bytes if spec.max_doc_bytes > 0 else np.zeros(n, dtype=bool)
        # Blank: empty or only whitespace (utf8_is_space is false for ""; it is one read-only
        # pass, where trimming copied every text; the two agree on every code point).
        blank = pc.fill_null(pc.or_(pc.equal(pc.binary_length(text), 0), pc.utf8_is_space(text)), False).to_numpy(
            zero_copy_only=False) & ~too_big & ~null_text
        bad = np.zeros(n, dtype=bool)
        bad[[i for i, _ in bad_utf8]] = True
        # Excluded rows and null ids were reported when the ids were scanned.
        eligible = ~np.isin(rows, excluded) & pc.is_valid(ids).to_numpy(zero_copy_only=False)
        keep = eligible & ~(null_text | bad | too_big | blank)
        if with_skips is not None:
            limit = f"over [run].max_doc_bytes = {spec.max_doc_bytes:,}"
            masks = [(null_text, f"null text (column {cols.text!r})"), (blank, "empty text")]
            masks += [(too_big & (nbytes == b), f"text of {b:,} bytes, {limit}") for b in np.unique(nbytes[too_big])]
            for mask, reason in masks:
                mask = mask & eligible
                if mask.any():
                    with_skips.append(_skips(shard, rows[mask], ids.filter(pa.array(mask)), reason))
            bad_rows = [(i, f"text is {reason}") for i, reason in bad_utf8 if eligible[i]]
            if bad_rows:
                at = np.array([i for i, _ in bad_rows], dtype=np.int64)
                with_skips.append(_row_skips(shard, rows[at], ids.take(pa.array(at)), [r for _, r in bad_rows]))
        if not keep.any():
            continue
        sel = pa.array(keep)
        out = {"doc_id": ids.filter(sel), "row": pa.array(rows[keep]), "text": text.filter(sel)}
        for canon, col in meta.items():
            values = batch.column(col).filter(sel)
            if is_string_like(values.type):  # a categorical source or label reads as plain strings
                values = plain_strings(values)
            if canon == "timestamp":
                values = _to_utc(shard, col, values)
            out[canon] = values
        yield pa.table(out)


def _to_utc(shard: ShardFile, col: str, values: pa.Array) -> pa.Array:
    t = values.type
    try:
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            values = pc.cast(values, pa.timestamp("us"))
        elif pa.types.is_date(t):
            values = pc.cast(values, pa.timestamp("us"))
        if values.type.tz is None:
            values = pc.assume_timezone(pc.cast(values, pa.timestamp("us")), "UTC")
        return pc.cast(values, TIMESTAMP)
    except pa.ArrowInvalid as exc:
        raise ShardRejected(f"{shard.path}: timestamp column {col!r} has a value that is not a time: {exc}") from exc


