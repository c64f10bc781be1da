"""Glia is one top-level package, ``glia``, with a small public API at the top: a trainer whose
repository has its own ``core``, ``models`` and ``storage`` packages imports it and reads a
replay set, and ``import glia`` alone loads neither Prefect nor the models."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import NIGHTS, cli_env

TRAINER = '''
import json, sys
import core, models, storage
from core.pii import placeholder  # the trainer's own helper, beside Glia's glia.core.pii

from glia import ReplayIterableDataset, ReplayPlan, iter_replay, query

db = sys.argv[1]
plan = ReplayPlan.from_db(db)
texts = [item["text"] for item in ReplayIterableDataset(plan, seed=0)]
first = next(iter_replay(plan, seed=0))
counts = query(db, "SELECT count(*) AS n FROM v_replay WHERE set_id = %d" % plan.set_id)
print(json.dumps({"own": [m.__file__ for m in (core, models, storage)], "placeholder": placeholder(),
                  "n": len(texts), "draws": plan.draws.num_rows, "first": sorted(first),
                  "distinct": counts["n"][0].as_py()}))
'''


@pytest.fixture(scope="module")
def replay_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Night 1 run through the public ``glia.run_night``, with a replay set of 200 draws."""
    import glia

    base = tmp_path_factory.mktemp("package")
    rules = base / "rules.toml"
    rules.write_text('[run]\nstages = ["dedup", "replay"]\n[stages.replay]\nsize = 200\nseed = 1\n')
    db = base / "glia.duckdb"
    assert glia.run_night(NIGHTS[1], db, rules).status == "completed"
    return db


def test_a_trainer_with_its_own_core_models_and_storage_reads_a_replay_set(replay_db: Path, tmp_path: Path) -> None:
    trainer = tmp_path / "trainer"
    for pkg in ("core", "models", "storage"):
        (trainer / pkg).mkdir(parents=True)
        (trainer / pkg / "__init__.py").write_text(f'"""the trainer\'s own {pkg}"""\n')
    (trainer / "core" / "pii.py").write_text("def placeholder() -> str:\n    return 'trainer'\n")
    (trainer / "train.py").write_text(textwrap.dedent(TRAINER))
    # Run from the trainer's folder, as `python train.py` puts it first on sys.path.
    res = subprocess.run([sys.executable, "train.py", str(replay_db)], cwd=trainer, env=cli_env(),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert all(path.startswith(str(trainer)) for path in out["own"]), out["own"]
    assert out["placeholder"] == "trainer"
    assert out["n"] == out["draws"] == 200  # every draw, each with its text
    assert {"doc_id", "text", "weight"} <= set(out["first"])
    assert 0 < out["distinct"] <= 200


def test_importing_glia_loads_neither_prefect_nor_the_models() -> None:
    code = ("import sys, glia; from glia import ReplayPlan, query, run_night; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'prefect', 'transformers', 'faiss', "
            "'sentence_transformers', 'streamlit'}))")
    res = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_every_public_name_resolves() -> None:
    import glia

    for name in glia.__all__:
        assert getattr(glia, name) is not None, name
    assert set(dir(glia)) >= set(glia.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        glia.nope  # noqa: B018


def test_query_reads_the_catalog_and_refuses_writes(replay_db: Path) -> None:
    import glia

    runs = glia.query(replay_db, "SELECT run_id, status FROM v_runs")
    assert runs.to_pylist() == [{"run_id": 1, "status": "completed"}]
    with pytest.raises(Exception, match="(?i)read-only|write|copy"):
        glia.query(replay_db, "COPY (SELECT 1) TO 'x.csv'")
