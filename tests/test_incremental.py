"""Incremental discovery: each night processes only what is new or changed."""

from __future__ import annotations

import os
import shutil
import unicodedata

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xxhash

from conftest import NIGHTS, ThreeNights, file_mtimes, query, run_night, snapshot
from glia.storage.migrations import LATEST_VERSION

RUN_COUNTS = (
    "SELECT run_id, status, n_shards_seen, n_shards_new, n_shards_changed, n_shards_unchanged, "
    "n_shards_rejected, n_shards_missing, n_docs, n_skipped_rows FROM runs ORDER BY run_id"
)


def test_each_night_processes_only_its_new_shards(three_nights: ThreeNights) -> None:
    assert query(three_nights.db, RUN_COUNTS) == [
        (1, "completed", 3, 3, 0, 0, 0, 0, 1500, 0),
        (2, "completed", 5, 2, 0, 3, 0, 0, 800, 0),
        (3, "completed", 7, 2, 0, 5, 0, 0, 800, 0),
        (4, "nothing_new", 7, 0, 0, 7, 0, 0, 0, 0),
    ]
    for night in (1, 2, 3):
        o = three_nights.outcomes[night]
        assert (o.run_id, o.status, o.rejected, o.skipped.num_rows) == (night, "completed", {}, 0)
    # Every shard's tag files were written by the run that first saw the shard, never again.
    rows = query(three_nights.db, """
        SELECT s.path, s.first_run, s.last_run, s.status, list(DISTINCT f.run_id), count(*)
        FROM shards s JOIN tag_files f USING (shard_id) GROUP BY ALL ORDER BY s.path""")
    assert len(rows) == 7
    for path, first_run, last_run, status, runs, n_files in rows:
        night = int(path.split("/night")[1][0])
        assert (first_run, last_run, status, runs) == (night, night, "active", [night]), path
        assert n_files == 5  # documents, exact, minhash, exact_dup, near_dup


def test_files_of_earlier_nights_are_not_rewritten(three_nights: ThreeNights) -> None:
    m = three_nights.mtimes_after
    for earlier, later in ((1, 2), (2, 3), (1, 3), (3, 4)):
        changed = [p for p, t in m[earlier].items() if m[later].get(p) != t]
        assert changed == [], (earlier, later, changed)
    new_tag_files = [p for p in m[3] if p not in m[2] and p.startswith("tags/")]
    assert len(new_tag_files) == 2 * 5  # night 3: two shards x five tag families
    assert set(m[4]) == set(m[3])


def test_documents_record_the_night_they_arrived(three_nights: ThreeNights, night_of_id: dict[str, int]) -> None:
    got = dict(query(three_nights.db, "SELECT doc_id, first_seen_run FROM documents"))
    assert got == night_of_id
    assert query(three_nights.db, "SELECT count(*), count(DISTINCT doc_id) FROM v_documents") == [(3100, 3100)]


def test_rerun_with_nothing_new_changes_nothing_but_runs(three_nights: ThreeNights) -> None:
    before, after = three_nights.state_after[3], three_nights.state_after[4]
    assert before.keys() == after.keys()
    for table in before:
        assert after[table] == before[table], table
    assert len(before["v_documents"]) == 3100 and len(before["v_duplicates"]) > 200
    assert len(before["shards"]) == 7 and len(before["index_segments"]) == 12
    o = three_nights.outcomes[4]
    assert o.status == "nothing_new" and o.counts["docs"] == 0 and o.run_id == 4
    assert query(three_nights.db, "SELECT n_docs, n_exact_dups, n_near_dups FROM runs WHERE run_id = 4") == [(0, 0, 0)]


# -- changed and touched shards ----------------------------------------------------------------


@pytest.fixture
def night1_db(tmp_path):
    root = tmp_path / "shards"
    shutil.copytree(NIGHTS[1], root)
    db = tmp_path / "glia.duckdb"
    assert run_night(root, db).status == "completed"
    return root, db


def test_touched_shard_is_not_reprocessed(night1_db) -> None:
    root, db = night1_db
    shard = root / "part-00001.parquet"
    before = snapshot(db)
    tags_before = file_mtimes(db.parent / "glia_data")
    st = shard.stat()
    new_mtime = st.st_mtime_ns + 3_600 * 10**9
    os.utime(shard, ns=(st.st_atime_ns, new_mtime))

    outcome = run_night(root, db)

    assert outcome.status == "nothing_new"
    assert (outcome.counts["shards_unchanged"], outcome.counts["shards_changed"], outcome.counts["docs"]) == (3, 0, 0)
    after = snapshot(db)
    for table in ("tag_files", "index_segments", "skipped", "v_documents", "v_duplicates"):
        assert after[table] == before[table], table
    assert file_mtimes(db.parent / "glia_data") == tags_before
    # Same shard versions, same status; only the recorded mtime follows the file.
    shards = {r[1]: r for r in query(db, "SELECT shard_id, path, status, mtime_ns, first_run FROM shards")}
    assert len(shards) == 3
    sid, _, status, mtime, first_run = shards[str(shard)]
    assert (status, first_run) == ("active", 1)
    assert abs(mtime - new_mtime) < 1_000  # recorded through fsspec's float seconds
    assert [r for r in before["shards"] if r[1] == str(shard)][0][0] == sid


def edit_one_text(path, row: int, suffix: str) -> tuple[str, str]:
    """Rewrite a shard with one document's text changed; return (id, new text)."""
    t = pq.read_table(path)
    texts = t["text"].to_pylist()
    texts[row] = texts[row] + suffix
    t = t.set_column(t.schema.get_field_index("text"), "text", pa.array(texts, pa.string()))
    pq.write_table(t, path)
    return t["id"][row].as_py(), texts[row]


