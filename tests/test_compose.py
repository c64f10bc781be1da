"""docker-compose.yml must stay valid for Debian's docker-compose v1 (no engine needed)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _compose() -> str:
    exe = shutil.which("docker-compose")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is not installed; `make test` installs it (apt-get install docker-compose)")
        pytest.skip("docker-compose not installed (apt-get install docker-compose)")
    return exe


@pytest.mark.parametrize("variant", ["cpu", "cuda"])
def test_compose_file_validates(variant: str) -> None:
    env = {**os.environ, "GLIA_VARIANT": variant}
    res = subprocess.run([_compose(), "-f", "docker-compose.yml", "config", "-q"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


def test_compose_rejects_an_invalid_file(tmp_path: Path) -> None:
    """The validator really checks: a v2-only top-level key is refused."""
    bad = tmp_path / "docker-compose.yml"
    bad.write_text("name: glia\n" + (ROOT / "docker-compose.yml").read_text())
    res = subprocess.run([_compose(), "-f", str(bad), "config", "-q"], capture_output=True, text=True, timeout=60)
    assert res.returncode != 0


def test_services_and_volumes() -> None:
    """A Prefect server with its database on a volume, a worker that registers and runs the
    nightly deployment, and a dashboard that mounts the catalog read-only."""
    import yaml

    res = subprocess.run([_compose(), "-f", "docker-compose.yml", "config"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, env={**os.environ, "GLIA_TIMEZONE": "Europe/Berlin"})
    assert res.returncode == 0, res.stderr
    cfg = yaml.safe_load(res.stdout)
    svc = cfg["services"]
    assert {"prefect-server", "glia-worker", "glia-dashboard"} <= set(svc)
    assert "prefect-data:/var/lib/prefect" in " ".join(str(v) for v in svc["prefect-server"]["volumes"])
    worker = svc["glia-worker"]
    script = " ".join(worker["command"])
    assert "glia deploy" in script and "prefect worker start --pool glia-nightly" in script
    assert worker["environment"]["GLIA_TIMEZONE"] == "Europe/Berlin"

    def mounts(service: dict) -> dict[str, tuple[str, bool]]:
        out = {}
        for v in service["volumes"]:
            if isinstance(v, str):
                src, dst, *mode = v.split(":")
                out[dst] = (src, bool(mode) and mode[0] == "ro")
            else:
                out[v["target"]] = (v["source"], bool(v.get("read_only")))
        return out

    dash, work = mounts(svc["glia-dashboard"]), mounts(worker)
    assert dash["/data/glia"] == ("glia-db", True)  # the dashboard never writes the catalog
    assert work["/data/glia"] == ("glia-db", False) and work["/data/shards"] == ("shards", True)
    assert svc["glia-dashboard"]["command"][:3] == ["dashboard", "--db", "/data/glia/glia.duckdb"]
