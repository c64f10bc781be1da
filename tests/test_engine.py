"""The night as plain Python (``engine.night``) and as the Prefect flow give the same catalog,
and a dedup-only ``glia run`` needs neither Prefect nor a model stack.

The same deliveries (three nights of the example corpus, night 2 with a file that is not
Parquet, a blank text and an id already used, then a rerun with nothing new) go through the
engine and through the real flow in this process, into two databases side by side; after
every night the catalogs must be equal, but for run times and the folder each lives in.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import NIGHTS, STATE_QUERIES, cli_env, open_db, run_night
from glia.engine.config import ConfigError, RunOptions
from glia.flows import runners

# The runs' own rows, less what differs between any two runs (when, how long, which code).
RUN_QUERIES = {
    "runs": "SELECT run_id, status, shards_root, config_hash, config, error FROM runs ORDER BY run_id",
    "v_runs": "SELECT * EXCLUDE (started_at, finished_at, seconds, code_version) FROM v_runs ORDER BY run_id",
    "run_metrics": "SELECT * FROM run_metrics WHERE metric NOT LIKE 'seconds.%' AND metric NOT LIKE '%.seconds' "
                   "ORDER BY ALL",
}
# Packages a dedup-only night must not import: the orchestrator and the model stacks.
HEAVY = {"prefect", "torch", "transformers", "sentence_transformers", "detoxify", "datatrove", "dask", "distributed"}


def _catalog(db: Path) -> dict[str, list[Any]]:
    """Every compared table and view, with this database's folder written as ``<home>``."""
    home = str(db.parent)

    def norm(v: Any) -> Any:
        if isinstance(v, str):
            return v.replace(home, "<home>")
        if isinstance(v, float):  # DuckDB sums in parallel: aggregates may differ in the last bits
            return float(f"{v:.12g}")
        return v

    with open_db(db) as con:
        return {name: [tuple(norm(v) for v in row) for row in con.execute(sql).fetchall()]
                for name, sql in {**STATE_QUERIES, **RUN_QUERIES}.items()}


def _deliver(root: Path, night: int) -> None:
    shutil.copytree(NIGHTS[night], root / f"night{night}")
    if night == 2:  # bad input: a whole shard rejected, and two rows skipped
        (root / "night2" / "notes.parquet").write_text("id,text\nthis is CSV, not Parquet\n")
        first = pq.read_table(NIGHTS[1] / "part-00000.parquet").slice(0, 1)
        blank = pq.read_table(NIGHTS[2] / "part-00001.parquet").slice(0, 1)
        blank = blank.set_column(0, "id", pa.array(["engine-test-blank"])).set_column(1, "text", pa.array(["  "]))
        pq.write_table(pa.concat_tables([first, blank]), root / "night2" / "part-extra.parquet")


def test_engine_and_prefect_flow_give_the_same_catalog(tmp_path: Path) -> None:
    root = tmp_path / "shards"
    dbs = {o: tmp_path / o / "glia.duckdb" for o in ("plain", "prefect")}
    for night in (1, 2, 3, 3):
        if not (root / f"night{night}").exists():
            _deliver(root, night)
        outcomes = {o: run_night(root, db, orchestrator=o) for o, db in dbs.items()}
        a, b = outcomes["plain"], outcomes["prefect"]
        assert (a.run_id, a.status, a.counts, a.skipped.to_pylist()) == (b.run_id, b.status, b.counts,
                                                                        b.skipped.to_pylist())
        assert a.rejected == b.rejected
        got, want = _catalog(dbs["plain"]), _catalog(dbs["prefect"])
        for name in want:
            assert got[name] == want[name], f"night {night}: {name} differs between the engine and the flow"
    assert a.status == "nothing_new" and len(want["runs"]) == 4
    assert [r[1] for r in want["runs"]] == ["completed"] * 3 + ["nothing_new"]
    # Not a vacuous comparison: duplicates found, a shard rejected and rows skipped.
    assert want["v_duplicates"] and want["tag_files"] and want["index_segments"]
    assert {"notes.parquet", "part-extra.parquet"} <= {Path(str(r)).name for row in want["skipped"] for r in row}


