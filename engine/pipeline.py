"""The stages of a nightly run as plain functions; ``engine.night`` runs them as one night
(and ``flows.nightly`` as Prefect tasks).

``prepare`` (discover, diff with the registry, check ids) -> ``ingest_shard`` and
``tag_shard`` per shard (pure: a shard and a config in, one Parquet file out, never the
database) -> night stages (``stages.base``: dedup against history, novelty, surprise,
decisions) -> ``build_record`` -> ``Catalog.commit_run`` (the one write).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from typing import Any
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from collections.abc import Sequence

from glia.core.version import __version__
from glia.engine.config import GliaConfig
from glia.stages import base as stages_mod
from glia.stages import registry as stage_registry
from glia.core import faults
from glia.core.context import RunContext
from glia.engine.ingest import (
    ReadSpec, ShardRejected, TIMESTAMP, empty_skips, newest_timestamp, read_documents, scan_ids,
)
from glia.storage.shards import ShardFile, ShardPlan, discover, plan
from glia.storage.catalog import Catalog, RunRecord, ShardRow, TagFile
from glia.storage.history import History
from glia.storage.parquet_io import AtomicWriter, read_metadata, write_atomic
from glia.storage.sql import registered
from glia.storage.views import DOCUMENTS, DOCUMENTS_VERSION, ViewSource
from glia.taggers import registry
from glia.stages.base import NightStage, StageInputs, StageResult
from glia.taggers.base import NightInfo, Tagger

def documents_schema() -> pa.Schema:
    """The per-shard ``documents`` index: id, row and the canonical metadata (null if absent).
    Extra metadata columns keep their own types and are appended per file."""
    return pa.schema(
        [("doc_id", pa.string()), ("row", pa.int64()), ("source", pa.string()),
         ("timestamp", TIMESTAMP), ("label", pa.string())]
    )


def code_version() -> str:
    """Package version plus the git commit when running from a checkout."""
    version = __version__
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        return f"{version}+g{sha}" if sha else version
    except (OSError, subprocess.SubprocessError):
        return version


def default_state_dir(db_path: Path) -> Path:
    """``glia.duckdb`` keeps its Parquet state in ``glia_data/`` beside it."""
    return db_path.with_name(f"{db_path.stem}_data")


@dataclass(frozen=True)
class NightContext(RunContext):
    """A :class:`~core.context.RunContext` with the run's whole configuration, for the engine's
    own steps (a night stage sees only the ``RunContext`` part)."""

    config: GliaConfig = field(default_factory=GliaConfig)

    @classmethod
    def start(cls, root: str, db_path: Path, state_dir: Path, config: GliaConfig, run_id: int) -> NightContext:
        """The context of run ``run_id``, started now."""
        return cls(root, db_path, state_dir, run_id, now(), config.columns, config)


@dataclass(frozen=True)
class NightParts:
    """What a configuration builds for a night, once: its taggers (not yet bound to a night)
    and its stages, each in dependency order."""

    taggers: list[Tagger]
    stages: list[NightStage]

    @classmethod
    def build(cls, cfg: GliaConfig) -> NightParts:
        stages = stages_for(cfg)
        return cls(taggers_for(cfg, stages), stages)

    def for_night(self, night: NightInfo) -> list[Tagger]:
        """The taggers bound to tonight (``Tagger.for_night``)."""
        return [t.for_night(night) for t in self.taggers]


def tagger_params(cfg: GliaConfig, stages: Sequence[NightStage]) -> dict[str, dict[str, Any]]:
    """Each configured tagger's parameters: its ``[taggers.<name>]`` table, and what the night's
    stages set on it (``NightStage.tagger_params``: the dedup stage's MinHash signature shape)."""
    params = {name: cfg.params_for(name) for name in cfg.run.taggers}
    for stage in stages:
        for name, values in stage.tagger_params().items():
            if name in params:
                params[name].update(values)
    return params


def taggers_for(cfg: GliaConfig, stages: Sequence[NightStage] = ()) -> list[Tagger]:
    """The configured taggers (with what ``stages`` set on them), ordered so that every tagger
    comes after those it ``needs``."""
    taggers = registry.build(cfg.run.taggers, tagger_params(cfg, stages))
    names = {t.name for t in taggers}
    for t in taggers:
        missing = set(t.needs) - names
        if missing:
            raise ValueError(f"tagger {t.name!r} needs {', '.join(sorted(missing))}: add it to [run].taggers")
    ordered: list[Tagger] = []
    while len(ordered) < len(taggers):
        ready = [t for t in taggers if t not in ordered and set(t.needs) <= {o.name for o in ordered}]
        if not ready:
            raise ValueError(f"taggers need each other in a cycle: {[t.name for t in taggers if t not in ordered]}")
        ordered += ready
    return ordered


def night_info(ctx: RunContext, night: NightPlan) -> NightInfo:
    return NightInfo(ctx.run_id, ctx.started_at, sum(night.n_rows.values()), night.newest)


def view_sources(parts: NightParts) -> list[ViewSource]:
    """The files each ``tags_<name>`` view reads: the documents index, every tagger's and every stage output's."""
    srcs = [ViewSource(DOCUMENTS, DOCUMENTS_VERSION, documents_schema())]
    srcs += [ViewSource(t.name, t.version, t.schema()) for t in parts.taggers]
    for stage in parts.stages:
        srcs += [ViewSource(name, stage.version, schema) for name, schema in stage.outputs().items()]
    return srcs


# -- prepare --------------------------------------------------------------------------------


@dataclass
class NightPlan:
    """What tonight will process, with every shard-level rejection and row skip found so far."""

    shard_plan: ShardPlan
    specs: list[ReadSpec] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)  # path -> reason
    rejected_files: list[ShardFile] = field(default_factory=list)
    skipped: list[pa.Table] = field(default_factory=list)
    n_rows: dict[str, int] = field(default_factory=dict)  # shard_id -> rows in file
    backfill: list[tuple[ReadSpec, str]] = field(default_factory=list)  # (spec, tagger) for old shards
    # doc_id -> first run it was seen in, for tonight's documents seen before (a rewritten,
    # moved or returning shard): they keep that rank in the survivor rule.
    first_seen: dict[str, int] = field(default_factory=dict)
    # The newest document timestamp of the corpus tonight (active documents and tonight's shards).
    newest: datetime | None = None


