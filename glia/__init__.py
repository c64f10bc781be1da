"""Glia: nightly data hygiene for language-model training corpora.

The one top-level package. Its layers are the folders at the top of the repository
(``glia.core`` is ``core/``, ``glia.curation`` is ``curation/``, ...); this module is the small
public face a trainer or a notebook needs::

    from glia import ReplayPlan, ReplayIterableDataset   # feed a trainer from a replay set
    from glia import run_night, query                    # run a night, read the catalog

Names are imported on first use, so ``from glia import ReplayPlan`` loads the dataloader and
nothing of Prefect, the models or the engine.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from glia.core.version import __version__

if TYPE_CHECKING:  # what the lazy names below resolve to, for type checkers and IDEs
    import pyarrow as pa

    from glia.curation.dataloader import (ReplayDataset, ReplayIterableDataset, ReplayPlan, ReplaySampler,
                                          iter_batches, iter_replay)
    from glia.engine.config import ConfigError, GliaConfig, load_config
    from glia.engine.pipeline import NightOutcome
    from glia.storage.catalog import Catalog

# public name -> the module that defines it
_LAZY = {
    # trainers: a replay set as a stream, a map-style dataset or a sampler
    "ReplayPlan": "glia.curation.dataloader",
    "ReplayIterableDataset": "glia.curation.dataloader",
    "ReplayDataset": "glia.curation.dataloader",
    "ReplaySampler": "glia.curation.dataloader",
    "iter_replay": "glia.curation.dataloader",
    "iter_batches": "glia.curation.dataloader",
    # notebooks and schedulers: the rules file, the catalog, a night
    "GliaConfig": "glia.engine.config",
    "ConfigError": "glia.engine.config",
    "load_config": "glia.engine.config",
    "NightOutcome": "glia.engine.pipeline",
    "Catalog": "glia.storage.catalog",
}

__all__ = [
    "Catalog", "ConfigError", "GliaConfig", "NightOutcome", "ReplayDataset", "ReplayIterableDataset", "ReplayPlan",
    "ReplaySampler", "__version__", "iter_batches", "iter_replay", "load_config", "open_catalog", "query", "run_night",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'glia' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def open_catalog(db: str | Path, wait_s: float = 0.0) -> Catalog:
    """The catalog at ``db``, read-only and sandboxed as ``glia sql`` opens it: SQL may read the
    catalog's own files and views (``v_documents``, ``v_manifest``, ...) and write nothing.
    Waits up to ``wait_s`` seconds while a night holds the file. Use it as a context manager."""
    from glia.storage.catalog import Catalog

    return Catalog.open_inspection(db, wait_s=wait_s)


def query(db: str | Path, sql: str, wait_s: float = 0.0) -> pa.Table:
    """Run read-only ``sql`` against the catalog at ``db`` and return the result as an Arrow
    table, e.g. ``query(db, "SELECT action, count(*) FROM v_documents GROUP BY ALL")``."""
    with open_catalog(db, wait_s) as cat:
        rel = cat.inspect(sql)
        if rel is None:
            raise ValueError(f"the last statement of {sql!r} returns no rows: end with a SELECT")
        return rel.to_arrow_table()


def run_night(shards: str | Path, db: str | Path, rules: str | Path | GliaConfig | None = None,
              state_dir: str | Path | None = None) -> NightOutcome:
    """One night, as ``glia run SHARDS --db DB --rules RULES`` runs it but in this process and
    without Prefect: new and changed shards under ``shards`` are tagged, deduplicated against
    every earlier night, decided and committed to ``db`` in one transaction.

    ``rules`` is a rules file (``glia.toml``), an already loaded :class:`GliaConfig`, or None
    for the built-in dedup-only defaults. Raises :class:`ConfigError` for a bad rules file."""
    from glia.engine.config import GliaConfig, load_config
    from glia.engine.night import run_night as run

    cfg = rules if isinstance(rules, GliaConfig) else load_config(rules)
    return run(shards, db, cfg, state_dir)
