"""Personal data in text: finding emails, phone numbers, IP addresses, card numbers and IBANs,
and replacing them (redaction happens only in exports; source shards are never changed).

Two passes, after datatrove's and data-juicer's regex-and-checksum filters:

1. a vectorised candidate test over a whole Arrow batch (``pyarrow.compute`` with RE2
   patterns, no Python per document): most documents have no candidate and stop here;
2. Python ``re`` on the candidate documents only, with the precise patterns (look-around
   that RE2 lacks) and the checks a regex cannot do: the Luhn checksum and an issuer prefix
   for card numbers, ISO 13616's mod-97 for IBANs, ``ipaddress`` for IPv6, and the rules that
   keep look-alikes out (version numbers ``v1.2.3.4``, dates, ISBNs, long digit runs).

A span is ``(kind, start, end)`` in Python string (code point) offsets; overlapping matches
keep the kind found first in :data:`KINDS` order (an IBAN's digits are not also a phone).
This module imports nothing from Glia, so storage (manifest export), curation (replay export,
dataloader) and the ``pii`` tagger share one definition.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# The kinds, in the order overlaps are resolved (earlier wins).
KINDS: tuple[str, ...] = ("email", "iban", "credit_card", "ipv6", "ipv4", "phone")

DEFAULT_PLACEHOLDER = "<{kind}>"  # ``{kind}`` is replaced by the kind's name, e.g. "<email>"

# Step 1: RE2 candidate patterns per kind (each a superset of what step 2 accepts).
_CANDIDATES: dict[str, str] = {
    "email": r"[A-Za-z0-9._%+-]@[A-Za-z0-9-]+\.[A-Za-z]",
    "iban": r"[A-Z]{2}\d{2} ?[A-Z0-9]{4} ?[A-Z0-9]{4}",
    "credit_card": r"\d(?:[ -]?\d){12}",
    "ipv6": r"[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}",
    "ipv4": r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}",
    "phone": r"\d{2,4}\)?[ .-]\d{3,4}[ .-]?\d{3,4}",
}
_CANDIDATE = "|".join(_CANDIDATES.values())

# Step 2: Python patterns.
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_PATTERNS: dict[str, re.Pattern[str]] = {
    "email": re.compile(r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
                        r"[A-Za-z]{2,24}(?![\w-])"),
    "iban": re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![A-Za-z0-9])"),
    "credit_card": re.compile(r"(?<![\d.-])\d(?:[ -]?\d){12,18}(?![\d-]|\.\d)"),
    "ipv6": re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|" + _OCTET + r"(?:\." + _OCTET
                       + r"){3})?(?![\w:])"),
    "ipv4": re.compile(r"(?<![\w.])" + _OCTET + r"(?:\." + _OCTET + r"){3}(?![\w]|\.\d)"),
    "phone": re.compile(r"(?<![\w+.-])(?<!\d[ .-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]?\d{3,4}"
                        r"(?![\w-]|[ .]\d)"),
}
# Words just before a match that make it something else (``version 1.2.3.4``, ``ISBN 0-306-40615-2``).
_NOT_BEFORE = re.compile(r"(?:\b(?:v|ver|version|isbn(?:-1[03])?|issn|doi|release|build)\s*[:#.]?\s*)$", re.I)
_CARD_PREFIX = re.compile(r"^(?:4|5[1-5]|2[2-7]|3[47]|3[068]|35|6011|65|62)")
_CANDIDATE_RE = {k: re.compile(v) for k, v in _CANDIDATES.items()}
_DATE_LIKE = re.compile(r"^(?:\d{4}[ .-]\d{2}[ .-]\d{2}|\d{2}[ .-]\d{2}[ .-]\d{4})$")


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum of a string of digits (card numbers end with a check digit)."""
    d = np.frombuffer(digits.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
    d = d[::-1].copy()
    doubled = d[1::2] * 2
    d[1::2] = doubled - 9 * (doubled > 9)
    return int(d.sum()) % 10 == 0


def iban_ok(iban: str) -> bool:
    """ISO 13616: move the first four characters to the end, letters to 10..35; mod 97 is 1."""
    s = iban.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _accept(kind: str, text: str, m: re.Match[str]) -> bool:
    """The checks a regex cannot do; False for look-alikes."""
    s = m.group(0)
    if kind in ("ipv4", "phone", "credit_card") and _NOT_BEFORE.search(text, max(0, m.start() - 16), m.start()):
        return False
    if kind == "iban":
        return iban_ok(s)
    if kind == "credit_card":
        digits = re.sub(r"[ -]", "", s)
        # One separator style only (4111 1111-1111 ... is not how a card number is written).
        return (13 <= len(digits) <= 19 and not ("-" in s and " " in s) and bool(_CARD_PREFIX.match(digits))
                and luhn_ok(digits))
    if kind == "ipv6":
        # Scope operators (``a::b``, ``Foo::Bar``) and clock times are not addresses: an address
        # has a decimal digit, and either ``::`` or all eight groups.
        if ("::" not in s and s.count(":") != 7) or not any(c.isdigit() for c in s):
            return False
        try:
            ipaddress.IPv6Address(s)
        except ValueError:
            return False
        return True
    if kind == "phone":
        digits = sum(c.isdigit() for c in s)
        return 9 <= digits <= 15 and not _DATE_LIKE.match(s)
    return True


def find(text: str, kinds: Sequence[str] = KINDS) -> list[tuple[str, int, int]]:
    """Every accepted PII span of ``text`` as ``(kind, start, end)``, sorted by start, without overlaps."""
    return _find_kinds(text, [k for k in KINDS if k in kinds and _CANDIDATE_RE[k].search(text)])


def candidates(text: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A boolean mask of the documents that may hold PII (vectorised, RE2); the rest hold none."""
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks()
    return pc.fill_null(pc.match_substring_regex(text, _CANDIDATE), False).to_numpy(zero_copy_only=False)


def find_all(text: pa.Array | pa.ChunkedArray, kinds: Sequence[str] = KINDS) -> list[list[tuple[str, int, int]]]:
    """:func:`find` for every document of an Arrow string array: one RE2 test per kind over the
    batch, then Python only on each candidate document, for the kinds it is a candidate for."""
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks()
    out: list[list[tuple[str, int, int]]] = [[] for _ in range(len(text))]
    # One combined pass over the batch, then one pass per kind over the (few) candidates only.
    idx = np.flatnonzero(candidates(text))
    if not len(idx):
        return out
    cand = text.take(pa.array(idx))
    masks = {k: pc.fill_null(pc.match_substring_regex(cand, _CANDIDATES[k]), False).to_numpy(zero_copy_only=False)
             for k in KINDS if k in kinds}
    for j, (i, s) in enumerate(zip(idx.tolist(), cand.to_pylist())):
        out[i] = _find_kinds(s, [k for k in masks if masks[k][j]]) if s else []
    return out


def _find_kinds(text: str, kinds: Sequence[str]) -> list[tuple[str, int, int]]:
    """:func:`find` for kinds already known to have a candidate in ``text`` (no second test)."""
    taken: list[tuple[str, int, int]] = []
    for kind in kinds:
        for m in _PATTERNS[kind].finditer(text):
            if any(m.start() < e and s < m.end() for _, s, e in taken):
                continue
            if _accept(kind, text, m):
                taken.append((kind, m.start(), m.end()))
    taken.sort(key=lambda t: t[1])
    return taken


def placeholder_fn(placeholder: str) -> Callable[[str], str]:
    """The replacement for a kind: ``placeholder`` with ``{kind}`` filled in (a fixed string if absent)."""
    if not isinstance(placeholder, str):
        raise ValueError(f"the PII placeholder must be a string such as {DEFAULT_PLACEHOLDER!r}, got {placeholder!r}")
    return lambda kind: placeholder.replace("{kind}", kind)


def redact(text: str, spans: Iterable[tuple[str, int, int]], placeholder: str = DEFAULT_PLACEHOLDER) -> str:
    """``text`` with each span replaced by the placeholder (spans sorted, not overlapping)."""
    fill = placeholder_fn(placeholder)
    parts, last = [], 0
    for kind, s, e in spans:
        parts += [text[last:s], fill(kind)]
        last = e
    parts.append(text[last:])
    return "".join(parts)


def redact_array(text: pa.Array | pa.ChunkedArray, placeholder: str = DEFAULT_PLACEHOLDER,
                 kinds: Sequence[str] = KINDS) -> pa.Array:
    """Every document of ``text`` redacted; documents without a candidate are returned as they are."""
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks()
    placeholder_fn(placeholder)
    mask = candidates(text)
    idx = np.flatnonzero(mask)
    if not len(idx):
        return text
    new = [redact(s, find(s, kinds), placeholder) if s else s for s in text.take(pa.array(idx)).to_pylist()]
    return pc.replace_with_mask(text, pa.array(mask), pa.array(new, text.type))