def _scan_ids(night: NightPlan, shards: Sequence[ShardFile], cfg: GliaConfig) -> list[tuple[ShardFile, pa.Table, pa.Table]]:
    """Each shard's ids and the rows ``scan_ids`` already skips; a shard it rejects goes into
    ``night.rejected``, the skips and row counts of the others into ``night``."""
    id_tables: list[tuple[ShardFile, pa.Table, pa.Table]] = []
    for shard in shards:
        try:
            ids, skips = scan_ids(shard, cfg.columns, cfg.run.storage_options)
        except ShardRejected as exc:
            night.rejected[shard.path] = str(exc)
            night.rejected_files.append(shard)
            continue
        night.skipped.append(skips)
        night.n_rows[shard.shard_id] = ids.num_rows + skips.num_rows
        id_tables.append((shard, ids, skips))
    return id_tables


def prepare(ctx: NightContext, catalog: Catalog, taggers: Sequence[Tagger]) -> NightPlan:
    """Discover shards, diff them with the registry and settle id conflicts up front, so the
    per-shard tasks are pure functions of (shard, excluded rows, config)."""
    cfg = ctx.config
    found = discover(ctx.root, cfg.run.glob, cfg.run.storage_options)
    sp = plan(ctx.root, found, catalog.shards())
    night = NightPlan(shard_plan=sp)
    for f, _ in sp.rejected:
        night.rejected[f.path] = f.error or "unreadable"
        night.rejected_files.append(f)

    superseded = {row.shard_id for _, row in sp.changed}
    id_tables = _scan_ids(night, sp.to_ingest, cfg)

    # Ids already used by an active document (outside shards replaced tonight), or by an
    # earlier shard (by path) tonight, are skipped with the place they were first seen.
    taken: dict[str, str] = {}
    if id_tables:
        all_ids = pa.concat_tables([t.select(["doc_id"]) for _, t, _ in id_tables])
        with registered(catalog.con, "q_ids", all_ids):
            rows = catalog.con.execute(
                "SELECT d.doc_id, d.shard_path, d.row FROM documents d SEMI JOIN q_ids USING (doc_id) "
                "WHERE d.shard_id NOT IN (SELECT unnest(?::VARCHAR[]))",
                [sorted(superseded)],
            ).fetchall()
        taken = {d: f"{p} row {r}" for d, p, r in rows}
        history = History(catalog.segments(), active_shards=[])
        try:
            night.first_seen = history.first_runs(all_ids)
        finally:
            history.close()
    for shard, ids, skips in id_tables:
        doc_ids = ids["doc_id"].to_pylist()
        rows = ids["row"].to_pylist()
        # Rows scan_ids already skipped (null or repeated ids) must not be read either.
        dropped = [r for r in skips["row"].to_pylist() if r is not None]
        excluded, ex_ids, reasons = [], [], []
        for d, r in zip(doc_ids, rows):
            if d in taken:
                excluded.append(r); ex_ids.append(d); reasons.append(f"duplicate id: already in {taken[d]}")
            else:
                taken[d] = f"{shard.path} row {r}"
        if excluded:
            night.skipped.append(pa.table({
                "shard_id": [shard.shard_id] * len(excluded), "path": [shard.path] * len(excluded),
                "row": pa.array(excluded, pa.int64()), "doc_id": ex_ids, "reason": reasons}))
        night.specs.append(ReadSpec(shard, cfg.columns, cfg.run.batch_size, tuple(sorted(excluded + dropped)),
                                    cfg.run.max_doc_bytes, cfg.run.storage_options))

    night.newest = _newest(catalog, [shard for shard, _, _ in id_tables], superseded, cfg)

    # Active shards that lack a tagger's current version (a tagger added or bumped since).
    wanted = {(t.name, t.version) for t in taggers}
    have = {(f.tagger, f.version, f.shard_id) for f in catalog.tag_files()}
    for row in sp.unchanged:
        if row.status != "active":
            continue
        missing = [name for name, ver in sorted(wanted) if (name, ver, row.shard_id) not in have]
        if missing:
            shard = ShardFile(row.path, row.size, row.mtime_ns, row.footer_hash)
            excluded = tuple(
                r[0] for r in catalog.con.execute(
                    "SELECT \"row\" FROM skipped WHERE shard_id = ? AND \"row\" IS NOT NULL AND reason LIKE 'duplicate id%'",
                    [row.shard_id],
                ).fetchall()
            )
            spec = ReadSpec(shard, cfg.columns, cfg.run.batch_size, excluded, cfg.run.max_doc_bytes,
                            cfg.run.storage_options)
            night.backfill += [(spec, name) for name in missing]
    return night


