"""The tagger interface: a batch of documents in, a table of tags out, keyed by doc_id.

A tagger knows nothing of Prefect, DuckDB or shards. It is given an Arrow table with at
least ``doc_id`` and ``text`` (plus whatever metadata the corpus has: ``source``,
``timestamp``, ``label``) and returns an Arrow table whose first column is ``doc_id`` and
whose other columns are its tags. Tags are keyed, never row-aligned: a tagger may return
its rows in any order, and the storage layer joins on ``doc_id``.

Columns whose name starts with ``_`` are machine-facing (signatures, hashes used by later
stages) and are left out of the human-facing ``v_documents`` view.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from datetime import datetime
from collections.abc import Mapping
from typing import Any, ClassVar

import pyarrow as pa

from glia.core.params import NoParams, build_params


@dataclass(frozen=True)
class Resources:
    """What a tagger needs, so an executor can place it (after NeMo Curator's stage resources).

    ``gpu`` says the tagger benefits from a GPU; ``batch_size`` is the number of documents
    it likes to see at once (the runner slices shards to that size, which also bounds memory).
    """

    gpu: bool = False
    batch_size: int = 10_000


@dataclass(frozen=True)
class NightInfo:
    """What a tagger may know about the night it runs in, fixed before any shard is tagged."""

    run_id: int
    started_at: datetime
    n_docs: int  # rows in tonight's new and changed shards (before row-level skips)
    # The newest document timestamp of the corpus as of tonight (active documents and tonight's
    # shards, UTC), None when no document has one: the corpus's own "now".
    newest: datetime | None = None


class Tagger(abc.ABC):
    """A small, versioned, stateless function from documents to tags.

    Subclasses set ``name`` and ``version`` and implement :meth:`tag` and :meth:`schema`.
    Bump ``version`` whenever the output for the same input can change: attribute files
    are stored under ``<name>@<version>`` so old tags stay meaningful and new ones are
    recomputed instead of mixed in.
    """

    name: ClassVar[str]
    version: ClassVar[str]
    resources: ClassVar[Resources] = Resources()
    # Taggers whose output columns (all of them, ``_`` ones included) this tagger reads: the
    # runner joins them into the batch by doc_id, so e.g. a classifier head reuses embeddings
    # computed once instead of running a second model pass.
    needs: ClassVar[tuple[str, ...]] = ()
    # Modules the tagger imports when it first tags (models load lazily): checked when the
    # configuration loads, so a missing extra is named before the night starts (core.extras).
    requires: tuple[str, ...] = ()

    # The tagger's parameters (``[taggers.<name>]``): a frozen dataclass whose fields are the keys,
    # types and defaults, and whose ``__post_init__`` checks ranges. :meth:`configure` builds it.
    Params: ClassVar[type] = NoParams

    def __init__(self, **params: Any) -> None:
        """A tagger without a constructor of its own takes exactly its ``Params``."""
        self.configure(params)

    def configure(self, params: Mapping[str, Any]) -> Any:
        """Build ``self.params`` from keyword arguments or a rules-file table (``core.params``:
        one ``ConfigError`` naming the key, its type and the allowed values) and return it."""
        self.params = build_params(self.Params, params, f"[taggers.{self.name}]")
        return self.params

    @abc.abstractmethod
    def schema(self) -> pa.Schema:
        """The output schema: ``doc_id`` (string) first, then the tag columns."""

    @abc.abstractmethod
    def tag(self, batch: pa.Table) -> pa.Table:
        """Tag a batch. ``batch`` has ``doc_id`` and non-null ``text``; the result has one
        row per input document and exactly :meth:`schema`'s columns."""

    def bind(self, taggers: Mapping[str, Tagger]) -> None:
        """See the run's other taggers (``taggers``: every configured one by name, this one
        included) once all are built, and add to :attr:`needs` an output worth reusing (e.g. a
        head reads the embedding tagger's vectors if they are the model it was trained on, and
        runs that model itself otherwise). Raise ``ValueError`` if the configuration cannot work.
        Called by ``registry.build``; the default needs nothing more."""

    def for_night(self, night: NightInfo) -> Tagger:
        """The tagger as configured for one night (e.g. a sampling rate from tonight's size, or
        the run date). Whatever it binds must show up in :meth:`config`, which keys the cache.
        The default is the tagger itself."""
        return self

    def stats(self, tags: pa.Table) -> dict[str, float]:
        """Counts worth recording about one batch's output (e.g. documents flagged), summed over
        the night's batches into ``run_metrics`` as ``<name>.<count>`` and printed by ``glia run``
        (after datatrove's ``stat_update``). Documents and seconds are counted for every tagger."""
        return {}

    def config(self) -> dict[str, object]:
        """Parameters that change the output; they go into the cache key and the file metadata."""
        return {}

    @property
    def key(self) -> str:
        """``name@version``: the folder the tagger's attribute files live in."""
        return f"{self.name}@{self.version}"
