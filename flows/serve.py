"""Scheduled nightly runs: ``glia serve`` (one machine) and ``glia deploy`` (a Prefect server).

Both register the deployment ``nightly_hygiene/glia-nightly``: a cron schedule (default 03:00
in ``GLIA_TIMEZONE`` or UTC; the timezone is stored with the schedule on the server), the
run's parameters (shard root, database, rules file, state folder) and a concurrency limit of
one run, with later runs queued (``ENQUEUE``), so two nights never overlap. (The database's
run lock would refuse an overlapping night anyway; the limit keeps it from being started.)

- :func:`serve` runs the flow in this process's machine (``flow.serve``): nothing but a Prefect
  API is needed (``PREFECT_API_URL``; without one, an embedded server that lives as long as
  the process).
- :func:`deploy` is ``prefect deploy`` over the project's ``prefect.yaml`` for a process work
  pool: the runs are executed by ``prefect worker start --pool glia-nightly``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from glia.engine.config import ConfigError

DEFAULT_CRON = "0 3 * * *"
DEPLOYMENT = "glia-nightly"
WORK_POOL = "glia-nightly"
FLOW_NAME = "nightly_hygiene"


def default_timezone() -> str:
    """``GLIA_TIMEZONE`` if set, else UTC (a server's local time is rarely what people mean)."""
    return os.environ.get("GLIA_TIMEZONE") or "UTC"


@dataclass(frozen=True)
class Schedule:
    """When the nightly flow runs and on what: the deployment's schedule and parameters."""

    shards_root: str
    db_path: str = "glia.duckdb"
    rules_path: str | None = None
    state_dir: str | None = None
    cron: str = DEFAULT_CRON
    timezone: str = ""

    def __post_init__(self) -> None:
        from prefect.client.schemas.schedules import CronSchedule

        tz = self.timezone or default_timezone()
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"--timezone {tz!r}: not an IANA timezone name (e.g. UTC, Europe/Berlin)") from None
        try:
            CronSchedule(cron=self.cron, timezone=tz)
        except ValueError as exc:
            raise ConfigError(f"--cron {self.cron!r}: not a valid cron expression ({exc})") from None
        object.__setattr__(self, "timezone", tz)

    def parameters(self) -> dict[str, Any]:
        """The flow parameters, local paths made absolute (a served or worker run may start
        elsewhere); URLs (``s3://...``) are kept as they are."""

        def absolute(p: str | None) -> str | None:
            return p if p is None or "://" in p else str(Path(p).expanduser().resolve())

        return {"shards_root": absolute(self.shards_root), "db_path": absolute(self.db_path),
                "rules_path": absolute(self.rules_path), "state_dir": absolute(self.state_dir)}


def concurrency() -> Any:
    """One run at a time; a night that comes due while one runs waits for it."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    return ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)


def serve(schedule: Schedule, name: str = DEPLOYMENT, paused: bool = False) -> None:
    """Register the deployment and run its flow runs from this process until interrupted.

    The task runner follows the rules file and the ``GLIA_*`` environment (``flows.runners``).
    """
    from prefect.schedules import Cron

    from glia.flows.nightly import nightly_for

    flow = nightly_for(schedule.rules_path)
    flow.serve(
        name=name,
        schedules=[Cron(schedule.cron, timezone=schedule.timezone)],
        parameters=schedule.parameters(),
        global_limit=concurrency(),
        limit=1,
        paused=paused,
        tags=["glia"],
        description="Glia's nightly hygiene run (glia serve).",
    )


def deployment_yaml(schedule: Schedule, prefect_file: Path, name: str = DEPLOYMENT, pool: str = WORK_POOL) -> dict[str, Any]:
    """``prefect_file`` with its ``glia-nightly`` deployment set to this schedule (cron and
    timezone replace the file's, rather than being added to them), parameters, name and pool."""
    import yaml

    doc = yaml.safe_load(prefect_file.read_text())
    template = next((d for d in doc.get("deployments") or [] if d.get("name") == DEPLOYMENT), None)
    if template is None:
        raise ConfigError(f"{prefect_file}: no deployment named {DEPLOYMENT!r} to start from")
    dep = dict(template)
    dep["name"] = name
    dep["parameters"] = {**(dep.get("parameters") or {}),
                         **{k: v for k, v in schedule.parameters().items() if v is not None}}
    dep["schedules"] = [{"cron": schedule.cron, "timezone": schedule.timezone}]
    dep["work_pool"] = {**(dep.get("work_pool") or {}), "name": pool}
    return {**doc, "deployments": [dep]}


def ensure_work_pool(pool: str) -> None:
    """Create the process work pool ``pool`` on the Prefect server unless it exists."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            try:
                client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
            except ObjectAlreadyExists:  # made meanwhile by a worker starting up
                pass


def deploy(schedule: Schedule, prefect_file: Path, name: str = DEPLOYMENT, pool: str = WORK_POOL) -> int:
    """Register the deployment of ``prefect_file`` (see :func:`deployment_yaml`) with
    ``prefect deploy`` for a process work pool; return its exit status.

    Runs in ``prefect_file``'s folder, which Prefect records as the folder a worker starts each
    flow run in (so ``flows/deployment.py`` is found there).
    """
    import tempfile

    import yaml

    project = prefect_file.resolve().parent
    ensure_work_pool(pool)
    exe = shutil.which("prefect", path=str(Path(sys.executable).parent)) or shutil.which("prefect") or "prefect"
    with tempfile.TemporaryDirectory(prefix="glia-deploy-") as tmp:
        spec = Path(tmp) / "prefect.yaml"
        spec.write_text(yaml.safe_dump(deployment_yaml(schedule, prefect_file, name, pool), sort_keys=False))
        cmd = [exe, "--no-prompt", "deploy", "--prefect-file", str(spec), "--name", name]
        return subprocess.call(cmd, cwd=project)