def _newest(catalog: Catalog, shards: list[ShardFile], superseded: set[str], cfg: GliaConfig) -> datetime | None:
    """The newest document timestamp among the active documents (outside shards replaced tonight)
    and tonight's shards: what a night-relative tagger (staleness) takes as the corpus's "now"."""
    row = catalog.con.execute(
        'SELECT max("timestamp") FROM documents WHERE shard_id IN (SELECT shard_id FROM shards WHERE status = \'active\') '
        "AND shard_id NOT IN (SELECT unnest(?::VARCHAR[]))", [sorted(superseded)]).fetchone()
    stamps = [row[0]] if row and row[0] is not None else []
    stamps += [t for t in (newest_timestamp(s, cfg.columns, cfg.run.storage_options) for s in shards) if t is not None]
    return max(stamps) if stamps else None


# -- per-shard work (pure) ------------------------------------------------------------------


@dataclass(frozen=True)
class IngestResult:
    shard_id: str
    path: str
    documents: TagFile | None
    n_docs: int
    skipped: pa.Table
    error: str | None = None


def ingest_shard(ctx: NightContext, spec: ReadSpec) -> IngestResult:
    """Write the shard's ``documents`` index (ids, rows, metadata); report text skips."""
    shard = spec.shard
    out = ctx.tag_path(f"{DOCUMENTS}@{DOCUMENTS_VERSION}", shard.shard_id)
    skips: list[pa.Table] = [empty_skips()]
    base = documents_schema()

    def batches():
        for b in read_documents(spec, skips):
            cols = {}
            for f in base:
                cols[f.name] = b.column(f.name).cast(f.type) if f.name in b.column_names else pa.nulls(b.num_rows, f.type)
            for extra in ctx.config.columns.extra:
                if extra in b.column_names:
                    cols[extra] = b.column(extra)
            yield pa.table(cols)

    try:
        gen = batches()
        first = next(gen, None)
        schema = first.schema if first is not None else base
        meta = {"tagger": DOCUMENTS, "version": DOCUMENTS_VERSION, "shard": shard.path, "shard_id": shard.shard_id}
        rows = write_atomic(out, _chain(first, gen), schema, meta)
    except ShardRejected as exc:
        return IngestResult(shard.shard_id, shard.path, None, 0, pa.concat_tables(skips), str(exc))
    tf = TagFile(DOCUMENTS, DOCUMENTS_VERSION, shard.shard_id, str(out), rows)
    return IngestResult(shard.shard_id, shard.path, tf, rows, pa.concat_tables(skips))


