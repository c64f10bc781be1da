"""The stages of a nightly run as plain functions; ``flows.nightly`` maps them as tasks.

``prepare`` (discover, diff with the registry, check ids) -> ``ingest_shard`` and
``tag_shard`` per shard (pure: a shard and a config in, one Parquet file out, never the
database) -> ``dedup_night`` (tonight against history) -> ``finalize`` (the one write).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import curation
from curation.config import GliaConfig
from curation.dedup import EXACT_DUP_SCHEMA, NEAR_DUP_SCHEMA, Tonight, resolve
from curation.ingest import ReadSpec, ShardRejected, TIMESTAMP, empty_skips, read_documents, scan_ids
from curation.shards import ShardFile, ShardPlan, discover, plan
from storage.catalog import Catalog, RunRecord, ShardRow, TagFile
from storage.history import History, write_segment
from storage.parquet_io import read_metadata, write_atomic
from storage.views import DOCUMENTS, ViewSource
from taggers import registry
from taggers.base import Tagger

DOCUMENTS_VERSION = "1"
EXACT_DUP, NEAR_DUP, DEDUP_VERSION = "exact_dup", "near_dup", "1"


def documents_schema() -> pa.Schema:
    """The per-shard ``documents`` index: id, row and the canonical metadata (null if absent).
    Extra metadata columns keep their own types and are appended per file."""
    return pa.schema(
        [("doc_id", pa.string()), ("row", pa.int64()), ("source", pa.string()),
         ("timestamp", TIMESTAMP), ("label", pa.string())]
    )


def code_version() -> str:
    """Package version plus the git commit when running from a checkout."""
    version = curation.__version__
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        return f"{version}+g{sha}" if sha else version
    except (OSError, subprocess.SubprocessError):
        return version


@dataclass(frozen=True)
class RunContext:
    """Where a run reads and writes, and with which configuration."""

    root: str
    db_path: Path
    state_dir: Path
    config: GliaConfig
    run_id: int
    started_at: datetime

    def tag_path(self, tagger_key: str, shard_id: str) -> Path:
        return self.state_dir / "tags" / tagger_key / f"{shard_id}.parquet"


def default_state_dir(db_path: Path) -> Path:
    """``glia.duckdb`` keeps its Parquet state in ``glia_data/`` beside it."""
    return db_path.with_name(f"{db_path.stem}_data")


def taggers_for(cfg: GliaConfig) -> list[Tagger]:
    return registry.build(cfg.run.taggers, {name: cfg.params_for(name) for name in cfg.run.taggers})


def view_sources(cfg: GliaConfig) -> list[ViewSource]:
    srcs = [ViewSource(DOCUMENTS, DOCUMENTS_VERSION, documents_schema())]
    srcs += [ViewSource(t.name, t.version, t.schema()) for t in taggers_for(cfg)]
    if {"exact", "minhash"} <= set(cfg.run.taggers):
        srcs += [ViewSource(EXACT_DUP, DEDUP_VERSION, EXACT_DUP_SCHEMA), ViewSource(NEAR_DUP, DEDUP_VERSION, NEAR_DUP_SCHEMA)]
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


def prepare(ctx: RunContext, catalog: Catalog) -> NightPlan:
    """Discover shards, diff them with the registry and settle id conflicts up front, so the
    per-shard tasks are pure functions of (shard, excluded rows, config)."""
    cfg = ctx.config
    found = discover(ctx.root, cfg.run.glob)
    sp = plan(ctx.root, found, catalog.shards())
    night = NightPlan(shard_plan=sp)
    for f, _ in sp.rejected:
        night.rejected[f.path] = f.error or "unreadable"
        night.rejected_files.append(f)

    superseded = {row.shard_id for _, row in sp.changed}
    id_tables: list[tuple[ShardFile, pa.Table, pa.Table]] = []
    for shard in sp.to_ingest:
        try:
            ids, skips = scan_ids(shard, cfg.columns)
        except ShardRejected as exc:
            night.rejected[shard.path] = str(exc)
            night.rejected_files.append(shard)
            continue
        night.skipped.append(skips)
        night.n_rows[shard.shard_id] = ids.num_rows + skips.num_rows
        id_tables.append((shard, ids, skips))

    # Ids already used by an active document (outside shards replaced tonight), or by an
    # earlier shard (by path) tonight, are skipped with the place they were first seen.
    taken: dict[str, str] = {}
    if id_tables:
        all_ids = pa.concat_tables([t.select(["doc_id"]) for _, t, _ in id_tables])
        catalog.con.register("q_ids", all_ids)
        rows = catalog.con.execute(
            "SELECT d.doc_id, d.shard_path, d.row FROM documents d SEMI JOIN q_ids USING (doc_id) "
            "WHERE d.shard_id NOT IN (SELECT unnest(?::VARCHAR[]))",
            [sorted(superseded)],
        ).fetchall()
        catalog.con.unregister("q_ids")
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
        night.specs.append(ReadSpec(shard, cfg.columns, cfg.run.batch_size, tuple(sorted(excluded + dropped))))

    # Active shards that lack a tagger's current version (a tagger added or bumped since).
    wanted = {(t.name, t.version) for t in taggers_for(cfg)}
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
            spec = ReadSpec(shard, cfg.columns, cfg.run.batch_size, excluded)
            night.backfill += [(spec, name) for name in missing]
    return night


# -- per-shard work (pure) ------------------------------------------------------------------


@dataclass(frozen=True)
class IngestResult:
    shard_id: str
    path: str
    documents: TagFile | None
    n_docs: int
    skipped: pa.Table
    error: str | None = None


def ingest_shard(ctx: RunContext, spec: ReadSpec) -> IngestResult:
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


def tag_shard(ctx: RunContext, spec: ReadSpec, tagger: Tagger) -> TagFile:
    """Run one tagger over one shard into ``tags/<name>@<version>/<shard_id>.parquet``.

    Idempotent: a complete file from an earlier (crashed) attempt with the same inputs is
    reused, since files only ever appear whole.
    """
    shard = spec.shard
    out = ctx.tag_path(tagger.key, shard.shard_id)
    meta = {"tagger": tagger.name, "version": tagger.version, "config": tagger.config(),
            "shard": shard.path, "shard_id": shard.shard_id, "excluded": len(spec.excluded_rows)}
    if out.exists() and read_metadata(out) == meta:
        return TagFile(tagger.name, tagger.version, shard.shard_id, str(out), pq.ParquetFile(out).metadata.num_rows)
    batch_size = min(spec.batch_size, tagger.resources.batch_size)
    sized = ReadSpec(shard, spec.columns, batch_size, spec.excluded_rows)
    schema = tagger.schema()

    def batches():
        for b in read_documents(sized):
            out_b = tagger.tag(b)
            if out_b.num_rows != b.num_rows:
                raise RuntimeError(f"tagger {tagger.key} returned {out_b.num_rows} rows for {b.num_rows} documents")
            yield out_b

    rows = write_atomic(out, batches(), schema, meta)
    return TagFile(tagger.name, tagger.version, shard.shard_id, str(out), rows)


# -- cross-shard --------------------------------------------------------------------------


@dataclass
class DedupOutput:
    tag_files: list[TagFile]
    segments: list  # storage.catalog.Segment
    n_exact_dups: int
    n_near_dups: int


def dedup_params(cfg: GliaConfig, minhash: Tagger) -> dict[str, object]:
    nd = cfg.near_dup
    return {"minhash": minhash.key, "bands": nd.bands, "rows": nd.rows, "ngram": nd.ngram, "seed": nd.seed}


def dedup_night(ctx: RunContext, catalog_segments: list, active_shards: list[str],
                exact_files: list[TagFile], minhash_files: list[TagFile], minhash: Tagger,
                first_seen: dict[str, int] | None = None) -> DedupOutput:
    """Resolve tonight's exact and near duplicates against each other and all earlier nights."""
    params = dedup_params(ctx.config, minhash)
    for seg in catalog_segments:
        if seg.kind == "signatures" and seg.params != params:
            raise ValueError(
                f"the dedup history in {ctx.state_dir} was built with {seg.params}, but this run uses "
                f"{params}; keep [near_dup] as it was, or start a new database for new parameters"
            )
    if not exact_files:
        return DedupOutput([], [], 0, 0)
    exact = pa.concat_tables([
        pq.read_table(f.path, columns=["doc_id", "text_hash"]).append_column(
            "shard_id", pa.array([f.shard_id] * f.n_rows, pa.string())) for f in exact_files])
    mh = pa.concat_tables([pq.read_table(f.path, columns=["doc_id", "_minhash"]) for f in minhash_files])
    history = History(catalog_segments, active_shards, tmp_dir=ctx.state_dir / "tmp")
    try:
        res = resolve(Tonight.from_tables(exact, mh, ctx.run_id, first_seen), history, ctx.run_id, ctx.config.near_dup)
    finally:
        history.close()
    files: list[TagFile] = []
    for name, table, schema in ((EXACT_DUP, res.exact, EXACT_DUP_SCHEMA), (NEAR_DUP, res.near, NEAR_DUP_SCHEMA)):
        by_shard = table.group_by("shard_id").aggregate([])["shard_id"].to_pylist()
        for shard_id in sorted(by_shard):
            part = table.filter(pa.compute.equal(table["shard_id"], shard_id)).select(schema.names)
            out = ctx.tag_path(f"{name}@{DEDUP_VERSION}", shard_id)
            rows = write_atomic(out, [part], schema, {"tagger": name, "version": DEDUP_VERSION, "shard_id": shard_id,
                                                      "run_id": ctx.run_id, **params})
            files.append(TagFile(name, DEDUP_VERSION, shard_id, str(out), rows))
    segments = [write_segment(ctx.state_dir, kind, ctx.run_id, tbl, params) for kind, tbl in sorted(res.segments.items())]
    return DedupOutput(files, segments, res.n_exact_dups, res.n_near_dups)


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


