"""One night, assembled in plain Python: prepare -> ingest + tag per shard -> night stages ->
finalize (the one DuckDB transaction).

:func:`run_night` is the whole night. Where its per-shard steps run is the caller's choice,
given as an :class:`Executor`: :class:`ThreadExecutor` (threads of this process; what
``glia run`` uses by default) or the Prefect flow's (``flows.nightly``: the same steps as
Prefect tasks, with result caching, a task runner such as Dask, and runs visible on a
Prefect server). Prefect only wraps the night, as datatrove keeps its steps apart from its
executors, so a night needs no Prefect import and no Prefect server unless asked for.

The steps (:func:`ingest_step`, :func:`tag_step`, :func:`tag_group_step`, :func:`stage_step`, :func:`finalize_step`)
are module-level functions of picklable arguments, so any executor can run them anywhere
that sees the shards and the state folder; only prepare (reads) and finalize (the write)
open DuckDB, both in this process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from glia.core import faults
from glia.core import progress
from glia.core.hugepages import huge_pages
from glia.stages import base as stages_mod
from glia.stages import registry as stage_registry
from glia.engine.config import GliaConfig
from glia.engine.ingest import ReadSpec, ShardRejected
from glia.engine.reindex import config_for_history
from glia.storage.shards import ShardPlan, is_storage_error
from glia.engine.pipeline import (
    IngestResult, NightContext, NightOutcome, NightParts, NightPlan, RunContext, build_record, collect_garbage,
    default_state_dir, ingest_shard, load_stage_states, night_info, prepare, run_stages, stage_inputs, tag_groups,
    tag_shard, tag_shard_many,
    view_sources,
)
from glia.storage.catalog import Catalog, RunRecord, ShardRow, TagFile
from glia.storage.lock import RunLock
from glia.taggers.base import Tagger

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
log = logging.getLogger(__name__)

# I/O errors worth another try (object stores, NFS); a missing or forbidden file is not.
TRANSIENT = (OSError, TimeoutError, ConnectionError)
RETRIES = 2
RETRY_DELAY_S = 2.0


class Pending(Protocol[T_co]):
    """A submitted step's outcome: ``result()`` waits for it and raises what the step raised."""

    def result(self) -> T_co: ...


class Executor(Protocol):
    """Where a night's steps run.

    ``submit`` may run ``step`` later and elsewhere; an argument that is a :class:`Pending`
    (or a list of them) from an earlier ``submit`` is replaced by its result before the step
    runs, so a step waits for what it reads. ``call`` runs ``step`` now and in this process
    (the night stages and the commit, which read tonight as a whole or write the catalog).
    """

    def submit(self, step: Callable[..., T], /, *args: Any) -> Pending[T]: ...

    def call(self, step: Callable[..., T], /, *args: Any) -> T: ...


def is_transient(exc: BaseException) -> bool:
    """Whether a step that raised ``exc`` is worth retrying: I/O hiccups, never bad data or bugs."""
    if isinstance(exc, ShardRejected):
        return False
    if is_storage_error(exc):  # an object store's client errors (botocore, aiohttp) are not OSErrors
        return True
    return isinstance(exc, TRANSIENT) and not isinstance(exc, (FileNotFoundError, PermissionError))


class ThreadExecutor:
    """Steps on a pool of ``workers`` threads in this process, each retried ``retries`` times
    (``retry_delay_s`` apart) on a transient I/O error, as the flow's tasks are.

    Steps are started in the order they were submitted, and the night submits a step after
    every step it waits for, so a worker that waits for an earlier step never waits for one
    that has not started. Use as a context manager: leaving it waits for running steps and
    drops those not started.
    """

    def __init__(self, workers: int = 2, retries: int = RETRIES, retry_delay_s: float = RETRY_DELAY_S) -> None:
        if workers < 1:
            raise ValueError(f"workers = {workers}: must be >= 1 ([run].workers or GLIA_WORKERS)")
        self.retries = retries
        self.retry_delay_s = retry_delay_s
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="glia-night")

    def submit(self, step: Callable[..., T], /, *args: Any) -> Future[T]:
        return self._pool.submit(self._run, step, args)

    def call(self, step: Callable[..., T], /, *args: Any) -> T:
        return step(*args)

    def _run(self, step: Callable[..., T], args: tuple[Any, ...]) -> T:
        resolved = [_resolve(a) for a in args]
        for attempt in range(self.retries + 1):
            try:
                return step(*resolved)
            except Exception as exc:
                if attempt == self.retries or not is_transient(exc):
                    raise
                log.warning("glia: %s failed (%s: %s); retrying in %.0f s", step.__name__, type(exc).__name__,
                            exc, self.retry_delay_s)
                time.sleep(self.retry_delay_s)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ThreadExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _resolve(arg: Any) -> Any:
    if isinstance(arg, Future):
        return arg.result()
    if isinstance(arg, list):
        return [_resolve(a) for a in arg]
    return arg


