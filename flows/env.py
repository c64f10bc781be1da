"""Offline-safe Prefect defaults, applied before Prefect is imported.

Glia runs Prefect embedded (no server) by default. Telemetry would try DNS on a closed
network, and a first start on an empty PREFECT_HOME can take ~17 s, close to Prefect's
20 s default timeout. Every value is only a default: the environment wins.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
}


def apply() -> None:
    """Set the defaults (and a project-local PREFECT_HOME under ``.glia/``) if unset."""
    os.environ.setdefault("PREFECT_HOME", str(Path(os.environ.get("GLIA_HOME", ".glia")).resolve() / "prefect"))
    # Prefect creates PREFECT_HOME without parents and fails obscurely if it cannot.
    Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
