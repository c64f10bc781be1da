"""Vectorised text normalisation, tokenisation and shingle hashing shared by the dedup taggers.

Everything here works on whole Arrow arrays or flat numpy buffers: no per-document Python
loop except where a per-document call is unavoidable (xxhash of a whole normalised text,
and xxhash of each *distinct* word once).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from glia.core.xxh3 import PRIME64_1, xxh3_64, xxh64_avalanche

_U64 = np.uint64
# xxhash64's PRIME64_1: an odd, well-mixed multiplier.
_P1 = PRIME64_1


def normalize(text: pa.Array | pa.ChunkedArray) -> pa.Array:
    """NFKC, lower-case, whitespace runs folded to one space, trimmed.

    Used for the exact-duplicate hash: two texts that differ only in case, Unicode
    compatibility forms or spacing get the same hash. Whitespace is what Python's
    ``str.split()`` splits on (including ``\\v``, ``\\x1c``-``\\x1f``, ``\\x85`` and ``\\p{Z}``).
    """
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks()
    # Non-ASCII texts get NFKC, lower case and single spaces by regex first; after that
    # the ASCII steps (byte map, split on ASCII spaces, join) leave them unchanged.
    folded = _fold_to_ascii_rules(
        text.cast(pa.string()), _ASCII_SPACE_LOWER,
        lambda o: pc.replace_substring_regex(_nfkc_lower(o), _WHITESPACE, " "),
    )
    return pc.utf8_trim_whitespace(_collapse_spaces(folded))


def _collapse_spaces(values: pa.Array) -> pa.Array:
    """Each string with every run of ASCII spaces folded to one space, as byte masks over the
    whole buffer (splitting into words and joining made a string per word, several times the
    time). A run may cross from one string into the next, so a string can keep one leading or
    trailing space that is not its own: the caller trims both ends after."""
    data, offsets = _bytes_and_offsets(values)
    space = data == ord(" ")
    # A space right after a space goes; few bytes do, so they are listed, not masked.
    dropped = np.flatnonzero(space[1:] & space[:-1])
    if len(dropped) == 0:
        return values
    dropped += 1
    keep = np.ones(len(data), dtype=bool)
    keep[dropped] = False
    out = data[keep]
    new_offsets = offsets - np.searchsorted(dropped, offsets, side="left")
    validity = values.buffers()[0] if values.null_count else None
    if validity is not None and values.offset:
        validity = values.is_valid().buffers()[1]
    return pa.Array.from_buffers(pa.large_string(), len(values),
                                 [validity, pa.py_buffer(new_offsets), pa.py_buffer(out)],
                                 null_count=values.null_count).cast(pa.string())


def _bytes_and_offsets(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A string array's bytes (uint8, from its first value to its last) and int64 offsets into
    them, without a copy."""
    width = np.int64 if pa.types.is_large_string(values.type) or pa.types.is_large_binary(values.type) else np.int32
    offsets = np.frombuffer(values.buffers()[1], dtype=width)[values.offset : values.offset + len(values) + 1]
    offsets = offsets.astype(np.int64)
    buf = values.buffers()[2]
    data = np.frombuffer(buf, dtype=np.uint8)[offsets[0] : offsets[-1]] if buf is not None else np.zeros(0, np.uint8)
    return data, offsets - offsets[0]


def _nfkc_lower(values: pa.Array) -> pa.Array:
    return pc.utf8_lower(pc.utf8_normalize(values, "NFKC")).cast(pa.string())


def hash_strings(values: pa.Array) -> np.ndarray:
    """xxh3-64 of each string's UTF-8 bytes, as uint64 (nulls hash as the empty string).

    Hashes the Arrow data buffer directly (no Python str per value); strings up to 128
    bytes are hashed by array operations (:func:`core.xxh3.xxh3_64`).
    """
    return xxh3_64(values)


