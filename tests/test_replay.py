"""TMR replay sets: sampling frequencies, importance weights, retention, determinism, and the
replay stage in a real nightly run (``v_replay``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.stats import chisquare

from conftest import NIGHTS, open_db, query, run_night
from glia.curation.replay import TERMS, Pool, ReplayParams, build_set, retention_factor
from glia.engine.replay import build_from_catalog, export_set
from glia.storage.replay import POOL_SCHEMA, STATE_SCHEMA


def example_pool(n: int, run_id: int = 3, new_every: int = 4, seed: int = 7) -> Pool:
    """``n`` real document ids and labels from night 1 with term values made up for the test:
    surprise on every document, utility on every other one (null = not scored), and every
    ``new_every``-th document first seen in ``run_id`` (the others two nights earlier)."""
    t = pq.read_table(sorted(NIGHTS[1].glob("*.parquet"))[0], columns=["id", "label"]).slice(0, n)
    rng = np.random.default_rng(seed)
    first = np.where(np.arange(n) % new_every == 0, run_id, run_id - 2)
    utility = rng.gamma(2.0, 1.0, n)
    strata = pa.array([[f"label={v}"] for v in t["label"].to_pylist()], pa.list_(pa.string()))
    table = pa.table({
        "doc_id": t["id"], "shard_id": pa.array(["s"] * n), "first_seen_run": pa.array(first, pa.int64()),
        "surprise": pa.array(rng.normal(0, 1, n)), "utility": pa.array(utility, mask=np.arange(n) % 2 == 1),
        "novelty": pa.nulls(n, pa.float64()), "importance": pa.nulls(n, pa.float64()),
        "protected": pa.nulls(n, pa.bool_()), "strata": strata,
    }, schema=POOL_SCHEMA)
    return Pool(table, run_id, 0, "label")


def test_draw_frequencies_match_probabilities() -> None:
    pool = example_pool(60)
    params = ReplayParams(size=200_000, new_fraction=0.3, seed=11)
    rs = build_set(pool, STATE_SCHEMA.empty_table(), params, 1, 0, "api")
    counts = np.zeros(len(rs.probability), np.int64)
    pos = {d: i for i, d in enumerate(rs.pool_ids.to_pylist())}
    for d, c in zip(rs.items["doc_id"].to_pylist(), rs.items["count"].to_pylist()):
        counts[pos[d]] = c
    assert counts.sum() == 200_000
    assert np.isclose(rs.probability.sum(), 1.0)
    expected = rs.probability * counts.sum()
    assert chisquare(counts, expected).pvalue > 1e-3
    sigma = np.sqrt(expected * (1 - rs.probability))
    assert np.all(np.abs(counts - expected) < 5 * sigma)
    # The old/new mix: new_fraction of the probability mass (and of the draws) is on new documents.
    is_new = pool.table.sort_by("doc_id")["first_seen_run"].to_numpy() >= pool.run_id
    assert np.isclose(rs.probability[is_new].sum(), 0.3)
    assert abs(counts[is_new].sum() / counts.sum() - 0.3) < 0.005
    # Within a group P(i) = p_i^a / sum p^a.
    for mask, frac in ((is_new, 0.3), (~is_new, 0.7)):
        pa_ = rs.priority[mask] ** 0.6
        np.testing.assert_allclose(rs.probability[mask], frac * pa_ / pa_.sum(), rtol=1e-12)


def test_importance_sampling_weights_are_exact() -> None:
    pool = example_pool(80)
    params = ReplayParams(size=5_000, beta=0.4, beta_final=1.0, beta_anneal_sets=10)
    for prior_sets, beta in ((0, 0.4), (5, 0.7), (10, 1.0), (25, 1.0)):
        assert params.beta_for(prior_sets) == pytest.approx(beta)
        rs = build_set(pool, STATE_SCHEMA.empty_table(), params, 1, prior_sets, "api")
        n = len(rs.probability)
        raw = (n * rs.probability) ** -beta
        np.testing.assert_allclose(rs.weight, raw / raw.max(), rtol=1e-12)
        assert rs.weight.max() == 1.0 and rs.set_row["beta"] == pytest.approx(beta)
        # The stored items carry the same weights and probabilities.
        stored = dict(zip(rs.items["doc_id"].to_pylist(), rs.items["weight"].to_pylist()))
        by_id = dict(zip(rs.pool_ids.to_pylist(), rs.weight))
        assert all(stored[d] == pytest.approx(by_id[d], rel=1e-12) for d in stored)
    # The least likely document gets weight 1; a more likely one less.
    assert rs.weight[np.argmin(rs.probability)] == 1.0
    assert rs.weight[np.argmax(rs.probability)] < 1.0


def test_retention_lowers_priority_over_nights() -> None:
    # Formula: R = floor + (1 - floor) * 2^(-d / half_life).
    r = retention_factor(10, np.array([10.0, 3.0, 3.0, 3.0]), np.array([np.nan, np.nan, 8.0, np.nan]),
                         np.array([np.nan, np.nan, np.nan, 9.0]), half_life_nights=2.0, floor=0.1)
    np.testing.assert_allclose(r, [1.0, 0.1 + 0.9 * 2 ** -3.5, 0.1 + 0.9 * 0.5, 0.1 + 0.9 * 2 ** -0.5])

    # One document replayed in run 1 and never again: its priority falls night after night,
    # while a document tagged salient every night keeps its full priority.
    base = example_pool(20, run_id=1, new_every=1)
    target, salient = base.table["doc_id"][0].as_py(), base.table["doc_id"][1].as_py()
    state = pa.table({"doc_id": [target, salient], "last_replayed_run": [1, 1], "last_salient_run": [None, 1],
                      "times_replayed": [1, 1]}, schema=STATE_SCHEMA)
    params = ReplayParams(size=100, half_life_nights=3.0, retention_floor=0.05, record_state=False)
    pri, sal = [], []
    for night in range(2, 9):
        pool = Pool(base.table, night, 0, "label")
        rs = build_set(pool, state, params, night, night, "api")
        ids = rs.pool_ids.to_pylist()
        pri.append(rs.priority[ids.index(target)])
        sal.append(rs.priority[ids.index(salient)])
        state = state.set_column(2, "last_salient_run", pa.array([None, night], pa.int32()))
    assert all(a > b for a, b in zip(pri, pri[1:])), pri
    assert pri[-1] / pri[0] == pytest.approx((0.05 + 0.95 * 2 ** (-7 / 3)) / (0.05 + 0.95 * 2 ** (-1 / 3)))
    assert len(set(np.round(sal, 12))) == 1  # same score, refreshed every night: no decay

    # Chained through the stored state: documents drawn (or tagged salient) in run 3 are refreshed
    # then; the others decay from when they were first seen (run 1).
    pool = example_pool(40, run_id=3, new_every=1000)  # all but one first seen in run 1
    rs = build_set(pool, STATE_SCHEMA.empty_table(), ReplayParams(size=10), 1, 0, "api")
    touched = set(rs.state_rows["doc_id"].to_pylist())
    assert set(rs.items["doc_id"].to_pylist()) <= touched
    rs2 = build_set(Pool(pool.table, 6, 0, "label"), rs.state_rows, ReplayParams(size=10), 2, 1, "api")
    first = dict(zip(pool.table["doc_id"].to_pylist(), pool.table["first_seen_run"].to_pylist()))
    for d, got in zip(rs2.pool_ids.to_pylist(), rs2.retention):
        ref = 3 if d in touched else first[d]
        assert got == pytest.approx(0.1 + 0.9 * 2 ** (-(6 - ref) / 7)), d
    assert 0 < len(touched) < 40


def test_sets_are_deterministic_under_a_seed() -> None:
    pool = example_pool(100)
    a = build_set(pool, STATE_SCHEMA.empty_table(), ReplayParams(size=3000, seed=5), 1, 0, "api")
    b = build_set(Pool(pool.table.take(np.random.default_rng(0).permutation(100)), pool.run_id, 0, "label"),
                  STATE_SCHEMA.empty_table(), ReplayParams(size=3000, seed=5), 1, 0, "api")
    c = build_set(pool, STATE_SCHEMA.empty_table(), ReplayParams(size=3000, seed=6), 1, 0, "api")
    assert a.items.equals(b.items)  # the pool's row order does not matter
    assert not a.items.equals(c.items)
    assert a.state_rows.equals(b.state_rows)


def test_missing_terms_contribute_nothing_and_are_recorded() -> None:
    pool = example_pool(50)
    empty = {c: pa.nulls(50, POOL_SCHEMA.field(c).type) for c in POOL_SCHEMA.names[3:]}
    bare = Pool(pool.table.select(["doc_id", "shard_id", "first_seen_run"]).append_column(
        "surprise", empty["surprise"]).append_column("utility", empty["utility"]).append_column(
        "novelty", empty["novelty"]).append_column("importance", empty["importance"]).append_column(
        "protected", empty["protected"]).append_column("strata", empty["strata"]), pool.run_id, 0, None)
    rs = build_set(bare, STATE_SCHEMA.empty_table(), ReplayParams(size=100, new_fraction=0.0), 1, 0, "api")
    assert rs.set_row["terms"] == [] and set(rs.set_row["terms_missing"]) == set(TERMS)
    old = rs.probability > 0
    assert np.allclose(rs.probability[old], 1 / old.sum())  # nothing to prioritise: uniform over the old documents
    assert np.allclose(rs.weight[old], 1.0)

    # Utility scored on half the documents: only that term is used, and a document no term scores
    # gets the top score, as new items get the maximum priority.
    rs = build_set(pool, STATE_SCHEMA.empty_table(), ReplayParams(size=100, weights={"surprise": 0.0, "rarity": 0.0}),
                   1, 0, "api")
    assert rs.set_row["terms"] == ["utility"] and rs.set_row["n_unscored"] == 25 == rs.unscored.sum()
    assert np.all(rs.score[rs.unscored] == rs.score[~rs.unscored].max())


def test_rare_strata_get_higher_priority() -> None:
    pool = example_pool(500)
    rs = build_set(pool, STATE_SCHEMA.empty_table(), ReplayParams(size=100, weights={"surprise": 0, "utility": 0}),
                   1, 0, "api")
    labels = dict(zip(pool.table["doc_id"].to_pylist(), [s[0] for s in pool.table["strata"].to_pylist()]))
    counts: dict[str, int] = {}
    for v in labels.values():
        counts[v] = counts.get(v, 0) + 1
    by_label: dict[str, float] = {}
    for d, p in zip(rs.pool_ids.to_pylist(), rs.priority):
        by_label[labels[d]] = p
    ordered = sorted(counts, key=counts.get)
    assert [by_label[lab] for lab in ordered] == sorted(by_label.values(), reverse=True), (counts, by_label)


def test_params_are_validated() -> None:
    with pytest.raises(ValueError, match="unknown term"):
        ReplayParams(weights={"loudness": 1.0})
    with pytest.raises(ValueError, match=r"\[stages.replay\]: unknown key\(s\) sise"):
        ReplayParams.from_mapping({"sise": 3})
    with pytest.raises(ValueError, match="not both"):
        ReplayParams(importance_column="x", importance_sql="SELECT 1")


# -- in a real nightly run -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def replay_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Nights 1 and 2 run through the real flow with the replay stage enabled."""
    base = tmp_path_factory.mktemp("replay-flow")
    root = base / "shards"
    root.mkdir()
    rules = base / "rules.toml"
    rules.write_text('[run]\nstages = ["dedup", "replay"]\n[stages.replay]\nsize = 600\nseed = 3\nnew_fraction = 0.4\n')
    db = base / "glia.duckdb"
    for n in (1, 2):
        shutil.copytree(NIGHTS[n], root / f"night{n}")
        assert run_night(root, db, rules).status == "completed"
    return db