def test_changed_shard_is_reprocessed_and_old_version_superseded(night1_db) -> None:
    root, db = night1_db
    shard = root / "part-00002.parquet"
    (old_id,) = query(db, "SELECT shard_id FROM shards WHERE path = ?", [str(shard)])[0]
    old_hashes = dict(query(db, "SELECT doc_id, text_hash FROM v_documents"))
    doc, text = edit_one_text(shard, 17, " And so it ended.")

    outcome = run_night(root, db)

    assert outcome.status == "completed"
    c = outcome.counts
    assert (c["shards_new"], c["shards_changed"], c["shards_unchanged"], c["docs"], c["skipped_rows"]) == (0, 1, 2, 500, 0)
    rows = query(db, "SELECT shard_id, status, first_run, last_run FROM shards WHERE path = ? ORDER BY first_run", [str(shard)])
    assert len(rows) == 2
    assert rows[0] == (old_id, "superseded", 1, 2)
    new_id = rows[1][0]
    assert new_id != old_id and rows[1][1:] == ("active", 2, 2)
    # The views show the new version only: still one row per document.
    assert query(db, "SELECT count(*), count(DISTINCT doc_id) FROM v_documents") == [(1500, 1500)]
    assert query(db, "SELECT count(*) FROM documents WHERE shard_id = ?", [old_id]) == [(0,)]
    new_hash = xxhash.xxh3_64_intdigest(" ".join(unicodedata.normalize("NFKC", text).lower().split()).encode())
    # The edited document is new text in a new shard version, but it was first seen in night 1.
    got = query(db, "SELECT shard_id, first_seen_run, text_hash FROM v_documents WHERE doc_id = ?", [doc])
    assert got == [(new_id, 1, new_hash)]
    assert query(db, "SELECT DISTINCT first_seen_run FROM v_documents WHERE shard_id = ?", [new_id]) == [(1,)]
    assert query(db, "SELECT DISTINCT first_seen_run FROM documents") == [(1,)]
    assert new_hash != old_hashes[doc]
    # Other documents of the rewritten shard keep their text hash; other shards are untouched.
    same = query(db, "SELECT doc_id, text_hash FROM v_documents WHERE shard_id = ? AND doc_id <> ?", [new_id, doc])
    assert len(same) == 499 and all(old_hashes[d] == h for d, h in same)
    assert query(db, "SELECT count(*) FROM tag_files WHERE run_id = 2") == [(5,)]
    assert query(db, "SELECT count(*) FROM skipped") == [(0,)]


def kept_after_following_survivors(db) -> list[tuple[str, str]]:
    """Follow ``survivor_id`` from every duplicate; return the chains that never reach a
    kept document (a cycle, or a document named as its own survivor)."""
    surv = dict(query(db, "SELECT doc_id, survivor_id FROM v_duplicates"))
    broken = []
    for d in surv:
        seen, cur = {d}, surv[d]
        while cur in surv:
            if cur in seen:
                broken.append((d, cur))
                break
            seen.add(cur)
            cur = surv[cur]
    return sorted(broken)


def test_every_duplicate_chain_ends_at_a_kept_document(three_nights: ThreeNights) -> None:
    assert kept_after_following_survivors(three_nights.db) == []
    assert query(three_nights.db, "SELECT count(*) FROM v_duplicates WHERE survivor_id = doc_id") == [(0,)]


def test_rewriting_a_shard_keeps_one_survivor_per_cluster(night1_db) -> None:
    root, db = night1_db
    # part-00000 holds the survivors of many night-1 clusters whose copies sit in the other shards.
    assert query(db, "SELECT count(*) FROM v_duplicates WHERE survivor_shard_path LIKE '%part-00000%' "
                     "AND shard_path NOT LIKE '%part-00000%'")[0][0] > 10
    survivors_before = set(query(db, "SELECT doc_id FROM v_documents EXCEPT SELECT doc_id FROM v_duplicates"))
    edit_one_text(root / "part-00000.parquet", 3, " And so it ended.")

    assert run_night(root, db).counts["shards_changed"] == 1

    assert query(db, "SELECT count(*) FROM v_duplicates WHERE survivor_id = doc_id") == [(0,)]
    assert kept_after_following_survivors(db) == []
    survivors_after = set(query(db, "SELECT doc_id FROM v_documents EXCEPT SELECT doc_id FROM v_duplicates"))
    assert survivors_after == survivors_before


def test_a_database_from_before_the_first_seen_table_upgrades_on_the_next_run(night1_db) -> None:
    import duckdb

    root, db = night1_db
    # Put the catalog back to schema version 2, the last release without ``first_seen`` (and
    # so without the later ``stage_schema`` too).
    with duckdb.connect(str(db)) as con:
        con.execute("DROP TABLE first_seen")
        con.execute("DROP TABLE stage_schema")
        con.execute("DELETE FROM schema_version WHERE version >= 3")
    doc, _ = edit_one_text(root / "part-00001.parquet", 5, " The end.")

    assert run_night(root, db).status == "completed"

    assert query(db, "SELECT max(version) FROM schema_version") == [(LATEST_VERSION,)]
    assert query(db, "SELECT first_seen_run FROM v_documents WHERE doc_id = ?", [doc]) == [(1,)]
    assert query(db, "SELECT count(*) FROM first_seen") == [(500,)]
