"""Every Arrow encoding of a string column, read as plain UTF-8 strings.

Parquet shards come from many writers: pandas and Polars categoricals are dictionary-encoded,
newer writers use ``string_view``, large shards use ``large_string``, and some corpora store text
as binary holding UTF-8. Glia reads them all the same way: :func:`plain_strings` turns any of
them into ``string``/``large_string``/``binary``/``large_binary`` (the types Arrow's kernels all
handle), and :func:`as_utf8` into strings checked to be valid UTF-8.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_VIEW_AS = {pa.string_view(): pa.large_string(), pa.binary_view(): pa.large_binary()}


def is_string_like(t: pa.DataType) -> bool:
    """A string or binary type in any encoding (dictionary, view, large) :func:`plain_strings` reads."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    return (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)
            or pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t))


def is_utf8_like(t: pa.DataType) -> bool:
    """A string type (not binary) in any encoding: plain, large, view or dictionary."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def is_integer_like(t: pa.DataType) -> bool:
    """An integer type, or a dictionary of integers."""
    return pa.types.is_integer(t.value_type if pa.types.is_dictionary(t) else t)


def plain_strings(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """``values`` as one array of a plain type: dictionaries decoded (a null index is a null
    value), ``string_view``/``binary_view`` as ``large_string``/``large_binary``. Any other
    type comes back as it is (chunks combined)."""
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if pa.types.is_dictionary(arr.type):
        return plain_strings(arr.dictionary).take(arr.indices)
    view_as = _VIEW_AS.get(arr.type)
    return arr.cast(view_as) if view_as is not None else arr


def as_utf8(values: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, list[tuple[int, str]]]:
    """``values`` (any string-like encoding) as a string array whose values are all valid UTF-8,
    and ``(index, reason)`` for each value that is not (nulled in the result).

    Parquet readers do not check that a string column holds UTF-8, and a binary column may
    hold anything; one bad value would otherwise fail a tagger (and the night) much later.
    The check is one vectorised pass; only a batch that fails it is looked at value by value.
    """
    values = plain_strings(values)
    large = pa.types.is_large_string(values.type) or pa.types.is_large_binary(values.type)
    as_string = values.view(pa.large_string() if large else pa.string())
    try:
        as_string.validate(full=True)
        return as_string, []
    except pa.ArrowInvalid:
        pass
    bad: list[tuple[int, str]] = []
    for i, raw in enumerate(values.view(pa.large_binary() if large else pa.binary()).to_pylist()):
        if raw is None:
            continue
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad.append((i, f"not valid UTF-8 ({exc.reason} at byte {exc.start})"))
    mask = np.zeros(len(values), dtype=bool)
    mask[[i for i, _ in bad]] = True
    return pc.if_else(pa.array(mask), pa.nulls(len(values), as_string.type), as_string), bad


def id_strings(values: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, list[tuple[int, str]]]:
    """Document ids as ``string``: integers (plain or dictionary) in decimal, string-like ids
    checked as :func:`as_utf8` does, with the values that are not UTF-8 nulled and listed."""
    arr = plain_strings(values)
    if pa.types.is_integer(arr.type):
        return pc.cast(arr, pa.string()), []
    ids, bad = as_utf8(arr)
    return ids.cast(pa.string()), bad
