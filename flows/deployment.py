"""The entrypoint of the ``prefect.yaml`` deployment: ``nightly_hygiene`` with its task runner.

A process worker loads the flow by path (``flows/deployment.py:nightly_hygiene``) in a fresh
process, and ``prefect deploy`` finds it by reading this file (it looks for a ``def``), so
this is a flow of the same name and parameters whose body is the nightly flow's. Its task
runner is chosen at import from the rules file named by ``GLIA_RULES`` and the worker's
``GLIA_TASK_RUNNER`` / ``GLIA_DASK_ADDRESS`` / ``GLIA_WORKERS`` variables (``flows.runners``);
the run's ``rules_path`` parameter still sets everything else.
"""

from __future__ import annotations

import os

from prefect import flow

from glia.engine.pipeline import NightOutcome
from glia.flows import nightly
from glia.flows.runners import task_runner_from

RUNNER = task_runner_from(os.environ.get("GLIA_RULES") or None)


@flow(name="nightly_hygiene", task_runner=RUNNER, validate_parameters=False)
def nightly_hygiene(shards_root: str, db_path: str = "glia.duckdb", rules_path: str | None = None,
                    state_dir: str | None = None) -> NightOutcome:
    """One nightly hygiene run (see ``flows.nightly.nightly_hygiene``)."""
    return nightly.nightly_hygiene.fn(shards_root=shards_root, db_path=db_path, rules_path=rules_path,
                                      state_dir=state_dir)
