"""Shards behind an fsspec URL are discovered, fingerprinted and read like local ones."""

from __future__ import annotations

import uuid
from pathlib import Path

import fsspec

from conftest import NIGHTS, query, run_night


def test_shards_from_an_fsspec_url(tmp_path: Path) -> None:
    fs = fsspec.filesystem("memory")
    root = f"/glia-{uuid.uuid4().hex}"
    local = sorted(NIGHTS[1].glob("*.parquet"))
    for p in local:
        fs.pipe(f"{root}/night1/{p.name}", p.read_bytes())
    db = tmp_path / "glia.duckdb"

    first = run_night(f"memory://{root}", db)  # type: ignore[arg-type]
    assert first.status == "completed"
    assert first.counts["shards_new"] == len(local)
    paths = [p for (p,) in query(db, "SELECT path FROM shards ORDER BY path")]
    assert paths == [f"memory://{root}/night1/{p.name}" for p in local]
    assert query(db, "SELECT count(DISTINCT shard_id) FROM documents") == [(len(local),)]
    assert query(db, "SELECT count(*) FROM v_duplicates")[0][0] > 0

    again = run_night(f"memory://{root}", db)  # type: ignore[arg-type]
    assert again.status == "nothing_new"
    assert again.counts["shards_unchanged"] == len(local)