def _chain(first: pa.Table | None, rest):
    if first is not None:
        yield first
    yield from rest


def tag_shard(ctx: RunContext, spec: ReadSpec, tagger: Tagger, inputs: Sequence[TagFile] = ()) -> TagFile:
    """Run one tagger over one shard into ``tags/<name>@<version>/<shard_id>.parquet``
    (:func:`tag_shard_many` with one tagger)."""
    return tag_shard_many(ctx, spec, [tagger], inputs)[0]


def tag_shard_many(ctx: RunContext, spec: ReadSpec, taggers: Sequence[Tagger],
                   inputs: Sequence[TagFile] = ()) -> list[TagFile]:
    """Run ``taggers`` over one shard in one read, each into its own
    ``tags/<name>@<version>/<shard_id>.parquet``; they must read batches of the same size.

    ``inputs`` are this shard's files of the taggers they ``need``; their columns are joined
    into each batch by doc_id. Idempotent per tagger: a complete file from an earlier (crashed)
    attempt with the same inputs is reused, since files only ever appear whole.
    """
    shard = spec.shard
    for tagger in taggers:
        missing = set(tagger.needs) - {f.tagger for f in inputs}
        if missing:
            raise ValueError(f"tagger {tagger.name!r} needs {sorted(missing)} for shard {shard.path}; "
                             "add them to [run].taggers")
    metas = {t.name: _tag_meta(spec, t, inputs) for t in taggers}
    done = {t.name: _reused(ctx, spec, t, metas[t.name]) for t in taggers}
    todo = [t for t in taggers if done[t.name] is None]
    if todo:
        done.update(zip([t.name for t in todo], _tag_batches(ctx, spec, todo, metas, inputs)))
    return [done[t.name] for t in taggers]


def _tag_meta(spec: ReadSpec, tagger: Tagger, inputs: Sequence[TagFile]) -> dict[str, object]:
    """What a tag file records about how it was made (and what a rerun must match to reuse it)."""
    return {"tagger": tagger.name, "version": tagger.version, "config": tagger.config(),
            "shard": spec.shard.path, "shard_id": spec.shard.shard_id, "excluded": len(spec.excluded_rows),
            "inputs": sorted(f"{f.tagger}@{f.version}" for f in inputs)}


def _reused(ctx: RunContext, spec: ReadSpec, tagger: Tagger, meta: dict[str, object]) -> TagFile | None:
    """The tagger's complete file from an earlier (crashed) attempt, if its metadata matches.

    Its counts are recomputed from the file (sums over batches equal the sum over the whole),
    so the rerun's run_metrics match an uninterrupted run's."""
    out = ctx.tag_path(tagger.key, spec.shard.shard_id)
    if not (out.exists() and read_metadata(out) == meta):
        return None
    started = time.perf_counter()
    table = pq.read_table(out)
    counts = {k: float(v) for k, v in tagger.stats(table).items()} if table.num_rows else {}
    counts.update(docs=float(table.num_rows), seconds=time.perf_counter() - started)
    return TagFile(tagger.name, tagger.version, spec.shard.shard_id, str(out), table.num_rows,
                   tuple(sorted(counts.items())))