# -- the steps ----------------------------------------------------------------------------


def ingest_step(ctx: NightContext, spec: ReadSpec) -> IngestResult:
    """Write one shard's ``documents`` index (:func:`engine.pipeline.ingest_shard`)."""
    res = ingest_shard(ctx, spec)
    faults.point("ingest.done")  # crash-test hooks (core.faults): a no-op normally
    progress.advance("ingest")
    return res


def tag_step(ctx: RunContext, spec: ReadSpec, tagger: Tagger, ingest: IngestResult | None = None,
             inputs: list[TagFile | None] | None = None) -> TagFile | None:
    """Run one tagger over one shard (:func:`engine.pipeline.tag_shard`); ``None`` when the
    shard was rejected (by its ingest, or a needed tagger's step found nothing to tag)."""
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


def tag_group_step(ctx: RunContext, spec: ReadSpec, taggers: tuple[Tagger, ...],
                   ingest: IngestResult | None = None) -> list[TagFile | None]:
    """Run taggers that share one read of a shard (:func:`engine.pipeline.tag_shard_many`), a
    file each; ``None`` for each when the shard was rejected."""
    files: list[TagFile | None] = [None] * len(taggers)
    if ingest is None or ingest.error is None:
        try:
            files = list(tag_shard_many(ctx, spec, taggers))
            for t in taggers:
                faults.point(f"tag.done.{t.name}")  # every file of the group whole
        except ShardRejected:
            pass
    for t in taggers:
        progress.advance(t.name)
    return files


def stage_step(ctx: RunContext, stage: stages_mod.NightStage, state: Any,
               inputs: stages_mod.StageInputs) -> stages_mod.StageResult:
    """Run one night stage over tonight (:func:`stages.base.run_stage`)."""
    out = stages_mod.run_stage(ctx, stage, state, inputs)
    progress.advance(stage.name)
    return out


def finalize_step(ctx: RunContext, record: RunRecord) -> None:
    """Commit the night (one transaction), then remove what no committed run lists."""
    with Catalog.open_when_free(ctx.db_path) as cat:
        cat.commit_run(record)
        registered = {s.path for s in cat.segments()}
    faults.point("finalize.after_commit")  # committed, garbage not yet collected
    collect_garbage(ctx.state_dir, registered)
    progress.advance("finalize")


# -- the night ----------------------------------------------------------------------------


def run_night(shards_root: str | Path, db_path: str | Path, cfg: GliaConfig, state_dir: str | Path | None = None,
              executor: Executor | None = None) -> NightOutcome:
    """One nightly hygiene run: new and changed shards under ``shards_root`` are tagged and
    deduplicated against every earlier night, and the results land in ``db_path`` in one
    transaction.

    ``executor`` runs the steps (default: a :class:`ThreadExecutor` of ``cfg.run.workers``
    threads). A crash anywhere before the commit leaves the catalog as it was, the failure
    is noted in ``runs``, and a rerun reuses every complete attribute file. Raises
    ``RunInProgressError`` if another run holds the database.
    """
    if executor is None:
        with ThreadExecutor(cfg.run.workers) as own:
            return run_night(shards_root, db_path, cfg, state_dir, own)
    with huge_pages(cfg.run.huge_pages):
        return _run_night(shards_root, db_path, cfg, state_dir, executor)


