"""``nightly_hygiene``: the Prefect flow of one night.

prepare (in the flow) -> ``ingest`` and one ``tag`` task per shard per tagger (mapped,
cached on shard fingerprint + tagger version, retried on transient I/O errors; a tagger
that needs another's columns waits for that shard's file) -> one task per night stage
(dedup against history, novelty, surprise, decisions; ``curation.stages``) -> ``finalize``
(the single DuckDB transaction).

Tasks never touch DuckDB; only prepare (reads) and finalize (the write) do, so the tagging
tasks can run on any task runner (threads by default, Dask for a cluster).
"""

from __future__ import annotations

from flows import env

env.apply()

import hashlib  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from prefect import flow, task, unmapped  # noqa: E402
from prefect.context import TaskRunContext  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402

env.tie_embedded_server_to_process()

from curation import faults  # noqa: E402
from curation import progress  # noqa: E402
from flows import artifacts, runners  # noqa: E402
from curation.config import load_config  # noqa: E402
from curation.ingest import ReadSpec, ShardRejected  # noqa: E402
from curation.pipeline import (  # noqa: E402
    IngestResult, NightOutcome, RunContext, build_record, collect_garbage, default_state_dir, ingest_shard,
    load_stage_states, night_info, now, prepare, run_stages, stage_inputs, stages_for, tag_shard, taggers_for,
    view_sources,
)
from curation import stages as stages_mod  # noqa: E402
from storage.catalog import Catalog, TagFile  # noqa: E402
from storage.lock import RunLock  # noqa: E402
from taggers.base import Tagger  # noqa: E402

