"""The near-dup history's signature scheme: keeping an old database working, and ``glia reindex``.

The cross-night history (``storage.history``) stores each document's MinHash signature and
LSH band keys. They depend on the scheme: the shingles (``[stages.dedup] ngram``), the number of
permutations and the banding (``bands`` x ``rows``), the seed and the MinHash tagger's
version (together :meth:`stages.dedup.DedupStage.scheme`, recorded with every segment).
Signatures of two schemes must never be compared, so a database keeps one scheme:

- **An old database keeps working.** When the defaults change (Glia 0.x used word 5-grams,
  16 x 7 bands, threshold 0.75: :data:`LEGACY_NEAR_DUP`) and a database's history was built
  with the previous defaults while the rules file does not choose other ``[stages.dedup]``
  values, :func:`config_for_history` runs that database with the scheme it was built with,
  and logs how to move it to the new defaults. Any other disagreement between the rules file
  and the stored scheme stops the run before anything is tagged, with a message that names
  both schemes and the two ways out (keep ``[stages.dedup]`` as it was, or reindex).
- **``glia reindex``** (:func:`reindex`) moves a database to the configured scheme: it reads
  the active shards again, computes their signatures under the new scheme, and replays the
  recorded nights in order (each night's documents are those its ``exact`` segment lists,
  with the run they were first seen in), so clusters, survivors and merges are rebuilt as if
  every night had run with the new scheme. The exact-hash segments do not depend on the
  scheme and stay as they are. Everything is written beside the old state and registered in
  one catalog transaction; until it commits the database is unchanged (a crash leaves only
  unregistered files, which the next run removes). The tags that earlier nights recorded
  (``exact_dup``, ``near_dup``, decisions) stay as they were decided; nights after the
  reindex match against the rebuilt history.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from glia.curation.dedup import NearDup, Tonight, resolve
from glia.engine.config import GliaConfig
from glia.engine.ingest import ReadSpec
from glia.engine.pipeline import NightContext, NightParts, collect_garbage, default_state_dir, tag_shard, view_sources
from glia.stages.dedup import SIGNATURES, DedupStage
from glia.storage.catalog import Catalog, RunRecord, Segment, ShardRow, TableWrite, TagFile
from glia.storage.history import History, write_segments
from glia.storage.lock import RunLock
from glia.storage.shards import ShardFile
from glia.taggers import registry

log = logging.getLogger(__name__)

# The scheme every database made before the word-3-gram defaults was built with.
LEGACY_NEAR_DUP = NearDup(bands=16, rows=7, ngram=5, seed=1, threshold=0.75)
# Kinds of history segment that depend on the signature scheme (``exact`` does not).
SCHEME_KINDS = ("signatures", "lsh", "merges")


class SchemeMismatch(ValueError):
    """The rules file's ``[stages.dedup]`` scheme differs from the one the database's history was built with."""


def describe(params: dict[str, object]) -> str:
    return (f"word {params.get('ngram')}-grams, {params.get('bands')} x {params.get('rows')} bands, "
            f"seed {params.get('seed')}, {params.get('minhash')}")


def dedup_stage(cfg: GliaConfig) -> DedupStage:
    """The dedup stage as ``cfg`` configures it: its scheme, and the MinHash shape it sets."""
    return DedupStage(**cfg.stage_params_for("dedup"))


def _shape(p: NearDup) -> tuple[object, ...]:
    return p.ngram, p.bands, p.rows, p.seed, p.threshold


def stored_scheme(con: duckdb.DuckDBPyConnection) -> dict[str, object] | None:
    """The scheme (``DedupStage.scheme``) of the history's signatures, or ``None`` for a database
    without history. Raises if segments of two schemes are registered (never written by Glia)."""
    has_table = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'index_segments'").fetchone()[0]
    if not has_table:
        return None
    schemes = []
    for seg in Catalog.segments_of(con):
        if seg.kind == "signatures" and seg.params not in schemes:
            schemes.append(seg.params)
    if len(schemes) > 1:
        raise SchemeMismatch(f"the dedup history mixes signature schemes {schemes}; run `glia reindex` to rebuild it")
    return schemes[0] if schemes else None


def config_for_history(cfg: GliaConfig, con: duckdb.DuckDBPyConnection) -> tuple[GliaConfig, str | None]:
    """The configuration to run this database with, and a notice when it differs from ``cfg``.

    ``cfg`` itself when the stored history has its scheme (or there is none); ``cfg`` with
    :data:`LEGACY_NEAR_DUP` (its other ``[stages.dedup]`` values kept) when the history was built
    with the previous defaults and ``cfg`` asks for the current defaults; otherwise
    :class:`SchemeMismatch`.
    """
    stored = stored_scheme(con)
    wanted = dedup_stage(cfg)
    if stored is None or stored == wanted.scheme():
        return cfg, None
    old = LEGACY_NEAR_DUP
    legacy = cfg.with_stage_params("dedup", bands=old.bands, rows=old.rows, ngram=old.ngram, seed=old.seed,
                                   threshold=old.threshold)
    defaults = NearDup()
    if _shape(wanted.params) == _shape(defaults) and stored == dedup_stage(legacy).scheme():
        notice = (f"this database's near-dup history was built with the previous default scheme "
                  f"({describe(stored)}, threshold {old.threshold}); it keeps using it. "
                  f"Run `glia reindex --db <db>` to rebuild the history under the current defaults "
                  f"({describe(wanted.scheme())}, threshold {defaults.threshold}), which find more edited "
                  "copies (docs/quality.md, Near-duplicate quality)")
        return legacy, notice
    raise SchemeMismatch(
        f"the dedup history was built with {describe(stored)}, but [stages.dedup] asks for "
        f"{describe(wanted.scheme())}; signatures of two schemes cannot be compared. Either keep [stages.dedup] as "
        "it was for this database, or run `glia reindex --db <db> --rules <rules>` to rebuild the history under "
        "the new scheme (it reads the shards again)")


@dataclass(frozen=True)
class ReindexResult:
    run_id: int
    nights: int
    documents: int
    shards: int
    old_scheme: dict[str, object] | None
    new_scheme: dict[str, object]
    seconds: float


def reindex(db_path: Path | str, cfg: GliaConfig, state_dir: Path | str | None = None,
            workers: int | None = None) -> ReindexResult:
    """Rebuild the near-dup history of ``db_path`` under ``cfg``'s scheme (see the module docstring).

    Holds the run lock throughout, so no night runs meanwhile. Raises ``FileNotFoundError``
    when the database does not exist and ``ValueError`` when an active shard no longer holds
    the documents it was ingested with (run ``glia run`` on it first).
    """
    t0 = time.monotonic()
    db = Path(db_path).resolve()
    if not db.exists():
        raise FileNotFoundError(f"no database at {db}")
    state = Path(state_dir).resolve() if state_dir else default_state_dir(db)
    stage = dedup_stage(cfg)
    with RunLock(db) as lock, Catalog(db) as cat:
        old_params = stored_scheme(cat.con)
        run_id = cat.next_run_id()
        lock.update(run_id)
        recorded = _Recorded.read(cat)
        # New signatures for every active shard, beside the old files (those stay registered
        # until the commit). The tagger's own file name is kept inside a folder of this reindex.
        ctx = NightContext.start(str(db.parent), db, state / "reindex" / f"run-{run_id:06d}", cfg, run_id)
        tag_files = _signatures(ctx, stage, recorded, workers or cfg.run.workers)
        segments, n_docs, n_nights = _replay_nights(ctx, stage, recorded, tag_files, state)
        if not segments:
            raise ValueError(f"nothing to reindex in {db}: no active shard has documents with history")
        old_minhash = {f.path for f in cat.tag_files() if f.tagger == SIGNATURES}
        cat.commit_run(_record(ctx, tag_files, segments, n_docs, n_nights, len(recorded.active)))
        registered = {s.path for s in cat.segments()}
        still = {f.path for f in cat.tag_files()}
    collect_garbage(state, registered)
    for path in sorted(old_minhash - still):  # the old scheme's signature files, now unregistered
        if Path(path).is_relative_to(state):
            Path(path).unlink(missing_ok=True)
    return ReindexResult(run_id, n_nights, n_docs, len(recorded.active), old_params, stage.scheme(),
                         time.monotonic() - t0)


@dataclass
class _Recorded:
    """What the catalog recorded of the nights: each night's exact segment (the documents it
    processed), the active shards, and the rows an id conflict excluded from each."""

    exact_segs: list[Segment]
    exact_runs: list[int]
    active: list[ShardRow]
    excluded: dict[str, tuple[int, ...]]

    @classmethod
    def read(cls, cat: Catalog) -> _Recorded:
        exact_segs = [Segment("exact", p, n, json.loads(params) if params else {}) for p, n, params in cat.con.execute(
            "SELECT path, n_rows, params FROM index_segments WHERE kind = 'exact' ORDER BY run_id").fetchall()]
        exact_runs = [r for (r,) in cat.con.execute(
            "SELECT run_id FROM index_segments WHERE kind = 'exact' ORDER BY run_id").fetchall()]
        active = [r for r in cat.shards() if r.status == "active"]
        excluded: dict[str, tuple[int, ...]] = {}
        for shard_id, row in cat.con.execute(
                "SELECT shard_id, \"row\" FROM skipped WHERE \"row\" IS NOT NULL AND reason LIKE 'duplicate id%'"
        ).fetchall():
            excluded.setdefault(shard_id, ())
            excluded[shard_id] += (row,)
        return cls(exact_segs, exact_runs, active, excluded)


def _signatures(ctx: NightContext, stage: DedupStage, recorded: _Recorded, workers: int) -> list[TagFile]:
    """Every active shard's MinHash signatures under the new scheme (the shape the stage sets)."""
    cfg = ctx.config
    shape = {**cfg.params_for(SIGNATURES), **stage.tagger_params()[SIGNATURES]}
    minhash = registry.build([SIGNATURES], {SIGNATURES: shape})[0]
    specs = [ReadSpec(ShardFile(r.path, r.size, r.mtime_ns, r.footer_hash), cfg.columns, cfg.run.batch_size,
                      tuple(sorted(recorded.excluded.get(r.shard_id, ()))), cfg.run.max_doc_bytes, cfg.run.storage_options)
             for r in recorded.active]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda s: tag_shard(ctx, s, minhash), specs))


