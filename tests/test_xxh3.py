"""The numpy XXH3-64 equals the xxhash package bit for bit, in every length class."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from glia.core.xxh3 import SHORT_MAX, xxh3_64


def _reference(values: list[bytes | None]) -> list[int]:
    return [xxhash.xxh3_64_intdigest(v or b"") for v in values]


def test_every_length_up_to_past_the_vectorised_range() -> None:
    # Lengths 0..300 cover 0, 1-3, 4-8, 9-16, 17-128 (each 16-byte round) and the fallback.
    rng = np.random.default_rng(7)
    values = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in range(301) for _ in range(4)]
    assert xxh3_64(pa.array(values, pa.binary())).tolist() == _reference(values)
    assert max(map(len, values)) > SHORT_MAX


def test_string_slices_nulls_and_large_types() -> None:
    words = ["", "a", "ab", "héllo", "wörld!!", "x" * 17, "naïve café", None, "ß" * 70, "q" * 129]
    arr = pa.array(words, pa.string())
    want = _reference([w.encode() if w is not None else None for w in words])
    assert xxh3_64(arr).tolist() == want
    assert xxh3_64(arr.slice(3, 5)).tolist() == want[3:8]
    assert xxh3_64(arr.cast(pa.large_string())).tolist() == want
    assert xxh3_64(pa.array([], pa.string())).tolist() == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=140), max_size=40))
def test_matches_xxhash_on_arbitrary_bytes(values: list[bytes]) -> None:
    assert xxh3_64(pa.array(values, pa.binary())).tolist() == _reference(values)