def test_flow_writes_v_replay(replay_db: Path) -> None:
    sets = query(replay_db, "SELECT set_id, run_id, origin, size, n_pool, n_pool_new, terms FROM replay_sets ORDER BY set_id")
    assert [s[:4] for s in sets] == [(1, 1, "flow", 600), (2, 2, "flow", 600)]
    assert sets[0][4] == sets[0][5] and 0 < sets[1][5] < sets[1][4]  # night 1: all new; night 2: a mix
    assert sets[1][6] == ["rarity"]  # only label strata exist without the scoring stages
    rows = query(replay_db, """
        SELECT set_id, sum("count"), count(*), count(shard_path), max(weight), min(weight) > 0,
               sum("count") FILTER (WHERE is_new), bool_and(latest = (set_id = 2))
        FROM v_replay GROUP BY set_id ORDER BY set_id""")
    assert [r[:4] for r in rows] == [(1, 600, rows[0][2], rows[0][2]), (2, 600, rows[1][2], rows[1][2])]
    assert all(r[4] <= 1.0 and r[5] and r[7] for r in rows)
    assert rows[0][6] == 600 and 150 < rows[1][6] < 330  # new_fraction 0.4 of 600 draws on night 2
    # Duplicates are never replayed; every replayed document is an active document.
    assert query(replay_db, "SELECT count(*) FROM v_replay r JOIN v_duplicates d USING (doc_id)") == [(0,)]
    assert query(replay_db, "SELECT count(*) FROM v_replay r ANTI JOIN documents d USING (doc_id)") == [(0,)]
    # Retention state: every drawn document was replayed in the run that drew it.
    assert query(replay_db, """
        SELECT count(*) FROM replay_items i JOIN replay_sets s USING (set_id) JOIN replay_state st USING (doc_id)
        WHERE st.last_replayed_run < s.run_id""") == [(0,)]
    assert query(replay_db, "SELECT value FROM run_metrics WHERE run_id = 2 AND metric = 'replay.draws'") == [(600.0,)]


