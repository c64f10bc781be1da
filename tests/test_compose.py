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
