"""Offline-safe Prefect defaults, applied before Prefect is imported.

Glia runs Prefect embedded (no server) by default. Telemetry would try DNS on a closed
network, and a first start on an empty PREFECT_HOME can take ~17 s, close to Prefect's
20 s default timeout. Every value is only a default: the environment wins.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path

DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
}


def prefect_home(environ: Mapping[str, str] | None = None) -> Path:
    """``PREFECT_HOME`` if set, else ``prefect`` under ``GLIA_HOME`` (default ``.glia``)."""
    environ = os.environ if environ is None else environ
    if environ.get("PREFECT_HOME"):
        return Path(environ["PREFECT_HOME"]).expanduser()
    return Path(environ.get("GLIA_HOME", ".glia")).resolve() / "prefect"


def apply() -> None:
    """Set the defaults (and a project-local PREFECT_HOME under ``.glia/``) if unset."""
    os.environ.setdefault("PREFECT_HOME", str(prefect_home()))
    # Prefect creates PREFECT_HOME without parents and fails obscurely if it cannot.
    Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)


def configured_api_url(environ: Mapping[str, str] | None = None) -> str | None:
    """The Prefect API a flow run in this environment would report to, found without
    importing Prefect (~3 s): ``PREFECT_API_URL``, else that key of the active profile in
    ``PREFECT_PROFILES_PATH`` (default ``$PREFECT_HOME/profiles.toml``, the profile named by
    ``PREFECT_PROFILE`` or the file's ``active``). ``None``: Prefect would start an embedded
    server. Prefect's other setting sources (``.env``, ``prefect.toml``) are not read here.
    """
    environ = os.environ if environ is None else environ
    if "PREFECT_API_URL" in environ:
        return environ["PREFECT_API_URL"] or None
    path = Path(environ.get("PREFECT_PROFILES_PATH") or prefect_home(environ) / "profiles.toml").expanduser()
    try:
        profiles = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):  # no profiles yet, or Prefect will complain itself
        return None
    name = environ.get("PREFECT_PROFILE") or profiles.get("active") or "ephemeral"
    url = profiles.get("profiles", {}).get(name, {}).get("PREFECT_API_URL")
    return str(url) if url else None


def tie_embedded_server_to_process() -> None:
    """Make Prefect's embedded server (a uvicorn child process) exit when this process does,
    even when this process is killed: its command is started through :mod:`glia.flows.deathsig`.

    Only the ``subprocess`` name inside Prefect's server module is wrapped, so no other child
    process is affected.
    """
    import subprocess
    import types

    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():  # a real server: Prefect starts no embedded one (~2.5 s of imports saved)
        return
    from prefect.server.api import server

    if getattr(server.subprocess, "_glia_tied", False):
        return

    class _Popen(subprocess.Popen):  # type: ignore[type-arg]
        def __init__(self, args, *rest, **kw):  # noqa: ANN001 - Popen's own signature
            if isinstance(args, list) and args[1:3] == ["-m", "uvicorn"]:
                args = [args[0], "-m", "glia.flows.deathsig", str(os.getpid()), *args]
            super().__init__(args, *rest, **kw)

    server.subprocess = types.SimpleNamespace(**{**vars(subprocess), "Popen": _Popen, "_glia_tied": True})