def _run_night(shards_root: str | Path, db_path: str | Path, cfg: GliaConfig, state_dir: str | Path | None,
               executor: Executor) -> NightOutcome:
    t0 = time.monotonic()
    db = Path(db_path).resolve()
    state = Path(state_dir).resolve() if state_dir else default_state_dir(db)
    root = str(shards_root) if "://" in str(shards_root) else str(Path(shards_root).resolve())
    lock = RunLock(db)
    lock.acquire()
    ctx = None
    try:
        with Catalog(db) as cat:  # fails at once if another process holds the file
            ctx, parts = _begin(cat, cfg, root, db, state)
            lock.update(ctx.run_id)
            tonight = _plan(cat, ctx, parts, t0)
        ingests, tag_files = _tag(executor, tonight)
        stage_results = _run_stages(executor, tonight, ingests, tag_files)
        record = _record(tonight, ingests, tag_files, stage_results)
        progress.start("finalize", 1)
        executor.call(finalize_step, ctx, record)
        rejected = {s.path: s.error or "" for s in record.new_shards if s.status == "rejected"}
        return NightOutcome(ctx.run_id, record.status, record.counts, rejected, record.skipped,
                            time.monotonic() - t0, db, dict(record.metrics))
    except BaseException as exc:
        if ctx is not None:
            record_failure(ctx, exc)
        raise
    finally:
        lock.release()


@dataclass
class _Tonight:
    """What the night's steps after prepare work from (read while the catalog is open)."""

    ctx: NightContext
    parts: NightParts
    plan: NightPlan
    history_active: list[str]  # shards whose earlier documents count as history tonight
    states: dict[str, Any]  # each stage's catalog state (NightStage.load)
    seconds: dict[str, float]  # step timings, recorded as seconds.<step>


def _begin(cat: Catalog, cfg: GliaConfig, root: str, db: Path, state: Path) -> tuple[NightContext, NightParts]:
    """The night's configuration (a history built with the previous default near-dup scheme
    keeps its scheme), its taggers and stages (built once), the catalog migrated for them, and
    the run's context."""
    cfg, notice = config_for_history(cfg, cat.con)
    if notice:
        log.warning("glia: %s", notice)
    parts = NightParts.build(cfg)
    cat.migrate(view_sources(parts), stage_registry.migrations_for([s.name for s in parts.stages]))
    return NightContext.start(root, db, state, cfg, cat.next_run_id()), parts


def _plan(cat: Catalog, ctx: NightContext, parts: NightParts, t0: float) -> _Tonight:
    """Prepare tonight (:func:`engine.pipeline.prepare`) and read what the stages keep."""
    night = prepare(ctx, cat, parts.taggers)
    history_active = _history_active(cat.shards(), night.shard_plan)
    states = load_stage_states(cat.con, ctx, parts.stages)
    return _Tonight(ctx, parts, night, history_active, states, {"prepare": time.monotonic() - t0})


def _history_active(registry: list[ShardRow], sp: ShardPlan) -> list[str]:
    """Active shards not replaced, missing or rejected tonight, and shards that came back."""
    gone = {old.shard_id for _, old in sp.changed} | {r.shard_id for r in sp.missing}
    gone |= {old.shard_id for _, old in sp.rejected if old is not None}
    history_active = [r.shard_id for r in registry if r.status == "active" and r.shard_id not in gone]
    return history_active + [r.shard_id for r in sp.reactivated]


