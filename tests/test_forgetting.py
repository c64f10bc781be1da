"""The forgetting benchmark's --quick mode, end to end: real corpus, real Glia nights, real training.

It runs ``bench/forgetting.py --quick`` as a trainer would run it (a subprocess, one torch
thread) and checks what the result promises: every arm at every ratio, forgetting per stratum,
the protected strata Glia built, replay windows at the stated ratio, and exactly equal training
tokens across arms (counted from the loss masks, not from the configuration).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import run_quick_bench

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "examples" / "forgetting"


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    tmp = tmp_path_factory.mktemp("forgetting")
    return run_quick_bench("forgetting.py", tmp / "result.json", "--workdir", str(tmp / "work"), timeout=240)


def test_corpus_shifts_between_nights() -> None:
    # Night 1's sources never appear in the later nights: the shift the benchmark relies on.
    n1 = set(pq.read_table(CORPUS / "night1", columns=["source"])["source"].to_pylist())
    later = {s for n in (2, 3) for s in pq.read_table(CORPUS / f"night{n}", columns=["source"])["source"].to_pylist()}
    assert len(n1) >= 3 and not n1 & later
    held = pq.read_table(CORPUS / "heldout.parquet")
    ids = {i for n in (1, 2, 3) for i in pq.read_table(CORPUS / f"night{n}", columns=["id"])["id"].to_pylist()}
    assert not ids & set(held["id"].to_pylist()), "held-out documents must never be trained on"


def test_quick_result_structure(quick: tuple[dict, str]) -> None:
    result, stdout = quick
    arms = result["arms"]
    for kind in ("uniform", "tmr"):
        assert {f"{kind}@5%", f"{kind}@25%"} <= set(arms)
    assert {"none", "union"} <= set(arms)
    summary = result["summary"]
    strata = summary["strata"]
    assert {"rare_source:devil", "rare_source:jargon", "rare", "do_not_forget", "rest", "new"} <= set(strata)
    for arm in arms:
        for st in strata:
            cell = summary["table"][arm][st]
            assert len(cell["seeds"]) == result["config"]["seeds"]
            assert abs(cell["mean"] - sum(cell["seeds"]) / len(cell["seeds"])) < 1e-9
    assert set(summary["paired_vs_uniform"]) == {"tmr@5% - uniform@5%", "tmr@25% - uniform@25%"}
    # Glia's decide stage protected the rare sources and the listed documents.
    seed = result["seeds"][0]
    listed = [ln for ln in (CORPUS / "do_not_forget.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    assert seed["protected_strata"]["do_not_forget"] == len(listed)
    assert {"rare_source:devil", "rare_source:jargon"} <= set(seed["protected_strata"])
    # The printed table names every arm.
    for arm in arms:
        assert f"\n{arm}" in stdout


def test_arms_train_on_equal_tokens(quick: tuple[dict, str]) -> None:
    result, _ = quick
    cfg = result["config"]
    for seed in result["seeds"]:
        tokens = {arm: rec["tokens"] for arm, rec in seed["arms"].items()}
        assert len(set(tokens.values())) == 1, tokens
        # Every window is full (documents are longer than the context), so the count is exact.
        assert next(iter(tokens.values())) == 2 * cfg["night_steps"] * cfg["batch"] * cfg["ctx"]
        for arm, rec in seed["arms"].items():
            pct = arm.partition("@")[2]
            want = round(float(pct.rstrip("%")) / 100 * cfg["batch"]) if pct else 0
            assert rec["replay_windows"] == 2 * cfg["night_steps"] * want, arm


def test_protected_documents_can_keep_their_upsampling() -> None:
    # protected_is_weight = false (the default) changes only the protected documents' IS weights (to 1): the
    # probabilities, the draws and everyone else's weights stay as they were.
    import numpy as np
    import pyarrow as pa

    from glia.curation.replay import Pool, ReplayParams, build_set
    from glia.storage.replay import POOL_SCHEMA, STATE_SCHEMA

    t = pq.read_table(CORPUS / "night1", columns=["id", "source"])
    n = t.num_rows
    src = np.asarray(t["source"].to_pylist(), dtype=object)
    protected = np.isin(src, ["jargon", "devil"])
    table = pa.table({
        "doc_id": t["id"], "shard_id": pa.array(["s"] * n), "first_seen_run": pa.array(np.ones(n, np.int64)),
        "surprise": pa.nulls(n, pa.float64()), "utility": pa.nulls(n, pa.float64()), "novelty": pa.nulls(n, pa.float64()),
        "importance": pa.nulls(n, pa.float64()), "protected": pa.array(protected),
        "strata": pa.array([[f"label={s}"] for s in src], pa.list_(pa.string())),
    }, schema=POOL_SCHEMA)
    pool = Pool(table, 2, 0, "label")
    a = build_set(pool, STATE_SCHEMA.empty_table(), ReplayParams(size=4000, beta=0.8, protected_is_weight=True), 1, 0, "api")
    b = build_set(pool, STATE_SCHEMA.empty_table(), ReplayParams(size=4000, beta=0.8, protected_is_weight=False), 1, 0, "api")
    prot = np.isin(np.asarray(a.pool_ids.to_pylist(), dtype=object), t["id"].filter(pa.array(protected)).to_pylist())
    np.testing.assert_array_equal(a.probability, b.probability)
    assert a.items["count"].to_pylist() == b.items["count"].to_pylist()
    assert a.weight[prot].max() < 0.9  # upsampled, so down-weighted by default
    np.testing.assert_array_equal(b.weight[prot], 1.0)
    np.testing.assert_array_equal(a.weight[~prot], b.weight[~prot])


def test_tied_scores_do_not_make_every_document_salient() -> None:
    # With coarse terms most scores tie; a document is salient only strictly above the quantile,
    # so the undrawn common documents' retention can decay (with ">=" every tie was refreshed).
    import numpy as np
    import pyarrow as pa

    from glia.curation.replay import Pool, ReplayParams, build_set
    from glia.storage.replay import POOL_SCHEMA, STATE_SCHEMA

    t = pq.read_table(CORPUS / "night1", columns=["id", "label"])
    n = t.num_rows
    labels = np.asarray(t["label"].to_pylist(), dtype=object)
    table = pa.table({
        "doc_id": t["id"], "shard_id": pa.array(["s"] * n), "first_seen_run": pa.array(np.ones(n, np.int64)),
        "surprise": pa.nulls(n, pa.float64()), "utility": pa.nulls(n, pa.float64()), "novelty": pa.nulls(n, pa.float64()),
        "importance": pa.nulls(n, pa.float64()), "protected": pa.array(np.isin(labels, ["glossary", "satire"])),
        "strata": pa.array([[f"label={v}"] for v in labels], pa.list_(pa.string())),
    }, schema=POOL_SCHEMA)
    rs = build_set(Pool(table, 2, 0, "label"), STATE_SCHEMA.empty_table(), ReplayParams(size=50, new_fraction=0.0), 1, 0, "api")
    salient = rs.state_rows.filter(pa.compute.is_valid(rs.state_rows["last_salient_run"]))
    common = {i for i, lab in zip(t["id"].to_pylist(), labels) if lab in ("literature", "scripture")}
    assert not common & set(salient["doc_id"].to_pylist()), "tied common documents must not all be salient"
    assert set(salient["doc_id"].to_pylist()) >= {i for i, lab in zip(t["id"].to_pylist(), labels) if lab == "satire"}
    # Next night the undrawn common documents have decayed below the ones drawn tonight.
    rs2 = build_set(Pool(table, 4, 0, "label"), rs.state_rows, ReplayParams(size=50, new_fraction=0.0), 2, 1, "api")
    ids = rs2.pool_ids.to_pylist()
    drawn = set(rs.items["doc_id"].to_pylist())
    ret = dict(zip(ids, rs2.retention))
    assert max(ret[i] for i in common - drawn) < min(ret[i] for i in drawn)


def test_each_night_rewarms_and_decays_its_learning_rate() -> None:
    # Night 1 settles at a low learning rate (a stable loss before the shift); each later night
    # warms up again and decays by its own end (Ibrahim et al. 2024). "constant" is ablate.py's schedule.
    sys.path.insert(0, str(REPO / "bench"))
    from tinylm import Budget, learning_rate

    b = Budget(night1_steps=100, night_steps=20, batch_new=4, batch_replay=0, lr=1e-2, warmup=10, schedule="cosine",
               min_lr_ratio=0.1)
    night1 = [learning_rate(b, s, (0, 100)) for s in range(100)]
    assert night1[0] == pytest.approx(1e-3) and max(night1) == pytest.approx(1e-2, rel=0.05)
    assert night1[-1] == pytest.approx(1e-3, rel=0.01) and night1[-1] < night1[50] < night1[10]
    night2 = [learning_rate(b, s, (100, 20)) for s in range(100, 120)]
    assert night2[0] == pytest.approx(1e-3) and max(night2) > 5 * night1[-1] and night2[-1] == pytest.approx(1e-3, rel=0.1)
    flat = Budget(**{**b.__dict__, "schedule": "constant"})
    assert [learning_rate(flat, s, (100, 20)) for s in (0, 9, 10, 500)] == [1e-3, 1e-2, 1e-2, 1e-2]
    with pytest.raises(ValueError, match="schedule must be"):
        learning_rate(Budget(**{**b.__dict__, "schedule": "linear"}), 0, (0, 1))


def test_night1_curve_is_recorded(quick: tuple[dict, str]) -> None:
    result, _ = quick
    night1 = result["seeds"][0]["night1"]
    assert [p["step"] for p in night1["curve"]][-1] == result["config"]["night1_steps"]
    assert set(night1["last_segment_change"]) == {s for s in night1["strata"] if s != "new"}