def _tag_batches(ctx: RunContext, spec: ReadSpec, taggers: Sequence[Tagger], metas: dict[str, dict[str, object]],
                 inputs: Sequence[TagFile]) -> list[TagFile]:
    """Read the shard once and feed every batch to each of ``taggers``, each streaming into its
    own file; every file is renamed into place only after the whole shard went through."""
    shard = spec.shard
    sizes = {min(spec.batch_size, t.resources.batch_size) for t in taggers}
    if len(sizes) != 1:
        raise ValueError(f"taggers {[t.name for t in taggers]} read batches of different sizes {sorted(sizes)}")
    sized = replace(spec, batch_size=sizes.pop())
    needed = _read_inputs(inputs)
    writers = [AtomicWriter(ctx.tag_path(t.key, shard.shard_id), t.schema(), metas[t.name]) for t in taggers]
    counts: list[dict[str, float]] = [{} for _ in taggers]
    spent = [0.0] * len(taggers)
    started = time.perf_counter()
    try:
        for b in read_documents(sized):
            if needed is not None:
                b = _join_inputs(b, needed, shard.path)
            for k, tagger in enumerate(taggers):
                t0 = time.perf_counter()
                out_b = tagger.tag(b)
                if out_b.num_rows != b.num_rows:
                    raise RuntimeError(f"tagger {tagger.key} returned {out_b.num_rows} rows for {b.num_rows} documents")
                for key, v in tagger.stats(out_b).items():
                    counts[k][key] = counts[k].get(key, 0.0) + float(v)
                writers[k].write(out_b)
                spent[k] += time.perf_counter() - t0
                faults.point(f"tag.batch.{tagger.name}")  # crash-test hook: this file half-written
    except BaseException:
        for w in writers:
            w.abort()
        raise
    # The shared read is split evenly between the taggers' times.
    read_share = (time.perf_counter() - started - sum(spent)) / len(taggers)
    files = []
    for k, (tagger, w) in enumerate(zip(taggers, writers)):
        try:
            rows = w.commit()
        except BaseException:
            for other in writers[k + 1:]:
                other.abort()
            raise
        counts[k].update(docs=float(rows), seconds=spent[k] + read_share)
        files.append(TagFile(tagger.name, tagger.version, shard.shard_id, str(w.path), rows,
                             tuple(sorted(counts[k].items()))))
    return files


def tag_groups(taggers: Sequence[Tagger], batch_size: int) -> list[tuple[Tagger, ...]]:
    """``taggers`` (in dependency order) as the groups a night runs per shard: the CPU taggers
    that need no other tagger's output, that no other tagger needs, and that read batches of the
    same size share one read of each shard (:func:`tag_shard_many`); every other tagger is a
    group of its own (a GPU tagger may be placed on another worker). Each group stands where
    its first tagger stood, so a tagger still comes after those it needs."""
    needed = {n for t in taggers for n in t.needs}
    shared: dict[int, list[Tagger]] = {}
    groups: list[list[Tagger]] = []
    for t in taggers:
        if t.resources.gpu or t.needs or t.name in needed:
            groups.append([t])
            continue
        size = min(batch_size, t.resources.batch_size)
        if size not in shared:
            shared[size] = []
            groups.append(shared[size])
        shared[size].append(t)
    return [tuple(g) for g in groups]


def _read_inputs(inputs: Sequence[TagFile]) -> pa.Table | None:
    if not inputs:
        return None
    table = None
    for f in inputs:
        t = pq.read_table(f.path)
        if table is None:
            table = t
        else:
            idx = pc.index_in(table["doc_id"], value_set=t["doc_id"])
            for name in t.column_names[1:]:
                table = table.append_column(name, pc.take(t[name], idx))
    return table


def _join_inputs(batch: pa.Table, needed: pa.Table, shard_path: str) -> pa.Table:
    idx = pc.index_in(batch["doc_id"], value_set=needed["doc_id"])
    if idx.null_count:
        raise RuntimeError(f"{shard_path}: {idx.null_count} documents have no row in a needed tagger's output; rerun")
    for name in needed.column_names[1:]:
        if name not in batch.column_names:
            batch = batch.append_column(name, pc.take(needed[name], idx))
    return batch


