"""Registry of taggers by name. Adding a tagger is one file plus one line in ``_BUILTIN``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from glia.core.extras import import_for
from glia.taggers.base import Tagger

TaggerFactory = Callable[..., Tagger]

# Built-ins are named as "module:Class" and imported on first use: the model taggers pull in
# torch, datatrove or sentence-transformers, which a night that only deduplicates never needs
# (and `glia --help` should not pay for).
_BUILTIN: dict[str, TaggerFactory | str] = {
    "exact": "glia.taggers.exact:ExactHashTagger",
    "minhash": "glia.taggers.minhash:MinHashTagger",
    "embedding": "glia.taggers.embedding:EmbeddingTagger",
    "lm": "glia.taggers.lm:LMTagger",
    "risk": "glia.taggers.risk:RiskTagger",
    "quality": "glia.taggers.quality:QualityTagger",
    "staleness": "glia.taggers.staleness:StalenessTagger",
    "decontaminate": "glia.taggers.decontaminate:DecontaminateTagger",
    "pii": "glia.taggers.pii:PIITagger",
    "lang": "glia.taggers.lang:LangTagger",
}


def factory(name: str) -> TaggerFactory:
    """The class (or callable) registered under ``name``, imported on first use."""
    if name not in _BUILTIN:
        raise KeyError(f"unknown tagger {name!r}; registered taggers: {', '.join(available())}")
    entry = _BUILTIN[name]
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = getattr(import_for(f"tagger {name!r}", module), attr)
        _BUILTIN[name] = entry
    return entry


def available() -> list[str]:
    """Names of every registered tagger."""
    return sorted(_BUILTIN)


def register(name: str, factory: TaggerFactory) -> None:
    """Register a third-party tagger under ``name`` (raises if the name is taken)."""
    if name in _BUILTIN:
        raise ValueError(f"a tagger named {name!r} is already registered")
    _BUILTIN[name] = factory


def build(names: Iterable[str], params: Mapping[str, Mapping[str, Any]] | None = None) -> list[Tagger]:
    """Instantiate taggers by name, passing each its own parameter table (from the rules file).

    Each tagger then sees the others (``Tagger.bind``). Raises ``KeyError`` naming the unknown
    tagger and the known ones, and ``ValueError`` if two taggers would write the same tag column
    (the ``v_documents`` join needs unique columns) or one cannot work with the others.
    """
    params = params or {}
    taggers: list[Tagger] = []
    for name in names:
        taggers.append(factory(name)(**dict(params.get(name, {}))))
    by_name = {t.name: t for t in taggers}
    for t in taggers:
        t.bind(by_name)
    seen: dict[str, str] = {}
    for t in taggers:
        for col in t.schema().names[1:]:
            if col in seen:
                raise ValueError(f"taggers {seen[col]!r} and {t.name!r} both write column {col!r}")
            seen[col] = t.name
    return taggers
