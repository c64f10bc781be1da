"""``nightly_hygiene``: the Prefect flow of one night, a wrapper around the plain-Python night
(:func:`engine.night.run_night`).

The night's steps run as Prefect tasks: ``ingest`` and one ``tag`` task per shard per tagger
(cached on shard fingerprint + tagger version + config, retried on transient I/O errors,
submitted to the flow's task runner: threads by default, Dask for a cluster; a tagger that
needs another's columns waits for that shard's file), one ``stage`` task per night stage and
``finalize`` (the single DuckDB transaction). The night's summary is attached to the flow run
as a Markdown artifact. Everything else (what runs, in which order, crash safety) is the
engine's, so this flow and ``glia run`` without Prefect give the same catalog.
"""

from __future__ import annotations

from glia.flows import env

env.apply()

import hashlib  # noqa: E402
import json  # noqa: E402
from collections.abc import Callable  # noqa: E402
from contextlib import nullcontext  # noqa: E402
from typing import Any  # noqa: E402

from prefect import Task, flow, task  # noqa: E402
from prefect.context import TaskRunContext  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402

env.tie_embedded_server_to_process()

from glia.engine import night as engine  # noqa: E402
from glia.stages import base as stages_mod  # noqa: E402
from glia.engine.config import GliaConfig, load_config  # noqa: E402
from glia.engine.ingest import ReadSpec  # noqa: E402
from glia.engine.pipeline import IngestResult, NightContext, NightOutcome  # noqa: E402
from glia.flows import artifacts, runners  # noqa: E402
from glia.storage.catalog import RunRecord, TagFile  # noqa: E402
from glia.taggers.base import Tagger  # noqa: E402


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry I/O hiccups (object stores, NFS), never bad data or bugs (:func:`engine.night.is_transient`)."""
    try:
        state.result()
    except Exception as exc:
        return engine.is_transient(exc)
    return False


def _spec_key(spec: ReadSpec) -> str:
    excluded = hashlib.sha256(json.dumps(spec.excluded_rows).encode()).hexdigest()[:12]
    return f"{spec.shard.shard_id}:{excluded}:{spec.columns}"


def _ingest_key(ctx: TaskRunContext, params: dict[str, Any]) -> str | None:
    c: NightContext = params["ctx"]
    spec: ReadSpec = params["spec"]
    out = c.tag_path("documents@1", spec.shard.shard_id)
    return f"glia-ingest:{c.state_dir}:{_spec_key(spec)}" if out.exists() else None


def _tag_key(ctx: TaskRunContext, params: dict[str, Any]) -> str | None:
    c: NightContext = params["ctx"]
    spec: ReadSpec = params["spec"]
    t: Tagger = params["tagger"]
    out = c.tag_path(t.key, spec.shard.shard_id)
    cfg = json.dumps(t.config(), sort_keys=True)
    return f"glia-tag:{c.state_dir}:{t.key}:{cfg}:{_spec_key(spec)}" if out.exists() else None


@task(name="ingest", retries=engine.RETRIES, retry_delay_seconds=engine.RETRY_DELAY_S, retry_condition_fn=_transient,
      cache_key_fn=_ingest_key, persist_result=True)
def ingest_task(ctx: NightContext, spec: ReadSpec) -> IngestResult:
    return engine.ingest_step(ctx, spec)


@task(name="tag", retries=engine.RETRIES, retry_delay_seconds=engine.RETRY_DELAY_S, retry_condition_fn=_transient,
      cache_key_fn=_tag_key, persist_result=True, task_run_name="tag-{tagger.name}")
def tag_task(ctx: NightContext, spec: ReadSpec, tagger: Tagger, ingest: IngestResult | None = None,
             inputs: list[TagFile | None] | None = None) -> TagFile | None:
    return engine.tag_step(ctx, spec, tagger, ingest, inputs)


def _tag_group_key(ctx: TaskRunContext, params: dict[str, Any]) -> str | None:
    c: NightContext = params["ctx"]
    spec: ReadSpec = params["spec"]
    taggers: tuple[Tagger, ...] = params["taggers"]
    if not all(c.tag_path(t.key, spec.shard.shard_id).exists() for t in taggers):
        return None
    cfgs = ";".join(f"{t.key}:{json.dumps(t.config(), sort_keys=True)}" for t in taggers)
    return f"glia-tags:{c.state_dir}:{cfgs}:{_spec_key(spec)}"


@task(name="tag-group", retries=engine.RETRIES, retry_delay_seconds=engine.RETRY_DELAY_S,
      retry_condition_fn=_transient, cache_key_fn=_tag_group_key, persist_result=True)
def tag_group_task(ctx: NightContext, spec: ReadSpec, taggers: tuple[Tagger, ...],
                   ingest: IngestResult | None = None) -> list[TagFile | None]:
    return engine.tag_group_step(ctx, spec, taggers, ingest)


@task(name="stage", task_run_name="stage-{stage.name}")
def stage_task(ctx: NightContext, stage: stages_mod.NightStage, state: Any,
               inputs: stages_mod.StageInputs) -> stages_mod.StageResult:
    return engine.stage_step(ctx, stage, state, inputs)


@task(name="finalize", retries=1, retry_delay_seconds=5)
def finalize_task(ctx: NightContext, record: RunRecord) -> None:
    engine.finalize_step(ctx, record)


TASKS: dict[Callable[..., Any], Task] = {
    engine.ingest_step: ingest_task, engine.tag_step: tag_task, engine.tag_group_step: tag_group_task,
    engine.stage_step: stage_task, engine.finalize_step: finalize_task,
}


class PrefectExecutor:
    """The engine's steps as this flow's tasks (:class:`engine.night.Executor`): ``submit``
    goes to the flow's task runner (a GPU tagger's tag tasks claim the Dask GPU resource when
    configured: :func:`flows.runners.placement`); ``call`` runs the task in the flow."""

    def submit(self, step: Callable[..., Any], /, *args: Any) -> Any:
        where = runners.placement(args[2], args[0].config.run) if step is engine.tag_step else nullcontext()
        with where:
            return TASKS[step].submit(*args)

    def call(self, step: Callable[..., Any], /, *args: Any) -> Any:
        return TASKS[step](*args)


@flow(name="nightly_hygiene", task_runner=ThreadPoolTaskRunner(max_workers=2), validate_parameters=False)
def nightly_hygiene(shards_root: str, db_path: str = "glia.duckdb", rules_path: str | None = None,
                    state_dir: str | None = None, config: GliaConfig | None = None) -> NightOutcome:
    """One nightly hygiene run: new and changed shards under ``shards_root`` are tagged and
    deduplicated against every earlier night, and the results land in ``db_path``.

    ``config`` is the rules file already loaded (``glia run`` passes it, so the file is read
    once); a scheduled run reads ``rules_path`` (``None``: the defaults)."""
    cfg = config if config is not None else load_config(rules_path)
    outcome = engine.run_night(shards_root, db_path, cfg, state_dir, PrefectExecutor())
    artifacts.publish_summary(outcome.db_path, outcome.run_id)  # the Markdown table on the flow run's page
    return outcome


def nightly_for(rules_path: str | None, environ: dict[str, str] | None = None) -> Any:
    """``nightly_hygiene`` as the rules file at ``rules_path`` (and the environment) configure it."""
    return runners.configured(nightly_hygiene, rules_path, environ)