def test_build_and_export_outside_the_flow(replay_db: Path, tmp_path: Path) -> None:
    from glia.curation.dataloader import ReplayPlan, iter_replay
    from glia.storage.lock import RunInProgressError, RunLock

    with RunLock(replay_db):  # a night in progress: the build must wait its turn
        with pytest.raises(RunInProgressError):
            build_from_catalog(replay_db, ReplayParams(size=50))
    # Queue some documents for pruning (as the decide stage does): they are never replayed.
    queued = [r[0] for r in query(replay_db, "SELECT doc_id FROM v_replay WHERE set_id = 2 ORDER BY doc_id LIMIT 40")]
    con = duckdb.connect(str(replay_db))
    try:
        con.execute("CREATE TABLE prune_queue (doc_id VARCHAR, status VARCHAR)")
        con.executemany("INSERT INTO prune_queue VALUES (?, ?)",
                        [[d, ("queued", "quarantined", "applied", "restored")[i % 4]] for i, d in enumerate(queued)])
    finally:
        con.close()
    before = query(replay_db, "SELECT count(*), sum(times_replayed) FROM replay_state")
    row = build_from_catalog(replay_db, ReplayParams(size=20_000, record_state=False,
                                                     importance_sql="SELECT doc_id, row AS importance FROM documents"))
    assert row["set_id"] == 3 and row["origin"] == "cli" and row["terms"] == ["rarity", "importance"]
    assert query(replay_db, "SELECT count(*), sum(times_replayed) FROM replay_state") == before  # a what-if set
    got = {r[0] for r in query(replay_db, "SELECT doc_id FROM v_replay WHERE set_id = 3")}
    restored = set(queued[3::4])
    assert not (set(queued) - restored) & got and restored & got

    sid, n = export_set(replay_db, tmp_path / "set.parquet")
    assert (sid, n) == (3, len(got))
    plan = ReplayPlan.from_parquet(tmp_path / "set.parquet")
    assert plan.set_id == 3 and len(plan) == 20_000
    with open_db(replay_db) as con:
        text = dict(con.execute("SELECT doc_id, shard_path FROM documents").fetchall())
    items = list(iter_replay(ReplayPlan.from_db(replay_db, set_id=2), seed=1))
    assert len(items) == 600 and all(i["text"] and i["doc_id"] in text for i in items)


