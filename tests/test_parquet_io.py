"""storage.parquet_io.write_atomic: a reader sees no file or a whole one, never a part."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import NIGHTS
from glia.storage.parquet_io import FileWrite, read_metadata, write_all, write_atomic

SCHEMA = pa.schema([("doc_id", pa.string()), ("text", pa.string())])


def real_batches(n_batches: int, size: int = 50) -> list[pa.Table]:
    t = pq.read_table(NIGHTS[2] / "part-00000.parquet", columns=["id", "text"]).rename_columns(["doc_id", "text"])
    return [t.slice(k * size, size) for k in range(n_batches)]


def failing_after(batches: list[pa.Table], exc: BaseException) -> Iterator[pa.Table]:
    yield from batches
    raise exc


def test_write_atomic_writes_all_batches_and_metadata(tmp_path: Path) -> None:
    path = tmp_path / "tags" / "exact@1" / "s.parquet"
    batches = real_batches(3)
    rows = write_atomic(path, iter(batches), SCHEMA, {"tagger": "exact", "shard_id": "s"})
    assert rows == 150
    assert pq.read_table(path).to_pylist() == pa.concat_tables(batches).to_pylist()
    assert read_metadata(path) == {"shard_id": "s", "tagger": "exact"}
    assert sorted(p.name for p in path.parent.iterdir()) == ["s.parquet"]


@pytest.mark.parametrize("exc", [RuntimeError("tagger crashed"), KeyboardInterrupt()])
def test_write_atomic_leaves_no_file_when_the_batches_fail_midway(tmp_path: Path, exc: BaseException) -> None:
    path = tmp_path / "out" / "s.parquet"
    with pytest.raises(type(exc)):
        write_atomic(path, failing_after(real_batches(2), exc), SCHEMA, {"tagger": "exact"})
    assert not path.exists()
    assert list(path.parent.iterdir()) == []  # no temporary file either


def test_failed_rewrite_keeps_the_previous_complete_file(tmp_path: Path) -> None:
    path = tmp_path / "s.parquet"
    first = real_batches(1)
    write_atomic(path, first, SCHEMA, {"version": 1})
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="boom"):
        write_atomic(path, failing_after(real_batches(4), RuntimeError("boom")), SCHEMA, {"version": 2})
    assert path.read_bytes() == before
    assert read_metadata(path) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["s.parquet"]


def test_batch_that_does_not_fit_the_schema_fails_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "s.parquet"
    good = real_batches(1)[0]
    bad = pa.table({"doc_id": ["x"], "other": pa.array([1], pa.int64())})
    with pytest.raises((ValueError, pa.ArrowInvalid, KeyError)):
        write_atomic(path, [good, bad], SCHEMA)
    assert list(tmp_path.iterdir()) == []


def test_read_metadata_of_a_foreign_parquet_file_is_none(tmp_path: Path) -> None:
    assert read_metadata(NIGHTS[1] / "part-00000.parquet") is None


def test_write_all_writes_each_file_whole_and_reports_a_failure_after_the_rest(tmp_path: Path) -> None:
    parts = real_batches(4)
    bad = pa.table({"doc_id": ["x"]})  # no text column: does not fit the schema
    writes = [FileWrite(tmp_path / f"f{i}.parquet", p, SCHEMA, {"i": i}) for i, p in enumerate(parts)]
    assert write_all(writes, workers=2) == [p.num_rows for p in parts]
    for i, p in enumerate(parts):
        assert pq.read_table(tmp_path / f"f{i}.parquet").equals(p) and read_metadata(tmp_path / f"f{i}.parquet") == {"i": i}

    mixed = [FileWrite(tmp_path / "g0.parquet", parts[0], SCHEMA), FileWrite(tmp_path / "g1.parquet", bad, SCHEMA),
             FileWrite(tmp_path / "g2.parquet", parts[2], SCHEMA)]
    with pytest.raises(ValueError):
        write_all(mixed, workers=2)
    assert pq.read_table(tmp_path / "g0.parquet").equals(parts[0])
    assert pq.read_table(tmp_path / "g2.parquet").equals(parts[2])
    assert not (tmp_path / "g1.parquet").exists()
    assert not list(tmp_path.glob(".*.tmp"))
