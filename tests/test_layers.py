"""The layer order (pyproject's import-linter contract, docs/ARCHITECTURE.md) is enforced: the
tree keeps it, and an upward import breaks it with a message naming the import.

The layers are folders at the top of the repository mapped into one package (``glia.core`` is
``core/``); import-linter reads a package from one folder, so each check assembles that folder
(``glia/`` with the layers inside) in a temporary directory and lints it there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _layers() -> dict[str, str]:
    """``glia.<layer>`` -> its folder, from pyproject's package-dir mapping."""
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    return {name: folder for name, folder in mapping.items() if name != "glia"}


def _lint(where: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(where)}
    return subprocess.run([str(LINT), "--config", str(where / "pyproject.toml"), "--no-cache"], cwd=where, env=env,
                          capture_output=True, text=True, timeout=120)


def _copy_tree(tmp_path: Path) -> Path:
    dst = tmp_path / "tree"
    shutil.copytree(ROOT / "glia", dst / "glia", ignore=shutil.ignore_patterns("__pycache__"))
    for name, folder in _layers().items():
        shutil.copytree(ROOT / folder, dst / name.replace(".", "/"), ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")
    return dst


def test_the_tree_keeps_the_layers(tmp_path: Path) -> None:
    res = _lint(_copy_tree(tmp_path))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 kept, 0 broken" in res.stdout


def test_an_upward_import_breaks_the_contract(tmp_path: Path) -> None:
    """storage is below engine: storage importing the engine's config must fail the check."""
    tree = _copy_tree(tmp_path)
    sql = tree / "glia" / "storage" / "sql.py"
    sql.write_text(sql.read_text() + "\nfrom glia.engine.config import GliaConfig  # noqa: E402,F401\n")
    res = _lint(tree)
    assert res.returncode != 0
    assert "glia.storage is not allowed to import glia.engine" in res.stdout
    assert "glia.storage.sql -> glia.engine.config" in res.stdout


def test_every_package_is_a_layer() -> None:
    """A new top-level package must join the package and the contract, or it escapes the check."""
    on_disk = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"glia", "tests", "bench", "examples", "build"}
    assert on_disk == set(_layers().values())
    contract = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    in_contract = {part.strip() for layer in contract["layers"] for part in layer.split("|")}
    assert {f"glia.{folder}" for folder in in_contract} == set(_layers())
