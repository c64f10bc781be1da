"""Redacted text for exports: the documents' text read from their source shards with PII
replaced (``core.pii``), added as a ``text`` column to a manifest or replay export.

The source shards are never changed: a redacted export is a *copy* of the text, so a trainer
that reads the export instead of the shards never sees the PII. A row whose shard or row no
longer exists gets a null text (the manifest points at what the catalog last saw).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from glia.core.pii import DEFAULT_PLACEHOLDER, redact_array
from glia.core.strings import as_utf8
from glia.storage.shards import open_parquet


def with_redacted_text(rows: pa.Table, text_column: str = "text", placeholder: str = DEFAULT_PLACEHOLDER,
                       storage_options: Mapping[str, Any] | None = None) -> pa.Table:
    """``rows`` (with ``shard_path`` and ``row``) plus ``text``: each document's text from its shard,
    PII replaced by ``placeholder`` (``{kind}`` becomes the kind, e.g. ``<email>``). One read per shard."""
    if rows.num_rows == 0:
        return rows.append_column("text", pa.array([], pa.string()))
    out = np.full(rows.num_rows, None, dtype=object)
    paths = rows["shard_path"].combine_chunks()
    row_idx = pc.fill_null(rows["row"], -1).to_numpy(zero_copy_only=False).astype(np.int64)
    for path in pc.unique(paths.drop_null()).to_pylist():
        where = np.flatnonzero(pc.equal(paths, path).fill_null(False).to_numpy(zero_copy_only=False))
        pf = open_parquet(path, storage_options=storage_options)
        if text_column not in pf.schema_arrow.names:
            raise ValueError(f"shard {path} has no column {text_column!r}; pass the corpus's text column "
                             f"(its columns: {', '.join(pf.schema_arrow.names)})")
        text = as_utf8(pf.read(columns=[text_column])[text_column])[0]  # any string encoding
        ok = (row_idx[where] >= 0) & (row_idx[where] < len(text))
        taken = redact_array(text.take(pa.array(row_idx[where][ok])), placeholder)
        out[where[ok]] = taken.to_pylist()
    return rows.append_column("text", pa.array(out.tolist(), pa.string()))
