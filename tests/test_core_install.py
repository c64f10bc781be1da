"""A dedup-only install (``pip install glia``: the core dependencies, no extra) runs a night on
the example corpus, and a tagger whose extra is missing says which extra to install.

This builds a real virtual environment from the checkout (pip reuses the wheels that
``make setup`` downloaded, so it needs the package registry or a warm pip cache) and reports
its size, which the README quotes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import NIGHTS, cli_env

ROOT = Path(__file__).resolve().parents[1]


def _size_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink()) / 1e6


@pytest.fixture(scope="module")
def core_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("core") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    # Non-editable, from a copy of the checkout's files that pip builds into a wheel.
    res = subprocess.run([*pip, "-c", str(ROOT / "constraints.txt"), str(ROOT)], capture_output=True, text=True,
                         timeout=900, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return venv


def test_a_dedup_only_install_runs_a_night(core_venv: Path, tmp_path: Path) -> None:
    py = str(core_venv / "bin" / "python")
    listed = subprocess.run([py, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True,
                            check=True).stdout.lower()
    for heavy in ("torch", "transformers", "sentence-transformers", "faiss-cpu", "datatrove", "streamlit", "detoxify"):
        assert f"\n{heavy}==" not in f"\n{listed}", f"the core install pulled in {heavy}"
    env = {k: v for k, v in cli_env().items() if k != "PYTHONPATH"}
    glia = str(core_venv / "bin" / "glia")
    res = subprocess.run([glia, "run", str(NIGHTS[1]), "--db", str(tmp_path / "glia.duckdb"), "-q"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Glia run 1: completed" in res.stdout
    site = next((core_venv / "lib").glob("python3*/site-packages"))
    # The n-gram risk head's training data is package data: an installed Glia trains its own head.
    for data in ("glia/models/data/davidson-2017/labeled_data.parquet", "glia/models/data/risk_prose.parquet"):
        assert (site / data).is_file(), f"the wheel lacks {data}"
    print(f"\ncore install: {_size_mb(core_venv):.0f} MB environment, {_size_mb(site):.0f} MB site-packages")

    rules = tmp_path / "models.toml"
    rules.write_text('[run]\ntaggers = ["exact", "minhash", "embedding"]\n')
    res = subprocess.run([glia, "run", str(NIGHTS[1]), "--db", str(tmp_path / "other.duckdb"), "--rules", str(rules),
                          "-q"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 1
    out = " ".join((res.stdout + res.stderr).split())
    assert "tagger 'embedding' needs" in out and "pip install 'glia[models]'" in out, out


def test_the_wheel_installs_one_top_level_package(core_venv: Path) -> None:
    """Only ``glia`` lands in site-packages, so a trainer's own ``core`` or ``models`` cannot
    shadow Glia's layers, nor Glia theirs."""
    site = next((core_venv / "lib").glob("python3*/site-packages"))
    dist = next(site.glob("glia-*.dist-info"))
    assert (dist / "top_level.txt").read_text().split() == ["glia"]
    # RECORD lists every installed file; the console script lands outside site-packages (../../../bin/glia).
    paths = [line.split(",", 1)[0] for line in (dist / "RECORD").read_text().splitlines()]
    tops = {p.split("/", 1)[0] for p in paths if "/" in p and not p.startswith("..")}
    assert tops == {"glia", dist.name}, tops
    for layer in ("core", "storage", "models", "taggers", "curation", "stages", "engine", "flows", "cli", "dashboards"):
        assert (site / "glia" / layer / "__init__.py").is_file() and not (site / layer).exists(), layer