def _replay_nights(ctx: NightContext, stage: DedupStage, recorded: _Recorded, tag_files: list[TagFile],
                   state: Path) -> tuple[list[tuple[int, Segment]], int, int]:
    """Resolve the recorded nights again, in order, against the history rebuilt so far; each
    night's documents are those its exact segment lists. Returns the new scheme's segments
    (with their runs), the documents and the nights replayed."""
    # All active signatures in memory at once (num_perm x 4 bytes a document: 0.5 GB per
    # million at 128), looked up per night by doc_id.
    sigs = pa.concat_tables([pq.read_table(f.path, columns=["doc_id", "_minhash"]) for f in tag_files]) \
        if tag_files else None
    active_ids = [r.shard_id for r in recorded.active]
    new_segments: list[tuple[int, Segment]] = []
    n_docs = n_nights = 0
    for k, (seg, night_run) in enumerate(zip(recorded.exact_segs, recorded.exact_runs, strict=True)):
        ex = pq.read_table(seg.path, columns=["doc_id", "shard_id", "text_hash", "run_id"])
        ex = ex.filter(pc.is_in(ex["shard_id"], value_set=pa.array(active_ids, pa.string())))
        if ex.num_rows == 0 or sigs is None:
            continue
        mh = _night_signatures(ex, sigs, night_run)
        first_seen = dict(zip(ex["doc_id"].to_pylist(), ex["run_id"].to_pylist()))
        built = [s for _, s in new_segments]
        # The exact hashes of earlier runs as recorded, the new scheme's segments built so far.
        history = History(recorded.exact_segs[:k] + built, active_ids, tmp_dir=ctx.state_dir / "tmp")
        try:
            res = resolve(Tonight.from_tables(ex.select(["doc_id", "text_hash", "shard_id"]), mh, night_run,
                                              first_seen), history, night_run, stage.params)
        finally:
            history.close()
        tables = {kind: t for kind, t in res.segments.items() if kind in SCHEME_KINDS}
        written = write_segments(state / "index" / "reindex" / f"run-{ctx.run_id:06d}", night_run, tables,
                                 stage.scheme())
        new_segments += [(night_run, s) for s in written]
        n_docs += ex.num_rows
        n_nights += 1
    return new_segments, n_docs, n_nights


