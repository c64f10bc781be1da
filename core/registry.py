"""A registry of named parts (taggers, night stages) imported on first use.

A built-in part is registered as ``"module:Class"`` and imported the first time it is asked
for: a model tagger pulls in torch or datatrove, which a night that only deduplicates never
needs (and ``glia --help`` should not pay for). A third-party part is registered as the class
(or any callable) itself. A missing optional dependency names the extra that brings it
(:mod:`core.extras`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Generic, TypeVar

from glia.core.extras import import_for

T = TypeVar("T")


class Registry(Generic[T]):
    """Parts of one ``kind`` (``"tagger"``, ``"stage"``) by name; imported entries are cached."""

    def __init__(self, kind: str, builtin: Mapping[str, str | T]) -> None:
        self.kind = kind
        self._entries: dict[str, str | T] = dict(builtin)

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str) -> T:
        """The part registered under ``name``, imported on first use.

        Raises ``KeyError`` naming the registered parts, and ``MissingExtraError`` naming the
        extra to install when the part's module needs one that is missing.
        """
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} {name!r}; registered {self.kind}s: {', '.join(self.names())}")
        entry = self._entries[name]
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            entry = getattr(import_for(f"{self.kind} {name!r}", module), attr)
            self._entries[name] = entry
        return entry

    def register(self, name: str, target: str | T) -> None:
        """Register ``target`` (``"module:Class"`` or the part itself) under ``name``; raises
        ``ValueError`` if the name is taken."""
        if name in self._entries:
            raise ValueError(f"a {self.kind} named {name!r} is already registered")
        self._entries[name] = target

    def unregister(self, name: str) -> None:
        """Forget ``name`` (a no-op if it is not registered): the registry is process-wide."""
        self._entries.pop(name, None)
