"""Registry of taggers by name. Adding a tagger is one file plus one line in :data:`TAGGERS`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from glia.core.registry import Registry
from glia.taggers.base import Tagger

TaggerFactory = Callable[..., Tagger]

# Built-ins are named as "module:Class" and imported on first use (core.registry).
TAGGERS: Registry[TaggerFactory] = Registry("tagger", {
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
})

# The class (or callable) registered under a name, imported on first use.
factory = TAGGERS.get
# Names of every registered tagger.
available = TAGGERS.names
# Register a third-party tagger under a name (raises if the name is taken).
register = TAGGERS.register


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
