"""Reading replay sets for training: every draw exactly once per epoch (plain iterator, torch
IterableDataset with 2 workers, map-style sampler), texts from the real shards, fixed order."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from torch.utils.data import DataLoader

from conftest import NIGHTS
from glia.curation.dataloader import (
    ReplayDataset, ReplayIterableDataset, ReplayPlan, ReplaySampler, ShardTextReader, iter_batches, iter_replay,
)

# Workers start from a fresh forkserver, not forked from this process: other test modules run
# Prefect flows in-process, and Prefect 3.8's events worker leaves a thread at-exit hook that
# fails (AssertionError) in any forked child, which the DataLoader reports as "worker exited
# unexpectedly with exit code 1".
WORKERS = "forkserver"


@pytest.fixture(scope="module")
def shards() -> dict[str, pa.Table]:
    """Two real shards from different nights: path -> (id, text)."""
    paths = [sorted(NIGHTS[1].glob("*.parquet"))[1], sorted(NIGHTS[3].glob("*.parquet"))[0]]
    return {str(p): pq.read_table(p, columns=["id", "text"]) for p in paths}


@pytest.fixture(scope="module")
def plan(shards: dict[str, pa.Table]) -> ReplayPlan:
    """A replay set over 300 documents of the two shards, drawn 1-4 times each (1,000+ draws)."""
    rng = np.random.default_rng(4)
    parts = []
    for path, t in shards.items():
        rows = np.sort(rng.choice(t.num_rows, 150, replace=False))
        parts.append(pa.table({
            "doc_id": t["id"].take(pa.array(rows)), "weight": pa.array(rng.uniform(0.2, 1.0, 150)),
            "count": pa.array(rng.integers(1, 5, 150)), "shard_path": pa.array([path] * 150),
            "row": pa.array(rows, pa.int64()),
        }))
    return ReplayPlan.from_rows(pa.concat_tables(parts), set_id=7)


def expected(plan: ReplayPlan) -> Counter:
    return Counter(plan.draws["doc_id"].to_pylist())


def test_plain_iterator_yields_each_draw_once_with_its_text(plan: ReplayPlan, shards: dict[str, pa.Table]) -> None:
    texts = {i: t for s in shards.values() for i, t in zip(s["id"].to_pylist(), s["text"].to_pylist())}
    items = list(iter_replay(plan, seed=3, epoch=0))
    per_doc = dict(zip(plan.draws["doc_id"].to_pylist(), plan.draws["count"].to_pylist()))
    assert len(items) == len(plan) == sum(per_doc.values())
    assert sorted(i["draw"] for i in items) == list(range(len(plan)))
    assert Counter(i["doc_id"] for i in items) == expected(plan)
    assert all(i["text"] == texts[i["doc_id"]] and i["set_id"] == 7 for i in items)
    weight = dict(zip(plan.draws["doc_id"].to_pylist(), plan.draws["weight"].to_pylist()))
    assert all(i["weight"] == weight[i["doc_id"]] for i in items)
    # Parts (workers or ranks) split an epoch with no overlap and no gap.
    parts = [[i["draw"] for i in iter_replay(plan, seed=3, epoch=0, part=k, n_parts=3, chunk_size=50)] for k in range(3)]
    assert sorted(d for p in parts for d in p) == list(range(len(plan)))
    batches = list(iter_batches(iter_replay(plan, seed=3), 64))
    assert sum(len(b["text"]) for b in batches) == len(plan) and len(batches[0]["weight"]) == 64


def test_order_is_fixed_by_seed_and_epoch(plan: ReplayPlan) -> None:
    def order(seed: int, epoch: int) -> list[int]:
        return [i["draw"] for i in iter_replay(plan, seed=seed, epoch=epoch)]

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1) and order(1, 0) != order(2, 0)
    assert sorted(order(1, 1)) == sorted(order(2, 0))


def test_dataloader_with_two_workers_yields_each_draw_once_per_epoch(plan: ReplayPlan) -> None:
    ds = ReplayIterableDataset(plan, seed=9, chunk_size=32)
    loader = DataLoader(ds, batch_size=32, num_workers=2, multiprocessing_context=WORKERS)
    seen = []
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        draws, ids, weights = [], [], []
        for batch in loader:
            draws += batch["draw"].tolist()
            ids += batch["doc_id"]
            weights += batch["weight"].tolist()
        assert len(draws) == len(plan) and sorted(draws) == list(range(len(plan)))
        assert Counter(ids) == expected(plan)
        # With chunk_size = batch_size the loader's order is the epoch's order exactly.
        assert draws == [i["draw"] for i in iter_replay(plan, seed=9, epoch=epoch)]
        seen.append(draws)
    assert seen[0] != seen[1]


def test_map_style_sampler_with_workers(plan: ReplayPlan) -> None:
    sampler = ReplaySampler(plan, seed=2)
    loader = DataLoader(ReplayDataset(plan), batch_size=50, sampler=sampler, num_workers=2, multiprocessing_context=WORKERS)
    draws = [d for b in loader for d in b["draw"].tolist()]
    assert draws == list(plan.order(2, 0)) and len(sampler) == len(plan)
    # Split over two ranks: disjoint halves that together cover the epoch.
    halves = [list(ReplaySampler(plan, seed=2, rank=r, world_size=2)) for r in (0, 1)]
    assert sorted(halves[0] + halves[1]) == list(range(len(plan))) and not set(halves[0]) & set(halves[1])
    # Indexing the trainer's own dataset: positions of the drawn documents in its order.
    own = sorted(set(plan.draws["doc_id"].to_pylist()), reverse=True)
    mapped = list(ReplaySampler(plan, seed=2, index=own))
    assert Counter(own[i] for i in mapped) == expected(plan)
    np.testing.assert_array_equal(sampler.weights(), plan.draws["weight"].to_numpy()[plan.order(2, 0)])


def test_unexpanded_plan_has_one_draw_per_document(plan: ReplayPlan) -> None:
    rows = plan.draws.group_by(["doc_id", "weight", "count", "shard_path", "row"]).aggregate([])
    flat = ReplayPlan.from_rows(rows, 7, expand=False)
    assert len(flat) == 300 and Counter(i["doc_id"] for i in iter_replay(flat)) == Counter(set(expected(plan)))


def test_a_changed_shard_fails_loudly(plan: ReplayPlan, tmp_path: Path) -> None:
    bad = plan.draws.slice(0, 5).set_column(5, "row", pa.array([0, 1, 2, 3, 4], pa.int64()))
    rows = bad.drop(["draw"])
    with pytest.raises(ValueError, match="the shard changed since it was indexed"):
        list(iter_replay(ReplayPlan.from_rows(rows, 1)))
    gone = rows.set_column(rows.schema.get_field_index("shard_path"), "shard_path", pa.nulls(5, pa.string()))
    with pytest.raises(ValueError, match="no longer in an active shard"):
        ReplayPlan.from_rows(gone, 1)
    with pytest.raises(ValueError, match="cannot read columns"):
        ShardTextReader(text_column="body").read(rows["shard_path"][:1], np.array([0]), rows["doc_id"][:1])
    with pytest.raises(ValueError, match="has 400 rows, the replay set wants row 400"):
        ShardTextReader().read(pa.array([str(sorted(NIGHTS[3].glob("*.parquet"))[0])]), np.array([400]), pa.array(["x"]))
