"""MinHash signature tagger (word n-grams, 3 by default, 64-bit hashes).

Per shard it computes each document's signature; banding, the persistent LSH index and
the cross-night matching live in ``curation.dedup`` and ``storage.history``.

Pipeline per batch, all vectorised: NFKC + lower-case -> ``\\w+`` words -> xxh3-64 per
distinct word -> 64-bit hash per word n-gram (rolling mix + xxhash64 avalanche) -> rensa's
Rust MinHash over the flat shingle buffer (``num_perm`` permutations, 32-bit values).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import rensa

from glia.taggers.base import Resources, Tagger
from glia.core.text import shingle_hashes, word_hashes


class MinHashTagger(Tagger):
    """``_minhash``: ``num_perm`` uint32 MinHash values (null for a text with no words);
    ``n_shingles``: how many word n-grams the text has."""

    name: ClassVar[str] = "minhash"
    # rensa's ALGORITHM_VERSION is part of the version: signatures from a different
    # algorithm must never be compared with the stored history.
    version: ClassVar[str] = f"1-r{rensa.RMinHash.ALGORITHM_VERSION}"
    resources: ClassVar[Resources] = Resources(gpu=False, batch_size=20_000)

    @dataclass(frozen=True)
    class Params:
        """Set from [stages.dedup] (``bands`` x ``rows``, ``ngram``, ``seed``): the signature must
        match the history it is compared with."""

        num_perm: int = 128
        ngram: int = 3
        seed: int = 1

        def __post_init__(self) -> None:
            if self.num_perm < 1 or self.ngram < 1:
                raise ValueError("minhash num_perm and ngram must be positive")

    def __init__(self, **params: Any) -> None:
        p = self.configure(params)
        self.num_perm, self.ngram, self.seed = p.num_perm, p.ngram, p.seed

    def config(self) -> dict[str, object]:
        return {"num_perm": self.num_perm, "ngram": self.ngram, "seed": self.seed}

    def schema(self) -> pa.Schema:
        return pa.schema(
            [
                ("doc_id", pa.string()),
                ("_minhash", pa.list_(pa.uint32(), self.num_perm)),
                ("n_shingles", pa.int32()),
            ]
        )

    def signatures(self, text: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
        """``(signatures, n_shingles)``: a ``(len(text), num_perm)`` uint32 matrix and the
        shingle count per text. Rows of texts without words are undefined (count 0)."""
        words, offsets = word_hashes(text)
        shingles, s_offsets = shingle_hashes(words, offsets, self.ngram)
        n_docs = len(s_offsets) - 1
        if n_docs == 0:
            return np.empty((0, self.num_perm), np.uint32), np.empty(0, np.int32)
        matrix = rensa.RMinHash.digest_matrix_from_flat_token_hashes(
            shingles, s_offsets.astype(np.uint64), self.num_perm, self.seed
        )
        sig = np.asarray(matrix.to_rows(), dtype=np.uint32).reshape(n_docs, self.num_perm)
        return sig, np.diff(s_offsets).astype(np.int32)

    def tag(self, batch: pa.Table) -> pa.Table:
        sig, n_shingles = self.signatures(batch.column("text"))
        values = pa.array(sig.reshape(-1), pa.uint32())
        sigs = pa.FixedSizeListArray.from_arrays(values, self.num_perm, mask=pa.array(n_shingles == 0))
        return pa.table(
            {"doc_id": batch.column("doc_id"), "_minhash": sigs, "n_shingles": pa.array(n_shingles)},
            schema=self.schema(),
        )