def test_evaluation_text_is_never_replayed() -> None:
    """Documents in the eval_set stratum (ReplayParams.exclude_strata) leave the pool, whatever
    their other strata; the rest keep their order and columns."""
    from glia.curation.replay import without_strata

    table = pa.table({"doc_id": ["a", "b", "c", "d"],
                      "strata": pa.array([["label=x", "eval_set"], None, ["rare_source:jargon"], ["eval_set"]],
                                         pa.list_(pa.string()))})
    assert ReplayParams().exclude_strata == ("eval_set",)
    assert without_strata(table, ReplayParams().exclude_strata)["doc_id"].to_pylist() == ["b", "c"]
    assert without_strata(table, ())["doc_id"].to_pylist() == ["a", "b", "c", "d"]
    assert ReplayParams.from_mapping({"exclude_strata": []}).exclude_strata == ()


def test_the_readme_recipe_mixes_new_shards_with_the_replay_set(replay_db: Path, tmp_path: Path) -> None:
    # The README's trainer recipe, run as written: only the database, the shard folder and the
    # model (a bag-of-bytes loss with one parameter) are filled in.
    import re

    import torch

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = text.index("**Mixing tonight's new shards with the replay set at ratio r**")
    code = re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)
    assert 'ReplayPlan.from_db("glia.duckdb")' in code and 'ds.dataset("shards/tonight")' in code
    code = code.replace('"glia.duckdb"', repr(str(replay_db))).replace('"shards/tonight"', repr(str(NIGHTS[2])))
    scale = torch.nn.Parameter(torch.ones(()))
    seen: list[int] = []

    def per_doc_loss(texts: list[str]) -> torch.Tensor:
        seen.append(len(texts))
        return scale * torch.tensor([len(t) / 1000.0 for t in texts])

    opt = torch.optim.SGD([scale], lr=1e-3)
    exec(compile(code, "README.md recipe", "exec"), {"per_doc_loss": per_doc_loss, "opt": opt})
    assert seen and set(seen) == {40}  # every step: 30 new documents and 10 replayed ones
    assert scale.item() < 1.0  # the optimiser stepped