# Python's ``\w`` is "letter, number or underscore" in Unicode; RE2's ``\w`` is ASCII only,
# so spell the Unicode classes out to get the same tokens as ``re.findall(r"\w+", ...)``.
_NON_WORD = r"[^\p{L}\p{N}_]+"
# What ``str.split()`` treats as whitespace; RE2's ``\s`` lacks \v, \x1c-\x1f and \x85.
_WHITESPACE = r"[\s\x{0B}\x{1C}-\x{1F}\x{85}\p{Z}]+"


def _byte_table(to_space: str) -> np.ndarray:
    """A byte map for ASCII text: upper-case letters to lower case, ``to_space`` to spaces."""
    table = np.arange(256, dtype=np.uint8)
    upper = np.arange(ord("A"), ord("Z") + 1)
    table[upper] = upper + (ord("a") - ord("A"))
    table[[b for b in range(128) if chr(b) in to_space]] = ord(" ")
    return table


# ASCII bytes that are not word characters become spaces (letters are lower-cased).
_ASCII_NON_WORD_LOWER = _byte_table("".join(chr(b) for b in range(128) if not (chr(b).isalnum() or chr(b) == "_")))
# ASCII whitespace that ascii_split_whitespace might not know becomes a plain space.
_ASCII_SPACE_LOWER = _byte_table("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f")


_MAP_PIECE = 1 << 16


def _map_bytes(values: pa.Array, table: np.ndarray) -> pa.Array:
    """Translate every byte of a string array through ``table`` (ASCII-to-ASCII only)."""
    data = values.buffers()[2]
    if data is None:
        return values
    src = np.frombuffer(data, dtype=np.uint8)
    out = np.empty_like(src)
    # take() widens uint8 indices to 8-byte intp first: piece by piece that copy stays in cache,
    # where over the whole buffer it is an 8x-sized temporary (2-3x slower for a shard's text).
    for i in range(0, len(src), _MAP_PIECE):
        table.take(src[i : i + _MAP_PIECE], out=out[i : i + _MAP_PIECE])
    mapped = pa.py_buffer(out)
    return pa.Array.from_buffers(
        values.type, len(values), [values.buffers()[0], values.buffers()[1], mapped], offset=values.offset
    )


def _fold_to_ascii_rules(values: pa.Array, table: np.ndarray, other_fn) -> pa.Array:
    """Every text mapped through the ASCII byte ``table``, with the non-ASCII texts first
    rewritten by ``other_fn`` (Unicode-aware) so that the byte map is right for them too.

    Regex work costs ~35 us per 1.5k-character text, a byte table ~2 us, and most text is
    ASCII, so only the texts that need it see a regex. The byte map and Arrow's *ascii*
    split kernels are safe on any UTF-8 (bytes below 0x80 are always whole ASCII
    characters); pyarrow 26's utf8_split_whitespace can read past the end of the data.
    """
    is_ascii = pc.fill_null(pc.string_is_ascii(values), True).to_numpy(zero_copy_only=False)
    if not is_ascii.all():
        other = ~is_ascii
        values = pc.replace_with_mask(values, pa.array(other), other_fn(values.filter(pa.array(other))))
    return _map_bytes(values, table)


def _split_words(text: pa.Array) -> pa.ListArray:
    """``\\w+`` tokens of each NFKC, lower-cased text (plus possibly empty strings, which
    callers drop). ASCII texts skip NFKC (the identity there) and lower-case by byte map."""
    folded = _fold_to_ascii_rules(
        text.cast(pa.string()), _ASCII_NON_WORD_LOWER,
        lambda o: pc.replace_substring_regex(_nfkc_lower(o), _NON_WORD, " "),
    )
    # Trimmed first, so only a text without any word yields an empty token.
    return pc.ascii_split_whitespace(pc.ascii_trim_whitespace(folded))


