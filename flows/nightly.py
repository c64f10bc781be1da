"""``nightly_hygiene``: the Prefect flow of one night.

prepare (in the flow) -> ``ingest`` and one ``tag`` task per shard per tagger (mapped,
cached on shard fingerprint + tagger version, retried on transient I/O errors) -> ``dedup``
(tonight against history) -> ``finalize`` (the single DuckDB transaction).

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

from curation import progress  # noqa: E402
from curation.config import load_config  # noqa: E402
from curation.ingest import ReadSpec, ShardRejected  # noqa: E402
from curation.pipeline import (  # noqa: E402
    DedupOutput, IngestResult, NightOutcome, RunContext, build_record, collect_garbage, dedup_night,
    default_state_dir, ingest_shard, now, prepare, tag_shard, taggers_for, view_sources,
)
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
    progress.advance("ingest")
    return res


@task(name="tag", retries=2, retry_delay_seconds=2, retry_condition_fn=_transient,
      cache_key_fn=_tag_key, persist_result=True, task_run_name="tag-{tagger.name}")
def tag_task(ctx: RunContext, spec: ReadSpec, tagger: Tagger, ingest: IngestResult | None = None) -> TagFile | None:
    if ingest is not None and ingest.error is not None:
        progress.advance(tagger.name)
        return None  # the shard was rejected; ingest recorded why
    try:
        res = tag_shard(ctx, spec, tagger)
    except ShardRejected:
        res = None
    progress.advance(tagger.name)
    return res


@task(name="dedup")
def dedup_task(ctx: RunContext, segments: list, active: list[str], exact: list[TagFile],
               minhash: list[TagFile], tagger: Tagger, first_seen: dict[str, int]) -> DedupOutput:
    out = dedup_night(ctx, segments, active, exact, minhash, tagger, first_seen)
    progress.advance("dedup")
    return out


@task(name="finalize", retries=1, retry_delay_seconds=5)
def finalize_task(ctx: RunContext, record: Any) -> None:
    with Catalog.open_when_free(ctx.db_path) as cat:
        cat.commit_run(record)
        registered = {s.path for s in cat.segments()}
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
            cat.migrate(view_sources(cfg))
            ctx = RunContext(root, db, state, cfg, cat.next_run_id(), now())
            lock.update(ctx.run_id)
            night = prepare(ctx, cat)
            segments = cat.segments()
            registry = cat.shards()
        sp = night.shard_plan
        gone = {old.shard_id for _, old in sp.changed} | {r.shard_id for r in sp.missing}
        gone |= {old.shard_id for _, old in sp.rejected if old is not None}
        history_active = [r.shard_id for r in registry if r.status == "active" and r.shard_id not in gone]
        history_active += [r.shard_id for r in sp.reactivated]

        taggers = taggers_for(cfg)
        specs = night.specs
        progress.start("ingest", len(specs))
        for t in taggers:
            progress.start(t.name, len(specs) + sum(1 for _, name in night.backfill if name == t.name))
        ingests = ingest_task.map(ctx=unmapped(ctx), spec=specs) if specs else []
        tag_futs: dict[str, list] = {}
        for t in taggers:
            tag_futs[t.name] = tag_task.map(ctx=unmapped(ctx), spec=specs, tagger=unmapped(t), ingest=ingests) if specs else []
        backfill = [tag_task.submit(ctx, spec, next(t for t in taggers if t.name == name)) for spec, name in night.backfill]
        ingest_results: list[IngestResult] = [f.result() for f in ingests]
        tag_files: list[TagFile] = [tf for futs in tag_futs.values() for tf in (f.result() for f in futs) if tf]
        tag_files += [tf for tf in (f.result() for f in backfill) if tf]

        dedup = None
        names = {t.name for t in taggers}
        ok = {i.shard_id for i in ingest_results if i.error is None}
        if {"exact", "minhash"} <= names and ok:
            progress.start("dedup", 1)
            minhash = next(t for t in taggers if t.name == "minhash")
            exact_files = [f for f in tag_files if f.tagger == "exact" and f.shard_id in ok]
            minhash_files = [f for f in tag_files if f.tagger == "minhash" and f.shard_id in ok]
            dedup = dedup_task(ctx, segments, history_active, exact_files, minhash_files, minhash, night.first_seen)

        nothing = sp.nothing_to_do and not night.backfill
        record = build_record(ctx, night, ingest_results, tag_files, dedup, "nothing_new" if nothing else "completed")
        progress.start("finalize", 1)
        finalize_task(ctx, record)
        return NightOutcome(ctx.run_id, record.status, record.counts, _rejected(record),
                            record.skipped, time.monotonic() - t0, db)
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
