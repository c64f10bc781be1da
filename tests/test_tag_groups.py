"""CPU taggers that need nothing and read batches of one size share one read of each shard:
the night reads every shard once for its documents and once for all of them together."""

from __future__ import annotations

from pathlib import Path

import pytest

import glia.engine.pipeline as pipeline
from conftest import NIGHTS, query
from glia.engine.config import GliaConfig, RunOptions
from glia.engine.ingest import ReadSpec
from glia.engine.night import run_night
from glia.engine.pipeline import NightContext, tag_groups, tag_shard_many
from glia.storage.catalog import Catalog
from glia.storage.shards import ShardFile
from glia.taggers import registry

CPU = ["exact", "minhash", "pii", "staleness", "quality"]


def names(groups) -> list[list[str]]:
    return [[t.name for t in g] for g in groups]


def test_cpu_taggers_of_one_batch_size_share_a_group_and_the_rest_stand_alone() -> None:
    taggers = registry.build(["exact", "embedding", "minhash", "quality", "pii"])
    # quality reads 2,000 documents at a time, the others 10,000 (the run's batch size);
    # embedding wants a GPU.
    assert names(tag_groups(taggers, 10_000)) == [["exact", "minhash", "pii"], ["embedding"], ["quality"]]
    assert names(tag_groups(taggers, 2_000)) == [["exact", "minhash", "quality", "pii"], ["embedding"]]


def test_a_tagger_that_needs_another_or_is_needed_stays_alone() -> None:
    taggers = registry.build(["exact", "embedding", "risk"], {"risk": {"backend": "minilm-head"}})
    risk = next(t for t in taggers if t.name == "risk")
    assert risk.needs == ("embedding",)
    assert names(tag_groups(taggers, 10_000)) == [["exact"], ["embedding"], ["risk"]]


@pytest.fixture()
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The shard path of every read the night's tag and ingest steps make."""
    seen: list[str] = []
    real = pipeline.read_documents

    def counting(spec, *args, **kwargs):
        seen.append(spec.shard.path)
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(pipeline, "read_documents", counting)
    return seen


def test_the_night_reads_each_shard_once_for_every_cpu_tagger(tmp_path: Path, reads: list[str]) -> None:
    cfg = GliaConfig(run=RunOptions(taggers=tuple(CPU), stages=("dedup",)))
    run_night(NIGHTS[1], tmp_path / "glia.duckdb", cfg)
    shards = sorted(set(reads))
    # ingest, the group (exact, minhash, pii, staleness), quality (smaller batches)
    assert sorted(reads) == sorted(shards * 3)
    rows = query(tmp_path / "glia.duckdb", "SELECT tagger, count(*) FROM tag_files GROUP BY 1 ORDER BY 1")
    assert dict(rows) == {**{t: len(shards) for t in CPU}, "documents": len(shards),
                          "exact_dup": len(shards), "near_dup": len(shards)}


def test_a_whole_file_left_by_a_crashed_attempt_is_reused_and_only_the_rest_computed(tmp_path: Path) -> None:
    cfg = GliaConfig(run=RunOptions(taggers=("exact", "minhash", "pii"), stages=("dedup",)))
    db = tmp_path / "glia.duckdb"
    run_night(NIGHTS[1], db, cfg)
    shard_id = query(db, "SELECT min(shard_id) FROM tag_files")[0][0]
    files = dict(query(db, "SELECT tagger, path FROM tag_files WHERE shard_id = ?", [shard_id]))
    kept = Path(files["minhash"]).stat().st_mtime_ns
    Path(files["exact"]).unlink()  # as if the attempt died after minhash's file was renamed into place
    Path(files["pii"]).unlink()
    with Catalog(db, read_only=True) as cat:
        row = next(r for r in cat.shards() if r.shard_id == shard_id)
    spec = ReadSpec(ShardFile(row.path, row.size, row.mtime_ns, row.footer_hash), cfg.columns, cfg.run.batch_size)
    ctx = NightContext.start(str(NIGHTS[1]), db, tmp_path / "glia_data", cfg, 2)

    again = tag_shard_many(ctx, spec, registry.build(["exact", "minhash", "pii"]))

    assert [f.tagger for f in again] == ["exact", "minhash", "pii"]
    assert Path(files["minhash"]).stat().st_mtime_ns == kept
    assert all(Path(f.path).exists() and f.n_rows == row.n_docs for f in again)