def build_record(ctx: RunContext, night: NightPlan, ingests: list[IngestResult], tag_files: list[TagFile],
                 dedup: DedupOutput | None, status: str) -> RunRecord:
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
    rec.tag_files = [i.documents for i in ok.values() if i.documents is not None]
    tonight = {s.shard.shard_id for s in night.specs}
    rec.tag_files += [f for f in tag_files if f.shard_id in ok or f.shard_id not in tonight]
    skipped = [empty_skips()] + night.skipped + [i.skipped for i in ingests]
    for path, reason in rejected.items():
        shard_id = next((s.shard_id for s in rec.new_shards if s.path == path), None)
        skipped.append(pa.table({"shard_id": [shard_id], "path": [path], "row": pa.array([None], pa.int64()),
                                 "doc_id": pa.array([None], pa.string()), "reason": [reason]}))
    rec.skipped = pa.concat_tables([t.cast(empty_skips().schema) for t in skipped])
    if dedup is not None:
        rec.tag_files += dedup.tag_files
        rec.segments = dedup.segments
    rec.counts = {
        "shards_seen": len(sp.unchanged) + len(sp.to_ingest) + len(sp.rejected) + len(sp.reactivated),
        "shards_new": len(sp.new), "shards_changed": len(sp.changed), "shards_unchanged": len(sp.unchanged),
        "shards_rejected": len(rejected), "shards_missing": len(sp.missing),
        "docs": sum(i.n_docs for i in ok.values()),
        "exact_dups": dedup.n_exact_dups if dedup else 0, "near_dups": dedup.n_near_dups if dedup else 0,
        "skipped_rows": int(sum(1 for r in rec.skipped["row"].to_pylist() if r is not None)),
    }
    rec.view_sources = view_sources(cfg)
    return rec


def collect_garbage(state_dir: Path, registered: set[str]) -> int:
    """Remove index segments that no committed run lists (left by a crashed run); return count.

    Only Glia's own state is touched, never a source shard.
    """
    removed = 0
    index = state_dir / "index"
    if not index.exists():
        return 0
    for p in index.rglob("*.parquet"):
        if str(p) not in registered:
            p.unlink(missing_ok=True)
            removed += 1
    for p in index.rglob(".*.tmp"):
        p.unlink(missing_ok=True)
    return removed


def now() -> datetime:
    return datetime.now(timezone.utc)

