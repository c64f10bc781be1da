"""Where a night's per-shard work runs: threads here, or a Dask cluster; and whether
``glia run`` goes through Prefect at all.

The rules file chooses (``[run].orchestrator``, ``task_runner``, ``workers``, ``dask_address``,
``dask_gpu_resource``; see ``engine.config.RunOptions``) and the environment may override
it on a particular machine (``GLIA_ORCHESTRATOR``, ``GLIA_TASK_RUNNER``, ``GLIA_WORKERS``,
``GLIA_DASK_ADDRESS``, ``GLIA_DASK_GPU_RESOURCE``): where work runs is a property of the
host, not of the data.

Ingest and tag tasks are pure functions of (shard, tagger config) that write their own
Parquet file and never open DuckDB, so they can run in any process that sees the shards and
the state folder (on a cluster: a shared filesystem or object store at the same path).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from glia.engine.config import ConfigError, RunOptions, load_config

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.task_runners import TaskRunner

    from glia.taggers.base import Tagger

RUNNERS = ("threads", "dask")
ORCHESTRATORS = ("auto", "plain", "prefect")
ENV = {
    "orchestrator": "GLIA_ORCHESTRATOR",
    "task_runner": "GLIA_TASK_RUNNER",
    "workers": "GLIA_WORKERS",
    "dask_address": "GLIA_DASK_ADDRESS",
    "dask_gpu_resource": "GLIA_DASK_GPU_RESOURCE",
}


def options_with_env(options: RunOptions, environ: dict[str, str] | None = None) -> RunOptions:
    """``options`` with the ``GLIA_*`` execution variables of ``environ`` (default: this
    process's environment) applied on top."""
    environ = dict(os.environ) if environ is None else environ
    changes: dict[str, Any] = {}
    for key, var in ENV.items():
        if var in environ:
            value = environ[var]
            if key == "workers":
                try:
                    changes[key] = int(value)
                except ValueError:
                    raise ConfigError(f"{var}={value!r}: expected a whole number of workers") from None
            else:
                changes[key] = value
    return replace(options, **changes)


def uses_prefect(options: RunOptions, environ: dict[str, str] | None = None) -> bool:
    """Whether ``glia run`` runs the night through the Prefect flow (``flows.nightly``) rather
    than as plain Python (``engine.night``) with ``options`` (``GLIA_*`` overrides applied).

    ``orchestrator = "auto"`` uses Prefect only where it adds something: a Dask task runner
    (Prefect's DaskTaskRunner places the work), or a Prefect API named by ``PREFECT_API_URL``
    in the environment or the active Prefect profile (the run is then recorded there). Else
    the night runs without importing Prefect or starting its embedded server.
    """
    if options.orchestrator not in ORCHESTRATORS:
        raise ConfigError(f"[run].orchestrator = {options.orchestrator!r}: expected one of {', '.join(ORCHESTRATORS)}")
    if options.orchestrator == "prefect":
        return True
    if options.task_runner == "dask":
        if options.orchestrator == "plain":
            raise ConfigError('[run].orchestrator = "plain" with task_runner = "dask": the Dask runner is Prefect\'s; '
                              'set orchestrator = "auto" or "prefect", or task_runner = "threads"')
        return True
    from glia.flows.env import configured_api_url  # reads the profile file, not Prefect

    return options.orchestrator == "auto" and configured_api_url(environ) is not None


def task_runner_for(options: RunOptions) -> TaskRunner:
    """The Prefect task runner that ``options`` asks for.

    ``threads``: a ThreadPoolTaskRunner of ``workers`` threads. ``dask``: a DaskTaskRunner on
    the scheduler at ``dask_address``, or on a fresh LocalCluster of ``workers`` single-threaded
    worker processes (processes, not threads: the taggers hold the GIL in parts).
    """
    if options.task_runner not in RUNNERS:
        raise ConfigError(f"[run].task_runner = {options.task_runner!r}: expected one of {', '.join(RUNNERS)}")
    if options.workers < 1:
        raise ConfigError(f"[run].workers = {options.workers}: must be >= 1")
    if options.task_runner == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=options.workers)
    from prefect_dask import DaskTaskRunner

    if options.dask_address:
        return DaskTaskRunner(address=options.dask_address)
    return DaskTaskRunner(
        cluster_class=local_cluster,
        # Dashboard on a free port: the default 8787 may be taken by another cluster.
        cluster_kwargs={"n_workers": options.workers, "threads_per_worker": 1, "processes": True,
                        "dashboard_address": "127.0.0.1:0"},
    )


def local_cluster(**kwargs: Any) -> Any:
    """A ``distributed.LocalCluster`` whose workers report to this process's Prefect API.

    Prefect's task engine in a worker process talks to ``PREFECT_API_URL``; without it each
    worker would start an embedded Prefect server of its own (~30 s on 2 cores, and the task
    runs would be recorded there, not beside the flow run). The cluster is made when the flow
    run starts, so the API of that run, an embedded server's included, is known by then.
    """
    from distributed import LocalCluster

    env = dict(kwargs.pop("env", None) or {})
    url = current_api_url()
    if url:
        env.setdefault("PREFECT_API_URL", url)
    return LocalCluster(env=env, **kwargs)


def current_api_url() -> str | None:
    """The Prefect API this process reports to: the running flow's client, else the setting."""
    from prefect.context import FlowRunContext
    from prefect.settings import PREFECT_API_URL

    ctx = FlowRunContext.get()
    if ctx is not None and ctx.client is not None:
        return str(ctx.client.api_url).rstrip("/")
    return PREFECT_API_URL.value()


def task_runner_from(rules_path: str | None, environ: dict[str, str] | None = None) -> TaskRunner:
    """The task runner the rules file at ``rules_path`` (and the environment) choose."""
    return task_runner_for(options_with_env(load_config(rules_path).run, environ))


def configured(flow: Flow, rules_path: str | None, environ: dict[str, str] | None = None) -> Flow:
    """``flow`` with the task runner its rules file (and the environment) choose."""
    return flow.with_options(task_runner=task_runner_from(rules_path, environ))


@contextmanager
def placement(tagger: Tagger, options: RunOptions) -> Iterator[None]:
    """Submit ``tagger``'s tasks inside this block to pin them to GPU workers when asked.

    With ``task_runner = "dask"`` and ``dask_gpu_resource`` set, a tagger whose
    ``resources.gpu`` is true claims one unit of that Dask worker resource, so only workers
    started with it (``dask worker --resources GPU=1``) run it; the cheap taggers go anywhere.
    Elsewhere this does nothing. The ``GLIA_*`` environment overrides apply, as in :func:`configured`.
    """
    options = options_with_env(options)
    if options.task_runner != "dask" or not options.dask_gpu_resource or not tagger.resources.gpu:
        yield
        return
    import dask

    with dask.annotate(resources={options.dask_gpu_resource: 1}):
        yield