def _night_signatures(ex: pa.Table, sigs: pa.Table, night_run: int) -> pa.Table:
    """The new signatures of one night's documents, or a ValueError naming one that is gone."""
    idx = pc.index_in(ex["doc_id"], value_set=sigs["doc_id"])
    if idx.null_count:
        missing = ex.filter(pc.is_null(idx))
        raise ValueError(
            f"{missing.num_rows} documents of run {night_run} (e.g. {missing['doc_id'][0]} in shard "
            f"{missing['shard_id'][0]}) are no longer in their shard; run `glia run` on the shards first, "
            "then reindex")
    return pa.table({"doc_id": ex["doc_id"], "_minhash": pc.take(sigs["_minhash"], idx)})


def _record(ctx: NightContext, tag_files: list[TagFile], segments: list[tuple[int, Segment]], n_docs: int,
            n_nights: int, n_shards: int) -> RunRecord:
    """The reindex's run: one transaction in which the new scheme's segments replace every old
    one of those kinds (a write keyed by kind deletes the rows of each kind it brings, then
    inserts its rows), the new signature files replace the old ones and the views are rebuilt."""
    cfg = ctx.config
    seg_rows = pa.table({
        "kind": [s.kind for _, s in segments],
        "run_id": pa.array([r for r, _ in segments], pa.int32()),
        "path": [s.path for _, s in segments],
        "n_rows": pa.array([s.n_rows for _, s in segments], pa.int64()),
        "params": [json.dumps(s.params) for _, s in segments]})
    return RunRecord(
        run_id=ctx.run_id, started_at=ctx.started_at, status="reindex", shards_root=ctx.root,
        config_hash=cfg.hash(), code_version="", config=cfg.to_dict(), tag_files=tag_files,
        view_sources=view_sources(NightParts.build(cfg)), counts={"docs": n_docs},
        writes=[TableWrite("index_segments", seg_rows, ("kind",))],
        metrics={"reindex.documents": n_docs, "reindex.nights": n_nights, "reindex.shards": n_shards},
    )