def test_dedup_only_glia_run_imports_no_prefect_and_no_model(tmp_path: Path) -> None:
    """``glia run`` without a rules file (dedup only) and without a Prefect server runs the
    night as plain Python: Prefect, Dask and the model stacks are never imported."""
    script = ("import sys\n"
              "from glia.cli import main as cli\n"
              f"rc = cli.main(['run', {str(NIGHTS[1])!r}, '--db', 'glia.duckdb', '-q'])\n"
              f"print('MODULES', sorted({{m.split('.')[0] for m in sys.modules}} & set({sorted(HEAVY)!r})))\n"
              "sys.exit(rc)\n")
    res = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=cli_env(), capture_output=True, text=True,
                         timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Glia run 1: completed" in res.stdout
    line = next(x for x in res.stdout.splitlines() if x.startswith("MODULES"))
    assert line == "MODULES []", f"a dedup-only glia run imported {line}"


def test_orchestrator_choice(tmp_path: Path) -> None:
    """``auto`` uses Prefect only for a Dask runner or a Prefect API (environment or active
    profile); ``plain`` and ``prefect`` force it; mistakes name the key to fix."""
    home = {"PREFECT_HOME": str(tmp_path / "prefect")}
    threads, dask = RunOptions(), RunOptions(task_runner="dask")
    assert not runners.uses_prefect(threads, home)
    assert runners.uses_prefect(dask, home)
    assert runners.uses_prefect(threads, {**home, "PREFECT_API_URL": "http://127.0.0.1:4200/api"})
    assert not runners.uses_prefect(RunOptions(orchestrator="plain"), {**home, "PREFECT_API_URL": "http://x/api"})
    assert runners.uses_prefect(RunOptions(orchestrator="prefect"), home)
    # A server named only in the active Prefect profile (`prefect config set PREFECT_API_URL=...`).
    (tmp_path / "prefect").mkdir()
    (tmp_path / "prefect" / "profiles.toml").write_text(
        'active = "team"\n[profiles.team]\nPREFECT_API_URL = "http://prefect:4200/api"\n[profiles.local]\n')
    assert runners.uses_prefect(threads, home)
    assert not runners.uses_prefect(threads, {**home, "PREFECT_PROFILE": "local"})
    # The host's GLIA_ORCHESTRATOR wins over the rules file, as the other execution keys do.
    assert runners.options_with_env(threads, {"GLIA_ORCHESTRATOR": "prefect"}).orchestrator == "prefect"
    with pytest.raises(ConfigError, match=r"orchestrator = 'spark'"):
        runners.uses_prefect(RunOptions(orchestrator="spark"), home)
    with pytest.raises(ConfigError, match="task_runner"):
        runners.uses_prefect(RunOptions(orchestrator="plain", task_runner="dask"), home)


def test_orchestrator_is_not_part_of_the_config_hash(tmp_path: Path) -> None:
    from glia.engine.config import load_config

    rules = tmp_path / "glia.toml"
    rules.write_text('[run]\norchestrator = "prefect"\n')
    assert load_config(rules).hash() == load_config(None).hash()
    assert json.loads(json.dumps(load_config(rules).to_dict()))["run"]["orchestrator"] == "prefect"


def test_glia_run_through_the_flow_reads_the_rules_file_and_builds_the_night_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``glia run`` hands the configuration it loaded to the Prefect flow, and a night builds its
    taggers and stages once (NightParts), not again in the flow."""
    from glia.cli.main import EXIT_OK, main
    from glia.engine import config as config_module
    from glia.engine.pipeline import NightParts

    calls = {"read": 0, "build": 0}
    read, build = config_module._read_toml, NightParts.build.__func__

    def counted_read(path: Path) -> dict[str, Any]:
        calls["read"] += 1
        return read(path)

    def counted_build(cls: type[NightParts], cfg: Any) -> NightParts:
        calls["build"] += 1
        return build(cls, cfg)

    monkeypatch.setattr(config_module, "_read_toml", counted_read)
    monkeypatch.setattr(NightParts, "build", classmethod(counted_build))
    (tmp_path / "shards").mkdir()
    shard = NIGHTS[1] / "part-00000.parquet"
    pq.write_table(pq.read_table(shard).slice(0, 50), tmp_path / "shards" / shard.name)
    rules = tmp_path / "glia.toml"
    rules.write_text("[stages.dedup]\nthreshold = 0.6\n")
    argv = ["run", str(tmp_path / "shards"), "--db", str(tmp_path / "glia.duckdb"), "--rules", str(rules), "-q",
            "--orchestrator", "prefect"]
    assert main(argv) == EXIT_OK
    assert calls == {"read": 1, "build": 1}
