"""XXH3-64 (seed 0) of many short byte strings at once, in numpy.

Hashing each distinct word of a shard with ``xxhash.xxh3_64_intdigest`` costs a Python call
per word and holds the GIL, so two tagging threads could not overlap it. Words are short,
and for inputs up to 128 bytes XXH3 is a fixed, loop-free formula per length class
(0, 1-3, 4-8, 9-16, 17-128 bytes), so the whole vocabulary is hashed with a few dozen
array operations that release the GIL. Longer strings go to the ``xxhash`` package. The
result equals ``xxhash.xxh3_64_intdigest`` bit for bit (``tests/test_xxh3.py`` checks
every length class).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import xxhash

_U64 = np.uint64
_M32 = _U64(0xFFFFFFFF)
PRIME64_1 = _U64(0x9E3779B185EBCA87)
PRIME64_2 = _U64(0xC2B2AE3D27D4EB4F)
PRIME64_3 = _U64(0x165667B19E3779F9)
_MX1 = _U64(0x165667919E3779F9)
_MX2 = _U64(0x9FB21C651E98DF25)
# The first 128 bytes of XXH3's default secret (``XXH3_kSecret``): all that inputs up to
# 128 bytes read.
_SECRET = bytes.fromhex(
    "b8fe6c3923a44bbe7c01812cf721ad1cded46de9839097db7240a4a4b7b3671f"
    "cb79e64eccc0e578825ad07dccff7221b8084674f743248ee03590e6813a264c"
    "3c2852bb91c300cb88d0658b1b532ea371644897a20df94e3819ef46a9deacd8"
    "a8fa763fe39c343ff9dcbbc7c70b4f1d8a51e04bcdb45931c89f7ec9d9787364"
)
SHORT_MAX = 128


def _s64(offset: int) -> np.uint64:
    return _U64(int.from_bytes(_SECRET[offset : offset + 8], "little"))


def _s32(offset: int) -> np.uint64:
    return _U64(int.from_bytes(_SECRET[offset : offset + 4], "little"))


def xxh64_avalanche(h: np.ndarray, tmp: np.ndarray | None = None) -> np.ndarray:
    """xxhash64's final mix, so every input bit affects every output bit.

    With ``tmp`` (scratch of ``h``'s shape) ``h`` itself is mixed and returned, with no
    temporaries: for multi-megabyte arrays a fresh array per step costs more than the step.
    """
    if tmp is None:
        h = np.array(h, dtype=np.uint64)
        tmp = np.empty_like(h)
    for shift, prime in ((33, PRIME64_2), (29, PRIME64_3)):
        np.right_shift(h, _U64(shift), out=tmp)
        np.bitwise_xor(h, tmp, out=h)
        np.multiply(h, prime, out=h)
    np.right_shift(h, _U64(32), out=tmp)
    np.bitwise_xor(h, tmp, out=h)
    return h


def _xxh3_avalanche(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> _U64(37))
    h = h * _MX1
    return h ^ (h >> _U64(32))


def _rotl(h: np.ndarray, r: int) -> np.ndarray:
    return (h << _U64(r)) | (h >> _U64(64 - r))


def _mul128_fold64(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Low 64 bits XOR high 64 bits of the 128-bit product, from 32-bit halves."""
    a_lo, a_hi, b_lo, b_hi = a & _M32, a >> _U64(32), b & _M32, b >> _U64(32)
    lo_lo, hi_lo, lo_hi = a_lo * b_lo, a_hi * b_lo, a_lo * b_hi
    cross = (lo_lo >> _U64(32)) + (hi_lo & _M32) + lo_hi
    upper = (hi_lo >> _U64(32)) + (cross >> _U64(32)) + a_hi * b_hi
    lower = (cross << _U64(32)) | (lo_lo & _M32)
    return lower ^ upper


class _Reader:
    """Little-endian loads at arbitrary byte offsets of one buffer (zero-padded at the end,
    so a load that starts inside a string never runs past the buffer)."""

    def __init__(self, data: bytes | memoryview) -> None:
        self.bytes = np.concatenate([np.frombuffer(data, np.uint8), np.zeros(8, np.uint8)])
        n = len(self.bytes)
        # Byte-strided views: element i is the word that starts at byte i (unaligned loads).
        self.u64 = np.ndarray((n - 7,), "<u8", self.bytes, 0, (1,))
        self.u32 = np.ndarray((n - 3,), "<u4", self.bytes, 0, (1,))

    def r64(self, pos: np.ndarray) -> np.ndarray:
        return self.u64[pos].astype(np.uint64)

    def r32(self, pos: np.ndarray) -> np.ndarray:
        return self.u32[pos].astype(np.uint64)

    def r8(self, pos: np.ndarray) -> np.ndarray:
        return self.bytes[pos].astype(np.uint64)


def _len_1to3(rd: _Reader, start: np.ndarray, n: np.ndarray) -> np.ndarray:
    c1, c2, c3 = rd.r8(start), rd.r8(start + (n >> 1)), rd.r8(start + n - 1)
    combined = (c1 << _U64(16)) | (c2 << _U64(24)) | c3 | (n.astype(np.uint64) << _U64(8))
    return xxh64_avalanche(combined ^ (_s32(0) ^ _s32(4)))


def _len_4to8(rd: _Reader, start: np.ndarray, n: np.ndarray) -> np.ndarray:
    keyed = (rd.r32(start + n - 4) + (rd.r32(start) << _U64(32))) ^ (_s64(8) ^ _s64(16))
    h = keyed ^ _rotl(keyed, 49) ^ _rotl(keyed, 24)
    h = h * _MX2
    h = h ^ ((h >> _U64(35)) + n.astype(np.uint64))
    h = h * _MX2
    return h ^ (h >> _U64(28))


def _len_9to16(rd: _Reader, start: np.ndarray, n: np.ndarray) -> np.ndarray:
    lo = rd.r64(start) ^ (_s64(24) ^ _s64(32))
    hi = rd.r64(start + n - 8) ^ (_s64(40) ^ _s64(48))
    acc = n.astype(np.uint64) + lo.byteswap() + hi + _mul128_fold64(lo, hi)
    return _xxh3_avalanche(acc)


def _mix16(rd: _Reader, pos: np.ndarray, secret: int) -> np.ndarray:
    return _mul128_fold64(rd.r64(pos) ^ _s64(secret), rd.r64(pos + 8) ^ _s64(secret + 8))


def _len_17to128(rd: _Reader, start: np.ndarray, n: np.ndarray) -> np.ndarray:
    acc = n.astype(np.uint64) * PRIME64_1
    end = start + n
    # Each 16-byte pair of reads from the front and the back joins once the input is long
    # enough for it: > 96, > 64, > 32, and always.
    for min_len, k in ((97, 3), (65, 2), (33, 1), (0, 0)):
        sel = n >= min_len
        if not sel.any():
            continue
        s, e = start[sel], end[sel]
        acc[sel] += _mix16(rd, s + 16 * k, 32 * k) + _mix16(rd, e - 16 * (k + 1), 32 * k + 16)
    return _xxh3_avalanche(acc)


def xxh3_64(values: pa.Array) -> np.ndarray:
    """XXH3-64 of each string's (or binary's) bytes as uint64; nulls hash as the empty string.

    Equal to ``xxhash.xxh3_64_intdigest`` of each value.
    """
    if pa.types.is_large_string(values.type) or pa.types.is_large_binary(values.type):
        offsets = np.frombuffer(values.buffers()[1], dtype=np.int64)
    else:
        values = values.cast(pa.binary()) if not pa.types.is_binary(values.type) else values
        offsets = np.frombuffer(values.buffers()[1], dtype=np.int32)
    offsets = offsets[values.offset : values.offset + len(values) + 1].astype(np.int64)
    data = values.buffers()[2]
    raw = memoryview(data) if data is not None else memoryview(b"")
    start = offsets[:-1]
    n = np.diff(offsets)
    if values.null_count:
        n = np.where(values.is_valid().to_numpy(zero_copy_only=False), n, 0)
    rd = _Reader(raw)
    out = np.empty(len(values), dtype=np.uint64)
    with np.errstate(over="ignore"):
        out[n == 0] = xxh64_avalanche(np.array([_s64(56) ^ _s64(64)], np.uint64))[0]
        for lo, hi, fn in ((1, 3, _len_1to3), (4, 8, _len_4to8), (9, 16, _len_9to16), (17, SHORT_MAX, _len_17to128)):
            sel = np.flatnonzero((n >= lo) & (n <= hi))
            if len(sel):
                out[sel] = fn(rd, start[sel], n[sel])
    digest = xxhash.xxh3_64_intdigest
    for i in np.flatnonzero(n > SHORT_MAX):  # long strings: rare among words
        out[i] = digest(raw[start[i] : start[i] + n[i]])
    return out
