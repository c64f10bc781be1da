"""Exact-duplicate tagger: a 64-bit hash of the normalised text.

Per shard it only hashes; matching hashes across shards and nights (and choosing the
survivor) is done by ``curation.dedup`` against the persistent history index.
"""

from __future__ import annotations

from typing import ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from glia.taggers.base import Resources, Tagger
from glia.core.text import hash_strings, normalize


class ExactHashTagger(Tagger):
    """``text_hash``: xxh3-64 of NFKC, lower-cased, whitespace-folded text; ``n_chars``."""

    name: ClassVar[str] = "exact"
    version: ClassVar[str] = "1"
    resources: ClassVar[Resources] = Resources(gpu=False, batch_size=20_000)

    def schema(self) -> pa.Schema:
        return pa.schema(
            [("doc_id", pa.string()), ("text_hash", pa.uint64()), ("n_chars", pa.int64())]
        )

    def tag(self, batch: pa.Table) -> pa.Table:
        text = batch.column("text")
        hashes = hash_strings(normalize(text))
        return pa.table(
            {
                "doc_id": batch.column("doc_id"),
                "text_hash": pa.array(hashes, pa.uint64()),
                "n_chars": pc.cast(pc.utf8_length(text), pa.int64()),
            },
            schema=self.schema(),
        )