def _tag(executor: Executor, tonight: _Tonight) -> tuple[list[IngestResult], list[TagFile]]:
    """Ingest and tag tonight's shards, and tag old shards that lack a tagger added or bumped
    since. Steps are submitted after every step they wait for (see :class:`ThreadExecutor`)."""
    t1 = time.monotonic()
    ctx, night = tonight.ctx, tonight.plan
    taggers = tonight.parts.for_night(night_info(ctx, night))
    specs = night.specs
    progress.start("ingest", len(specs))
    for t in taggers:
        progress.start(t.name, len(specs) + sum(1 for _, name in night.backfill if name == t.name))
    ingests = [executor.submit(ingest_step, ctx, spec) for spec in specs]
    tagged: dict[str, list[Pending[TagFile | None]]] = {}
    shared: list[Pending[list[TagFile | None]]] = []
    for group in tag_groups(taggers, ctx.config.run.batch_size):  # a tagger's needs come before it
        if len(group) > 1:  # one read of each shard for the whole group
            shared += [executor.submit(tag_group_step, ctx, spec, group, ing) for spec, ing in zip(specs, ingests)]
            continue
        t = group[0]
        tagged[t.name] = []
        for i, (spec, ing) in enumerate(zip(specs, ingests)):
            needed = [tagged[n][i] for n in t.needs] or None  # this shard's files of those taggers
            tagged[t.name].append(executor.submit(tag_step, ctx, spec, t, ing, needed))
    backfill = []
    by_name = {t.name: t for t in taggers}
    for spec, name in night.backfill:  # old shards that lack a tagger added or bumped since
        t = by_name[name]
        needed = [ctx.tag_path(by_name[n].key, spec.shard.shard_id) for n in t.needs]
        inputs = [TagFile(n, by_name[n].version, spec.shard.shard_id, str(p), 0) for n, p in zip(t.needs, needed)]
        backfill.append(executor.submit(tag_step, ctx, spec, t, None, inputs or None))
    ingest_results: list[IngestResult] = [f.result() for f in ingests]
    tag_files: list[TagFile] = [tf for futs in tagged.values() for tf in (f.result() for f in futs) if tf]
    tag_files += [tf for f in shared for tf in f.result() if tf]
    tag_files += [tf for tf in (f.result() for f in backfill) if tf]
    tonight.seconds["tag"] = time.monotonic() - t1
    return ingest_results, tag_files


def _run_stages(executor: Executor, tonight: _Tonight, ingests: list[IngestResult],
                tag_files: list[TagFile]) -> list[stages_mod.StageResult]:
    """Run the night stages over tonight (none when every shard was rejected), each timed."""
    if not any(i.error is None for i in ingests):
        return []

    def run_one(c: RunContext, stage: stages_mod.NightStage, st: Any,
                inp: stages_mod.StageInputs) -> stages_mod.StageResult:
        t2 = time.monotonic()
        res = executor.call(stage_step, c, stage, st, inp)
        res.counts["seconds"] = round(time.monotonic() - t2, 3)
        return res

    for s in tonight.parts.stages:
        progress.start(s.name, 1)
    inputs = stage_inputs(tonight.plan.first_seen, ingests, tag_files, tonight.history_active)
    return run_stages(tonight.ctx, tonight.parts.stages, tonight.states, inputs, run_one=run_one)


def _record(tonight: _Tonight, ingests: list[IngestResult], tag_files: list[TagFile],
            stage_results: list[stages_mod.StageResult]) -> RunRecord:
    """The run's record for the commit, with tonight's summary metrics in it."""
    night = tonight.plan
    nothing = night.shard_plan.nothing_to_do and not night.backfill
    record = build_record(tonight.ctx, tonight.parts, night, ingests, tag_files, stage_results,
                          "nothing_new" if nothing else "completed", tonight.seconds)
    record.metrics.update(summary_metrics(record))  # per source / tag / decision, same commit
    return record


def summary_metrics(record: RunRecord) -> dict[str, float]:
    """:func:`curation.summary.tonight_metrics` for the run about to be committed; on failure
    a warning and no summary rows, so bookkeeping never fails a night."""
    from glia.curation.summary import tonight_metrics

    try:
        return tonight_metrics(record)
    except Exception as exc:
        log.warning("glia: could not compute the summary of run %s: %s", record.run_id, exc)
        return {}


def record_failure(ctx: NightContext, exc: BaseException) -> None:
    """Best effort: note the failed run in the catalog. Only the ``runs`` row is written:
    no shards, tags or segments, so none of the run's work becomes visible."""
    try:
        with Catalog.open_when_free(ctx.db_path, wait_s=5) as cat:
            cat.commit_run(RunRecord(
                run_id=ctx.run_id, started_at=ctx.started_at, status="failed", shards_root=ctx.root,
                config_hash=ctx.config.hash(), code_version="", config={},
                error=f"{type(exc).__name__}: {exc}",
            ))
    except Exception:  # the original error matters more than the bookkeeping
        pass