def word_hashes(text: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Tokenise into words and hash them.

    Words are the ``\\w+`` runs of the NFKC, lower-cased text (datatrove's regex word
    tokenizer convention). Returns ``(hashes, offsets)``: a flat uint64 array of xxh3-64 word
    hashes and an int64 array of ``len(text) + 1`` offsets so that document ``i``'s words are
    ``hashes[offsets[i]:offsets[i + 1]]``. Each distinct word is hashed once.
    """
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks()
    tokens = _split_words(text)
    flat = pc.list_flatten(tokens)
    encoded = pc.dictionary_encode(flat)
    vocab = encoded.dictionary
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    hashes = hash_strings(vocab)[codes]
    # The list offsets are each text's word offsets (no copy, no per-word document index).
    width = np.int64 if pa.types.is_large_list(tokens.type) else np.int32
    offsets = np.frombuffer(tokens.buffers()[1], dtype=width)[tokens.offset : tokens.offset + len(tokens) + 1]
    offsets = offsets.astype(np.int64) - offsets[0]
    empty = pc.index(vocab, "").as_py()
    if empty >= 0:  # a text without words splits into one empty token: drop those
        word = codes != empty
        hashes = hashes[word]
        words_before = np.zeros(len(codes) + 1, dtype=np.int64)
        np.cumsum(word, out=words_before[1:])
        offsets = words_before[offsets]
    return hashes, offsets


def shingle_hashes(words: np.ndarray, offsets: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of each document's word ``n``-grams.

    ``words``/``offsets`` as returned by :func:`word_hashes`. A document with fewer than ``n``
    (but at least one) words gets a single shingle of all its words, so short texts can still
    match; a document with no words gets no shingles. Returns ``(hashes, offsets)`` in the
    same flat layout.
    """
    if n < 1:
        raise ValueError(f"n-gram size must be >= 1, got {n}")
    counts = np.diff(offsets)
    total = len(words)
    with np.errstate(over="ignore"):
        # Rolling combination over a window of n words: h_i = mix(w_i, ..., w_{i+n-1}).
        # In place: each temporary would be a fresh multi-megabyte array per step.
        span = max(total - n + 1, 0)
        h = np.multiply(words[:span], _P1)
        tmp = np.empty_like(h)
        for k in range(1, n):
            np.bitwise_xor(h, words[k : k + span], out=h)
            np.multiply(h, _P1, out=h)
            np.right_shift(h, _U64(33), out=tmp)
            np.left_shift(h, _U64(31), out=h)
            np.bitwise_or(h, tmp, out=h)
        xxh64_avalanche(h, tmp)

        full = counts >= n
        n_shingles = np.where(full, counts - n + 1, np.minimum(counts, 1))
        out_offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(n_shingles, out=out_offsets[1:])

        # Full documents: the windows starting at their first count-n+1 words, i.e. every
        # window that does not cross into the next document (marked by a +1/-1 difference).
        starts = offsets[:-1][full]
        if len(starts):
            mark = np.zeros(total + 1, dtype=np.int8)
            mark[starts + counts[full] - n + 1] = -1
            mark[starts] += 1  # for n == 1 a document's end is the next one's start
            windows = h[np.cumsum(mark[:span], dtype=np.int8).view(bool)]
        else:
            windows = h[:0]
        if len(windows) == out_offsets[-1]:
            out = windows
        else:
            out = np.empty(out_offsets[-1], dtype=np.uint64)
            out[np.repeat(full, n_shingles)] = windows

        # Short documents (1..n-1 words): one shingle over all their words. Rare, so a loop.
        for d in np.flatnonzero(~full & (counts > 0)):
            acc = _U64(0)
            for w in words[offsets[d] : offsets[d + 1]]:
                acc = ((acc ^ w) * _P1) & _U64(0xFFFFFFFFFFFFFFFF)
            out[out_offsets[d]] = xxh64_avalanche(np.array([acc], dtype=np.uint64))[0]
    return out, out_offsets
