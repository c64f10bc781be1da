"""The nightly flow on a Dask cluster gives the same catalog as the in-process run.

The same shards go through the real flow twice, into separate databases: once with the
default thread runner, once with ``[run] task_runner = "dask"`` on a 2-worker LocalCluster of
processes (``flows.runners``; each worker a separate Python process, one thread each). Every
document, tag view, duplicate and run count must be equal.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from glia.engine.config import ConfigError, RunOptions, load_config
from glia.flows import runners
from glia.flows import nightly
from conftest import NIGHTS, query, run_night

COMPARED = ["documents", "v_duplicates"]
RUN_COUNTS = ("SELECT run_id, status, n_shards_seen, n_shards_new, n_docs, n_exact_dups, n_near_dups, n_skipped_rows "
              "FROM runs ORDER BY run_id")


def _tag_views(db: Path) -> list[str]:
    return [r[0] for r in query(db, "SELECT table_name FROM information_schema.tables WHERE table_name LIKE 'tags_%' "
                                    "ORDER BY 1")]


def test_dask_cluster_run_equals_in_process_run(tmp_path: Path) -> None:
    root = tmp_path / "shards"
    shutil.copytree(NIGHTS[1], root / "night1")
    threads_db, dask_db = tmp_path / "threads.duckdb", tmp_path / "dask.duckdb"
    rules = tmp_path / "dask.toml"
    rules.write_text('[run]\ntask_runner = "dask"\nworkers = 2\n')

    assert run_night(root, threads_db, orchestrator="prefect").status == "completed"
    flow = nightly.nightly_for(str(rules))
    assert type(flow.task_runner).__name__ == "DaskTaskRunner"
    assert flow.task_runner.cluster_kwargs["n_workers"] == 2 and flow.task_runner.cluster_kwargs["processes"] is True
    out = flow(shards_root=str(root), db_path=str(dask_db), rules_path=str(rules))
    assert out.status == "completed" and out.counts["docs"] > 0

    views = _tag_views(threads_db)
    assert views == _tag_views(dask_db) and {"tags_exact", "tags_minhash", "tags_exact_dup", "tags_near_dup"} <= set(views)
    for rel in COMPARED + views:
        a = query(threads_db, f"SELECT * FROM {rel} ORDER BY ALL")
        b = query(dask_db, f"SELECT * FROM {rel} ORDER BY ALL")
        assert a == b, f"{rel} differs between the thread and the Dask run"
        assert a, f"{rel} is empty"
    assert query(threads_db, RUN_COUNTS) == query(dask_db, RUN_COUNTS)
    # Where the work ran is not part of what it computed.
    assert query(threads_db, "SELECT config_hash FROM runs") == query(dask_db, "SELECT config_hash FROM runs")
    assert query(threads_db, "SELECT metric, value FROM run_metrics WHERE metric LIKE 'summary.%' ORDER BY ALL") == \
        query(dask_db, "SELECT metric, value FROM run_metrics WHERE metric LIKE 'summary.%' ORDER BY ALL")


def test_runner_options_from_rules_and_environment(tmp_path: Path) -> None:
    rules = tmp_path / "glia.toml"
    rules.write_text('[run]\ntask_runner = "dask"\ndask_address = "tcp://10.0.0.5:8786"\n')
    opts = load_config(rules).run
    runner = runners.task_runner_for(opts)
    assert runner.address == "tcp://10.0.0.5:8786"
    # The host's environment wins over the rules file.
    env_opts = runners.options_with_env(opts, {"GLIA_TASK_RUNNER": "threads", "GLIA_WORKERS": "3"})
    threads = runners.task_runner_for(env_opts)
    assert type(threads).__name__ == "ThreadPoolTaskRunner" and threads._max_workers == 3
    with pytest.raises(ConfigError, match="task_runner"):
        runners.task_runner_for(RunOptions(task_runner="spark"))
    with pytest.raises(ConfigError, match="GLIA_WORKERS"):
        runners.options_with_env(opts, {"GLIA_WORKERS": "many"})


def test_gpu_taggers_claim_the_gpu_resource() -> None:
    """With ``dask_gpu_resource``, a GPU tagger's submissions carry a Dask resource claim; a CPU
    tagger's do not, and nothing is claimed on the thread runner."""
    import dask

    from glia.taggers.embedding import EmbeddingTagger
    from glia.taggers.exact import ExactHashTagger

    gpu, cpu = EmbeddingTagger.__new__(EmbeddingTagger), ExactHashTagger()
    opts = RunOptions(task_runner="dask", dask_gpu_resource="GPU")
    with runners.placement(gpu, opts):
        assert dask.get_annotations() == {"resources": {"GPU": 1}}
    with runners.placement(cpu, opts):
        assert dask.get_annotations() == {}
    with runners.placement(gpu, RunOptions()):
        assert dask.get_annotations() == {}