# -- night stages -----------------------------------------------------------------------


def stages_for(cfg: GliaConfig) -> list[NightStage]:
    """The configured night stages whose needs tonight's taggers meet, in dependency order."""
    return stage_registry.build(cfg.run.stages, {n: cfg.stage_params_for(n) for n in cfg.run.stages}, cfg.run.taggers)


def tonight_documents(ingests: list[IngestResult]) -> pa.Table:
    """Tonight's accepted documents (id, shard, canonical metadata) from the ingest indexes."""
    cols = ["doc_id", "source", "timestamp", "label"]
    parts = []
    for i in ingests:
        if i.error is None and i.documents is not None:
            t = pq.read_table(i.documents.path, columns=cols)
            parts.append(t.append_column("shard_id", pa.array([i.shard_id] * t.num_rows, pa.string())))
    if not parts:
        return documents_schema().empty_table().select(cols).append_column("shard_id", pa.array([], pa.string()))
    return pa.concat_tables(parts, promote_options="default")


def stage_inputs(first_seen: dict[str, int], ingests: list[IngestResult], tag_files: list[TagFile],
                 history_active: list[str]) -> StageInputs:
    """What the stages read: tonight's accepted documents and the taggers' files for them
    (``first_seen``: the night plan's earlier first sightings of tonight's documents)."""
    ok = {i.shard_id for i in ingests if i.error is None}
    files: dict[str, list[TagFile]] = {}
    for f in tag_files:
        if f.shard_id in ok:
            files.setdefault(f.tagger, []).append(f)
    return StageInputs(tonight_documents(ingests), files, dict(first_seen), history_active)


def run_stages(ctx: RunContext, stages: list[NightStage], states: dict[str, Any], inputs: StageInputs,
               run_one: Any = None) -> list[StageResult]:
    """Run the stages in order; each sees the outputs of those before it. ``run_one`` lets the
    engine time each call and run it on its executor (default: call :func:`stages.base.run_stage`)."""
    run_one = run_one or stages_mod.run_stage
    results: list[StageResult] = []
    for stage in stages:
        faults.point(f"stage.before.{stage.name}")  # crash-test hooks (core.faults)
        res = run_one(ctx, stage, states.get(stage.name), inputs)
        faults.point(f"stage.after.{stage.name}")
        for f in res.tag_files:
            inputs.files.setdefault(f.tagger, []).append(f)
        results.append(res)
    return results


def load_stage_states(con: Any, ctx: RunContext, stages: list[NightStage]) -> dict[str, Any]:
    return {s.name: s.load(con, ctx) for s in stages}


# -- finalize -------------------------------------------------------------------------------


@dataclass
class NightOutcome:
    """What the run did, for the summary."""

    run_id: int
    status: str
    counts: dict[str, int]
    rejected: dict[str, str]
    skipped: pa.Table
    seconds: float
    db_path: Path
    metrics: dict[str, float] = field(default_factory=dict)  # run_metrics of the run (stage counts)


