"""Night stages: the steps that look at a whole night (and at earlier nights) at once.

A :class:`~taggers.base.Tagger` is a pure function of one shard. Some complement tags are
not: near-duplicates are found against every earlier night, novelty against a bank of
earlier documents, surprise against a slow trace of earlier losses, and decisions against
tonight's distribution. Those are night stages. A stage

- reads, at prepare time and read-only, whatever catalog state it keeps (:meth:`load`);
- reads tonight's output of the taggers and stages it ``needs`` (:class:`StageInputs`);
- returns a :class:`StageOutput`: per-document tags (written here as per-shard Parquet
  attribute files, so they join ``v_documents`` like a tagger's), index segments it wrote
  (files named by run id, invisible until committed), and rows for its own catalog tables.

Nothing a stage returns touches the database before ``Catalog.commit_run``: the night's
tags, segments and table rows become visible in one transaction, or not at all, so a crash
anywhere costs a rerun and never leaves half a night behind.

Adding a stage is one class and one line in ``stages.registry.STAGES``.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from glia.core.context import RunContext
from glia.core.params import NoParams, build_params
from glia.storage.catalog import Segment, TableWrite, TagFile
from glia.storage.migrations import StageMigration
from glia.storage.parquet_io import FileWrite, write_all



@dataclass
class StageInputs:
    """Tonight's material for a stage.

    ``documents`` has one row per accepted document tonight (``doc_id``, ``shard_id``,
    ``source``, ``timestamp``, ``label``); ``files`` maps every tagger and stage output that
    ran tonight to its attribute files (per shard). Read with :meth:`read`.
    """

    documents: pa.Table
    files: dict[str, list[TagFile]]
    # doc_id -> the run it was first seen in, for tonight's documents seen in an earlier run (a
    # rewritten, moved or returning shard): they keep that rank in the survivor rule.
    first_seen: dict[str, int]
    history_active: list[str]  # shards whose earlier documents count as history tonight

    def read(self, name: str, columns: Sequence[str] | None = None) -> pa.Table:
        """Tonight's rows of tagger or stage output ``name`` with a ``shard_id`` column.

        Raises ``KeyError`` naming what is available if ``name`` did not run tonight.
        """
        if name not in self.files:
            raise KeyError(f"no output named {name!r} tonight; have: {', '.join(sorted(self.files))}")
        parts = []
        for f in self.files[name]:
            t = pq.read_table(f.path, columns=None if columns is None else list(dict.fromkeys(["doc_id", *columns])))
            parts.append(t.append_column("shard_id", pa.array([f.shard_id] * t.num_rows, pa.string())))
        if not parts:
            return pa.table({"doc_id": pa.array([], pa.string()), "shard_id": pa.array([], pa.string())})
        return pa.concat_tables(parts, promote_options="default")

    def columns(self, name: str) -> list[str]:
        """Column names of output ``name`` tonight (every shard's file has the tagger's schema);
        empty if it did not run or wrote no file."""
        files = self.files.get(name)
        return pq.read_schema(files[0].path).names if files else []


@dataclass
class StageOutput:
    """What a stage produced tonight.

    ``tags`` maps each output named in :meth:`NightStage.outputs` to a table with
    ``doc_id``, ``shard_id`` and that output's columns; ``segments`` are files the stage
    wrote under the state dir (registered in ``index_segments`` at commit); ``writes`` are
    rows for the stage's own tables; ``counts`` go into the run summary.
    """

    tags: dict[str, pa.Table] = field(default_factory=dict)
    segments: list[Segment] = field(default_factory=list)
    writes: list[TableWrite] = field(default_factory=list)
    counts: dict[str, int | float] = field(default_factory=dict)


class NightStage(abc.ABC):
    """A step over the whole night. Subclasses set ``name``, ``version``, ``needs`` and
    implement :meth:`outputs` and :meth:`run`.

    ``migrations`` are the schema of the stage's own catalog tables, ``(version, description,
    SQL)`` oldest first, applied at migrate time and recorded in ``stage_schema`` (so SQL users
    see the tables, empty, before the stage first runs). Never edit a released migration: add
    one. The first is ``CREATE TABLE IF NOT EXISTS``, so a database made before the stage's
    schema was versioned adopts its tables.
    """

    name: ClassVar[str]
    version: ClassVar[str]
    needs: ClassVar[tuple[str, ...]] = ()
    # Outputs it uses when they run tonight, and does without otherwise: it runs after them.
    reads: ClassVar[tuple[str, ...]] = ()
    migrations: ClassVar[tuple[StageMigration, ...]] = ()
    # Modules the stage imports when it runs (checked when the configuration loads; core.extras).
    requires: ClassVar[tuple[str, ...]] = ()

    # The stage's parameters (``[stages.<name>]``), as for taggers (``taggers.base.Tagger.Params``).
    Params: ClassVar[type] = NoParams

    def configure(self, params: Mapping[str, Any]) -> Any:
        """Build ``self.params`` from keyword arguments or a rules-file table, or raise ``ConfigError``."""
        self.params = build_params(self.Params, params, f"[stages.{self.name}]")
        return self.params

    def outputs(self) -> dict[str, pa.Schema]:
        """Per-document outputs: name -> schema (``doc_id`` first), each exposed as the view
        ``tags_<name>`` and joined into ``v_documents``. Names must not clash with taggers."""
        return {}

    def config(self) -> dict[str, Any]:
        """Parameters that change the output (recorded with the run)."""
        return {}

    def tagger_params(self) -> dict[str, dict[str, Any]]:
        """Parameters this stage sets on the taggers it needs, where their output must match what
        the stage keeps across nights (the dedup stage sets MinHash's signature shape). The
        engine passes them to those taggers beside their own ``[taggers.<name>]`` tables."""
        return {}

    def load(self, con: duckdb.DuckDBPyConnection, ctx: RunContext) -> Any:
        """Read the state this stage keeps from the catalog, read-only, before tagging starts."""
        return None

    @abc.abstractmethod
    def run(self, ctx: RunContext, state: Any, inputs: StageInputs) -> StageOutput:
        """Do tonight's work. Write files only under ``ctx.state_dir``, named by ``ctx.run_id``."""


# -- running a stage ------------------------------------------------------------------------


def write_stage_tags(ctx: RunContext, stage: NightStage, tags: Mapping[str, pa.Table]) -> list[TagFile]:
    """Split each output table by shard into ``tags/<output>@<version>/<shard_id>.parquet``."""
    writes: list[FileWrite] = []
    files: list[TagFile] = []
    schemas = stage.outputs()
    for name, table in tags.items():
        if name not in schemas:
            raise ValueError(f"stage {stage.name!r} returned output {name!r} it does not declare in outputs()")
        schema = schemas[name]
        if table.num_rows == 0:
            continue
        shard_ids = pc.unique(table["shard_id"]).to_pylist()
        for shard_id in sorted(shard_ids):
            part = table.filter(pc.equal(table["shard_id"], shard_id)).select(schema.names).cast(schema)
            out = ctx.tag_path(f"{name}@{stage.version}", shard_id)
            writes.append(FileWrite(out, part, schema, {"tagger": name, "version": stage.version, "stage": stage.name,
                                                        "shard_id": shard_id, "run_id": ctx.run_id,
                                                        "config": stage.config()}))
            files.append(TagFile(name, stage.version, shard_id, str(out), part.num_rows))
    write_all(writes)
    return files


@dataclass
class StageResult:
    """A stage's output after its tags were written: what ``build_record`` commits."""

    name: str
    tag_files: list[TagFile]
    segments: list[Segment]
    writes: list[TableWrite]
    counts: dict[str, int | float]
    tables: dict[str, pa.Table]


def run_stage(ctx: RunContext, stage: NightStage, state: Any, inputs: StageInputs) -> StageResult:
    out = stage.run(ctx, state, inputs)
    files = write_stage_tags(ctx, stage, out.tags)
    return StageResult(stage.name, files, out.segments, out.writes, out.counts, dict(out.tags))