TRANSIENT = (OSError, TimeoutError, ConnectionError)


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry I/O hiccups (object stores, NFS), never bad data or bugs."""
    try:
        state.result()
    except ShardRejected:
        return False
    except TRANSIENT as exc:
        return not isinstance(exc, (FileNotFoundError, PermissionError))
    except Exception:
        return False
    return False


def _spec_key(spec: ReadSpec) -> str:
    excluded = hashlib.sha256(json.dumps(spec.excluded_rows).encode()).hexdigest()[:12]
    return f"{spec.shard.shard_id}:{excluded}:{spec.columns}"


def _ingest_key(ctx: TaskRunContext, params: dict[str, Any]) -> str | None:
    c: RunContext = params["ctx"]
    spec: ReadSpec = params["spec"]
    out = c.tag_path("documents@1", spec.shard.shard_id)
    return f"glia-ingest:{c.state_dir}:{_spec_key(spec)}" if out.exists() else None


def _tag_key(ctx: TaskRunContext, params: dict[str, Any]) -> str | None:
    c: RunContext = params["ctx"]
    spec: ReadSpec = params["spec"]
    t: Tagger = params["tagger"]
    out = c.tag_path(t.key, spec.shard.shard_id)
    cfg = json.dumps(t.config(), sort_keys=True)
    return f"glia-tag:{c.state_dir}:{t.key}:{cfg}:{_spec_key(spec)}" if out.exists() else None


@task(name="ingest", retries=2, retry_delay_seconds=2, retry_condition_fn=_transient,
      cache_key_fn=_ingest_key, persist_result=True)
def ingest_task(ctx: RunContext, spec: ReadSpec) -> IngestResult:
    res = ingest_shard(ctx, spec)
    faults.point("ingest.done")  # crash-test hooks (curation.faults): a no-op normally
    progress.advance("ingest")
    return res


@task(name="tag", retries=2, retry_delay_seconds=2, retry_condition_fn=_transient,
      cache_key_fn=_tag_key, persist_result=True, task_run_name="tag-{tagger.name}")
def tag_task(ctx: RunContext, spec: ReadSpec, tagger: Tagger, ingest: IngestResult | None = None,
             inputs: list[TagFile | None] | None = None) -> TagFile | None:
    if (ingest is not None and ingest.error is not None) or (inputs and any(i is None for i in inputs)):
        progress.advance(tagger.name)
        return None  # the shard was rejected; ingest recorded why
    try:
        res = tag_shard(ctx, spec, tagger, [i for i in inputs or [] if i is not None])
        faults.point(f"tag.done.{tagger.name}")  # between taggers: this file whole, others not
    except ShardRejected:
        res = None
    progress.advance(tagger.name)
    return res


@task(name="stage", task_run_name="stage-{stage.name}")
def stage_task(ctx: RunContext, stage: stages_mod.NightStage, state: Any,
               inputs: stages_mod.StageInputs) -> stages_mod.StageResult:
    out = stages_mod.run_stage(ctx, stage, state, inputs)
    progress.advance(stage.name)
    return out


def _run_stage(ctx: RunContext, stage: stages_mod.NightStage, state: Any,
               inputs: stages_mod.StageInputs) -> stages_mod.StageResult:
    t0 = time.monotonic()
    res = stage_task(ctx, stage, state, inputs)
    res.counts["seconds"] = round(time.monotonic() - t0, 3)
    return res


@task(name="finalize", retries=1, retry_delay_seconds=5)
def finalize_task(ctx: RunContext, record: Any) -> None:
    with Catalog.open_when_free(ctx.db_path) as cat:
        cat.commit_run(record)
        registered = {s.path for s in cat.segments()}
    faults.point("finalize.after_commit")  # committed, garbage not yet collected
    collect_garbage(ctx.state_dir, registered)
    progress.advance("finalize")


@flow(name="nightly_hygiene", task_runner=ThreadPoolTaskRunner(max_workers=2), validate_parameters=False)
def nightly_hygiene(shards_root: str, db_path: str = "glia.duckdb", rules_path: str | None = None,
                    state_dir: str | None = None) -> NightOutcome:
    """One nightly hygiene run: new and changed shards under ``shards_root`` are tagged and
    deduplicated against every earlier night, and the results land in ``db_path``."""
    t0 = time.monotonic()
    cfg = load_config(rules_path)
    db = Path(db_path).resolve()
    state = Path(state_dir).resolve() if state_dir else default_state_dir(db)
    root = shards_root if "://" in shards_root else str(Path(shards_root).resolve())
    lock = RunLock(db)
    lock.acquire()
    record = None
    ctx = None
    try:
        with Catalog(db) as cat:  # fails at once if another process holds the file
            cat.migrate(view_sources(cfg), stages_mod.ddl_for([s.name for s in stages_for(cfg)]))
            ctx = RunContext(root, db, state, cfg, cat.next_run_id(), now())
            lock.update(ctx.run_id)
            night = prepare(ctx, cat)
            registry = cat.shards()
            stages = stages_for(cfg)
            states = load_stage_states(cat.con, ctx, stages)
        sp = night.shard_plan
        gone = {old.shard_id for _, old in sp.changed} | {r.shard_id for r in sp.missing}
        gone |= {old.shard_id for _, old in sp.rejected if old is not None}
        history_active = [r.shard_id for r in registry if r.status == "active" and r.shard_id not in gone]
        history_active += [r.shard_id for r in sp.reactivated]
        seconds: dict[str, float] = {"prepare": time.monotonic() - t0}

        t1 = time.monotonic()
        taggers = taggers_for(cfg, night_info(ctx, night))
        specs = night.specs
        progress.start("ingest", len(specs))
        for t in taggers:
            progress.start(t.name, len(specs) + sum(1 for _, name in night.backfill if name == t.name))
        ingests = ingest_task.map(ctx=unmapped(ctx), spec=specs) if specs else []
        tag_futs: dict[str, list] = {}
        for t in taggers:  # dependency order: a tagger's needs are mapped before it
            inputs = [list(fs) for fs in zip(*(tag_futs[n] for n in t.needs))] if t.needs else None
            with runners.placement(t, cfg.run):  # GPU taggers on GPU workers (Dask), else a no-op
                tag_futs[t.name] = tag_task.map(
                    ctx=unmapped(ctx), spec=specs, tagger=unmapped(t), ingest=ingests,
                    **({"inputs": inputs} if inputs is not None else {})) if specs else []
        backfill = []
        by_name = {t.name: t for t in taggers}
        for spec, name in night.backfill:
            t = by_name[name]
            needed = [ctx.tag_path(by_name[n].key, spec.shard.shard_id) for n in t.needs]
            inputs = [TagFile(n, by_name[n].version, spec.shard.shard_id, str(p), 0) for n, p in zip(t.needs, needed)]
            with runners.placement(t, cfg.run):
                backfill.append(tag_task.submit(ctx, spec, t, None, inputs or None))
        ingest_results: list[IngestResult] = [f.result() for f in ingests]
        tag_files: list[TagFile] = [tf for futs in tag_futs.values() for tf in (f.result() for f in futs) if tf]
        tag_files += [tf for tf in (f.result() for f in backfill) if tf]
        seconds["tag"] = time.monotonic() - t1

        stage_results = []
        if any(i.error is None for i in ingest_results):
            for s in stages:
                progress.start(s.name, 1)
            inputs = stage_inputs(night, ingest_results, tag_files, history_active)
            stage_results = run_stages(ctx, stages, states, inputs, run_one=_run_stage)

        nothing = sp.nothing_to_do and not night.backfill
        record = build_record(ctx, night, ingest_results, tag_files, stage_results,
                              "nothing_new" if nothing else "completed", seconds)
        record.metrics.update(artifacts.summary_metrics(record))  # per source / tag / decision, same commit
        progress.start("finalize", 1)
        finalize_task(ctx, record)
        artifacts.publish_summary(db, ctx.run_id)  # the Markdown table on the flow run's page
        return NightOutcome(ctx.run_id, record.status, record.counts, _rejected(record),
                            record.skipped, time.monotonic() - t0, db, dict(record.metrics))
    except BaseException as exc:
        if ctx is not None:
            _record_failure(ctx, exc)
        raise
    finally:
        lock.release()


def _rejected(record: Any) -> dict[str, str]:
    return {s.path: s.error or "" for s in record.new_shards if s.status == "rejected"}


def _record_failure(ctx: RunContext, exc: BaseException) -> None:
    """Best effort: note the failed run in the catalog. Only the ``runs`` row is written:
    no shards, tags or segments, so none of the run's work becomes visible."""
    from storage.catalog import RunRecord

    try:
        with Catalog.open_when_free(ctx.db_path, wait_s=5) as cat:
            cat.commit_run(RunRecord(
                run_id=ctx.run_id, started_at=ctx.started_at, status="failed", shards_root=ctx.root,
                config_hash=ctx.config.hash(), code_version="", config={},
                error=f"{type(exc).__name__}: {exc}",
            ))
    except Exception:  # the original error matters more than the bookkeeping
        pass