def build_record(ctx: NightContext, parts: NightParts, night: NightPlan, ingests: list[IngestResult],
                 tag_files: list[TagFile], stage_results: list[StageResult], status: str,
                 seconds: dict[str, float] | None = None) -> RunRecord:
    sp = night.shard_plan
    cfg = ctx.config
    rec = RunRecord(
        run_id=ctx.run_id, started_at=ctx.started_at, status=status, shards_root=ctx.root,
        config_hash=cfg.hash(), code_version=code_version(), config=json.loads(json.dumps(cfg.to_dict(), default=list)),
    )
    ok = {i.shard_id: i for i in ingests if i.error is None}
    rejected = dict(night.rejected)
    for i in ingests:
        if i.error is not None:
            rejected[i.path] = i.error
    for spec in night.specs:
        s = spec.shard
        i = ok.get(s.shard_id)
        status_s = "active" if i is not None else "rejected"
        rec.new_shards.append(ShardRow(s.shard_id, s.path, s.size, s.mtime_ns, s.footer_hash,
                                       night.n_rows.get(s.shard_id), i.n_docs if i else None, status_s,
                                       ctx.run_id, ctx.run_id, None if i else rejected.get(s.path)))
    listed = {s.shard_id for s in rec.new_shards}
    for f in night.rejected_files:
        if f.shard_id not in listed:
            rec.new_shards.append(ShardRow(f.shard_id, f.path, f.size, f.mtime_ns, f.footer_hash, None, None,
                                           "rejected", ctx.run_id, ctx.run_id, rejected[f.path]))
            listed.add(f.shard_id)
    for f, old in sp.changed:
        rec.status_changes[old.shard_id] = "superseded"
    for f, old in sp.rejected:
        if old is not None and old.status == "active":
            rec.status_changes[old.shard_id] = "superseded"
    for row in sp.missing:
        rec.status_changes[row.shard_id] = "missing"
    for row in sp.reactivated:
        rec.status_changes[row.shard_id] = "active"
    rec.mtime_updates = dict(sp.mtime_updates)
    rec.first_seen = dict(night.first_seen)
    rec.tag_files = [i.documents for i in ok.values() if i.documents is not None]
    tonight = {s.shard.shard_id for s in night.specs}
    rec.tag_files += [f for f in tag_files if f.shard_id in ok or f.shard_id not in tonight]
    skipped = [empty_skips()] + night.skipped + [i.skipped for i in ingests]
    for path, reason in rejected.items():
        shard_id = next((s.shard_id for s in rec.new_shards if s.path == path), None)
        skipped.append(pa.table({"shard_id": [shard_id], "path": [path], "row": pa.array([None], pa.int64()),
                                 "doc_id": pa.array([None], pa.string()), "reason": [reason]}))
    rec.skipped = pa.concat_tables([t.cast(empty_skips().schema) for t in skipped])
    for res in stage_results:
        rec.tag_files += res.tag_files
        rec.segments += res.segments
        rec.writes += res.writes
        rec.metrics.update({f"{res.name}.{k}": float(v) for k, v in res.counts.items()})
    rec.metrics.update({f"seconds.{k}": float(v) for k, v in (seconds or {}).items()})
    for f in tag_files:  # what each tagger counted on tonight's shards, summed per tagger
        for k, v in f.stats:
            rec.metrics[f"{f.tagger}.{k}"] = rec.metrics.get(f"{f.tagger}.{k}", 0.0) + v
        if f.stats:
            rec.metrics[f"{f.tagger}.shards"] = rec.metrics.get(f"{f.tagger}.shards", 0.0) + 1
    stage_counts = {k: v for res in stage_results for k, v in res.counts.items()}
    rec.counts = {
        "shards_seen": len(sp.unchanged) + len(sp.to_ingest) + len(sp.rejected) + len(sp.reactivated),
        "shards_new": len(sp.new), "shards_changed": len(sp.changed), "shards_unchanged": len(sp.unchanged),
        "shards_rejected": len(rejected), "shards_missing": len(sp.missing),
        "docs": sum(i.n_docs for i in ok.values()),
        "exact_dups": int(stage_counts.get("exact_dups", 0)), "near_dups": int(stage_counts.get("near_dups", 0)),
        "skipped_rows": int(sum(1 for r in rec.skipped["row"].to_pylist() if r is not None)),
    }
    rec.view_sources = view_sources(parts)
    return rec


def collect_garbage(state_dir: Path, registered: set[str]) -> int:
    """Remove index segments that no committed run lists (left by a crashed run); return count.

    Only Glia's own state is touched, never a source shard.
    """
    removed = 0
    # Half-written files (tags, index, bank) of a killed run: the run lock is held, so no
    # writer is alive to own them.
    if state_dir.exists():
        for p in sorted(state_dir.rglob(".*.tmp")):
            if p.is_dir():  # a bank snapshot is written as a folder, then renamed
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
    index = state_dir / "index"
    if not index.exists():
        return 0
    for p in index.rglob("*.parquet"):
        if str(p) not in registered:
            p.unlink(missing_ok=True)
            removed += 1
    return removed


def now() -> datetime:
    return datetime.now(timezone.utc)

