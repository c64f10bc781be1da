"""Glia's night path without Prefect, for the benchmarks: the stage functions the nightly
flow's tasks call (prepare, ingest and tag per shard, the night stages, the one commit), with
the per-shard work on a thread pool like the flow's ThreadPoolTaskRunner."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from stages import base as stages_mod
from engine.config import GliaConfig
from engine.pipeline import (
    RunContext, build_record, collect_garbage, default_state_dir, ingest_shard, load_stage_states, night_info,
    now, prepare, run_stages, stage_inputs, stages_for, tag_shard, taggers_for, view_sources,
)
from storage.catalog import Catalog


def glia_night(shards_root: Path | str, db: Path, cfg: GliaConfig, workers: int = 2,
               checkpoint: Callable[[str], None] | None = None) -> tuple[float, dict]:
    """One night; returns (seconds, the run's counts). ``checkpoint(step)`` is called after
    each of ``prepare``, ``ingest+tag``, ``stages`` and ``commit`` (e.g. to read peak memory)."""
    mark = checkpoint or (lambda step: None)
    t0 = time.perf_counter()
    state = default_state_dir(db)
    stages = stages_for(cfg)
    with Catalog(db) as cat:
        cat.migrate(view_sources(cfg), stages_mod.migrations_for([s.name for s in stages]))
        ctx = RunContext(str(shards_root), db, state, cfg, cat.next_run_id(), now())
        night = prepare(ctx, cat)
        active = [r.shard_id for r in cat.shards() if r.status == "active"]
        states = load_stage_states(cat.con, ctx, stages)
    mark("prepare")
    taggers = taggers_for(cfg, night_info(ctx, night))
    with ThreadPoolExecutor(workers) as pool:
        ingests = list(pool.map(lambda s: ingest_shard(ctx, s), night.specs))
        tag_files = list(pool.map(lambda st: tag_shard(ctx, *st), [(s, t) for s in night.specs for t in taggers]))
    mark("ingest+tag")
    results = run_stages(ctx, stages, states, stage_inputs(night.first_seen, ingests, tag_files, active))
    mark("stages")
    record = build_record(ctx, night, ingests, tag_files, results, "completed")
    with Catalog(db) as cat:
        cat.commit_run(record)
        collect_garbage(state, {s.path for s in cat.segments()})
    mark("commit")
    return time.perf_counter() - t0, record.counts
