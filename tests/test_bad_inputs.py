"""Bad inputs: every problem is a clear rejection or a recorded skip naming the file (and
row), and the rest of the night is processed.

Most bad inputs share one two-night run (``bad_run``), since a run costs seconds of Prefect
overhead. Night 1 holds the shards of :func:`build_bad_corpus` (row problems, a missing
``text`` column, CSV bytes, an int64 ``text``, a corrupt data page) and those of
:func:`add_more_bad_shards` (text as binary with invalid UTF-8, invalid UTF-8 in a string
column, a 50 MB document, an empty shard, a truncated file, no ``id`` column, an unreadable
file, and two shards whose schema changes on night 2). Night 2 adds a shard reusing an id of
night 1 and rewrites the drifting shards.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import NIGHTS, glia, query, run_night
from glia.core.strings import as_utf8
from glia.curation.dedup import NearDup
from glia.engine.config import ConfigError, GliaConfig, RunOptions, load_config
from glia.engine.ingest import ReadSpec, read_documents
from glia.engine.pipeline import NightParts
from glia.engine.reindex import dedup_stage
from glia.storage.shards import discover
from glia.core.text import hash_strings, normalize

NO_WORDS = "!!! ... --- ???"
HUGE_BYTES = 50 * 1024 * 1024
RULES = '[columns]\nextra = ["lang"]\n[run]\ntaggers = ["exact", "minhash", "quality"]\n'


@dataclass
class BadCorpus:
    root: Path
    good: Path  # 30 clean documents
    rows: Path  # row-level problems
    no_text: Path  # no `text` column
    not_parquet: Path  # CSV bytes named .parquet
    int_text: Path  # text column of int64
    corrupt: Path  # valid footer, corrupt text data
    good_ids: list[str]
    rows_ids: list[str]  # ids as written in `rows`
    dup_id: str  # repeated inside `rows` (rows 2 and 7)


def source_table() -> pa.Table:
    return pq.read_table(NIGHTS[1] / "part-00000.parquet")


def build_bad_corpus(root: Path) -> BadCorpus:
    """Small shards cut from the example corpus's real documents, each with one problem."""
    root.mkdir(parents=True)
    src = source_table()
    good = src.slice(0, 30)
    pq.write_table(good, root / "a_good.parquet")
    good_ids = good["id"].to_pylist()

    rows = src.slice(50, 10).to_pylist()
    rows[4]["text"] = None
    rows[5]["text"] = "  \n\t  "
    rows[7]["id"] = rows[2]["id"]  # duplicate id inside the shard
    rows[8]["id"] = good_ids[3]  # id already used by an earlier shard tonight
    rows[9]["text"] = NO_WORDS  # no words at all: still a document
    pq.write_table(pa.Table.from_pylist(rows, schema=src.schema), root / "b_rows.parquet")

    pq.write_table(src.slice(100, 5).rename_columns(["id", "body", "source", "timestamp", "label"]),
                   root / "c_no_text.parquet")
    (root / "d_x.parquet").write_text("id,text\nx-1,this is a CSV file with a Parquet name\n")
    pq.write_table(pa.table({"id": ["int-1", "int-2"], "text": pa.array([1, 2], pa.int64())}),
                   root / "e_int_text.parquet")

    # A file with an intact footer whose text column chunk is corrupt: only reading the
    # data finds out, in the middle of the ingest.
    corrupt = root / "f_corrupt.parquet"
    pq.write_table(src.slice(200, 20), corrupt, compression="snappy")
    chunk = pq.ParquetFile(corrupt).metadata.row_group(0).column(1)
    assert chunk.path_in_schema == "text"
    start = min(o for o in (chunk.dictionary_page_offset, chunk.data_page_offset) if o is not None)
    data = bytearray(corrupt.read_bytes())
    mid = start + chunk.total_compressed_size // 2
    data[mid : mid + 64] = b"\xff" * 64
    corrupt.write_bytes(bytes(data))

    return BadCorpus(root, root / "a_good.parquet", root / "b_rows.parquet", root / "c_no_text.parquet",
                     root / "d_x.parquet", root / "e_int_text.parquet", corrupt, good_ids,
                     [r["id"] for r in rows], rows[2]["id"])


@dataclass
class MoreBad:
    """Night-1 shards of the shared run only (the strict CLI test keeps the small set)."""

    binary: Path  # text stored as binary; rows 2 and 5 are not UTF-8; `lang` int64
    binary_ids: list[str]
    binary_texts: list[str]  # the UTF-8 rows decoded
    bad_utf8_at: dict[int, int]  # row -> byte offset of the first bad byte
    bad_string: Path  # a string column with invalid UTF-8: text in row 1, id in row 3
    bad_string_ids: list[str | None]
    huge: Path  # row 1 is a 50 MB document of real text
    huge_ids: list[str]
    huge_bytes: int
    drift: Path  # `label` and `lang` int64 tonight; night 2 rewrites them as strings, adds a column
    drift_ids: list[str]
    drift_broken: Path  # fine tonight; night 2 rewrites it with an int64 text column
    drift_broken_ids: list[str]
    empty: Path  # a valid shard with no rows
    truncated: Path  # the first half of a good file
    no_id: Path  # no `id` column
    noperm: Path | None  # chmod 000; None when this user reads it anyway (root)
    noperm_ids: list[str]


def _unreadable(path: Path) -> bool:
    """chmod 000 ``path``; True if that stops this process reading it (not so for root)."""
    path.chmod(0)
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except PermissionError:
        return True
    path.chmod(0o644)
    return False


def add_more_bad_shards(root: Path) -> MoreBad:
    src = source_table()
    schema = src.schema

    # Text as binary: most rows UTF-8, two not (Latin-1 bytes, a stray 0xff).
    rows = src.slice(250, 8)
    texts = rows["text"].to_pylist()
    raw = [t.encode("utf-8") for t in texts]
    raw[2] = (texts[2] + " caf\u00e9 au lait, na\u00efve r\u00e9sum\u00e9").encode("latin-1")
    raw[5] = raw[5][:10] + b"\xff" + raw[5][10:]
    bad_at = {2: raw[2].index(b"\xe9"), 5: 10}
    binary = root / "h_binary.parquet"
    pq.write_table(rows.set_column(1, "text", pa.array(raw, pa.binary()))
                   .append_column("lang", pa.array(range(8), pa.int64())), binary)

    # A string column whose bytes are not UTF-8: pyarrow writes and reads it without checking.
    rows = src.slice(260, 5)
    text_raw = [t.encode() for t in rows["text"].to_pylist()]
    text_raw[1] = text_raw[1][:20] + b"\xc3\x28" + text_raw[1][20:]
    id_raw = [i.encode() for i in rows["id"].to_pylist()]
    id_raw[3] = b"bad-\xff-id"
    bad_string = root / "i_bad_string.parquet"
    pq.write_table(rows.set_column(0, "id", pa.array(id_raw, pa.binary()).view(pa.string()))
                   .set_column(1, "text", pa.array(text_raw, pa.binary()).view(pa.string())), bad_string)

    # One 50 MB document of real text between two ordinary ones.
    rows = src.slice(270, 3).to_pylist()
    huge_ids = [r["id"] for r in rows]
    corpus = "\n\n".join(t for f in sorted(NIGHTS[1].glob("*.parquet")) for t in pq.read_table(f)["text"].to_pylist())
    huge_text = (corpus * (HUGE_BYTES // len(corpus.encode()) + 1)).encode()[:HUGE_BYTES].decode("utf-8", "ignore")
    rows[1]["text"] = huge_text
    huge = root / "j_huge.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), huge, compression="zstd")

    drift = root / "k_drift.parquet"
    rows = src.slice(280, 10)
    pq.write_table(rows.set_column(4, "label", pa.array(range(10), pa.int64()))
                   .append_column("lang", pa.array(range(100, 110), pa.int64())), drift)
    drift_broken = root / "l_drift_broken.parquet"
    pq.write_table(src.slice(300, 6), drift_broken)

    empty = root / "n_empty.parquet"
    pq.write_table(src.slice(0, 0), empty)
    truncated = root / "o_truncated.parquet"
    pq.write_table(src.slice(330, 30), truncated)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    no_id = root / "p_no_id.parquet"
    pq.write_table(src.slice(310, 4).drop_columns(["id"]), no_id)
    noperm = root / "m_noperm.parquet"
    pq.write_table(src.slice(320, 5), noperm)
    if not _unreadable(noperm):
        noperm.unlink()

    return MoreBad(
        binary, src.slice(250, 8)["id"].to_pylist(), texts, bad_at,
        bad_string, [i.decode("utf-8", "replace") for i in id_raw],
        huge, huge_ids, len(huge_text.encode()),
        drift, src.slice(280, 10)["id"].to_pylist(), drift_broken, src.slice(300, 6)["id"].to_pylist(),
        empty, truncated, no_id, noperm if noperm.exists() else None, src.slice(320, 5)["id"].to_pylist(),
    )


def rewrite_for_night2(more: MoreBad) -> None:
    """The drifting shards change schema; the unreadable one is made readable again."""
    src = source_table()
    rows = src.slice(280, 10)
    pq.write_table(rows.append_column("lang", pa.array(["en"] * 10)).append_column("rating", pa.array([4.5] * 10)),
                   more.drift)
    rows = src.slice(300, 6)
    pq.write_table(rows.set_column(1, "text", pa.array(range(6), pa.int64())), more.drift_broken)
    if more.noperm is not None:
        more.noperm.chmod(0o644)


@dataclass
class BadRun:
    corpus: BadCorpus
    more: MoreBad
    db: Path
    first: object  # NightOutcome of the bad night
    second: object  # NightOutcome of the next night
    second_shard: Path
    second_ids: list[str]
    after_first: dict[str, list[tuple]]  # catalog rows read right after night 1


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory: pytest.TempPathFactory) -> BadRun:
    base = tmp_path_factory.mktemp("bad-inputs")
    corpus = build_bad_corpus(base / "shards")
    more = add_more_bad_shards(corpus.root)
    rules = base / "glia.toml"
    rules.write_text(RULES)
    db = base / "glia.duckdb"
    first = run_night(corpus.root, db, rules=rules)
    after_first = {
        "skipped": query(db, "SELECT * FROM skipped ORDER BY ALL"),
        "runs": query(db, "SELECT run_id, status, n_docs, n_skipped_rows FROM runs ORDER BY ALL"),
        "drift": query(db, "SELECT doc_id, label, lang FROM v_documents WHERE shard_path = ? ORDER BY doc_id",
                       [str(more.drift)]),
        "docs": query(db, "SELECT doc_id, shard_path, \"row\", first_seen_run FROM documents ORDER BY ALL"),
        "lang_type": query(db, "SELECT data_type FROM information_schema.columns "
                               "WHERE table_name = 'v_documents' AND column_name = 'lang'"),
    }
    # Next night: a new shard reusing an id first delivered last night; drifting schemas.
    nxt = pq.read_table(NIGHTS[1] / "part-00001.parquet").slice(0, 6).to_pylist()
    nxt[4]["id"] = corpus.good_ids[10]
    shard = corpus.root / "g_next.parquet"
    pq.write_table(pa.Table.from_pylist(nxt, schema=pq.read_schema(NIGHTS[1] / "part-00001.parquet")), shard)
    rewrite_for_night2(more)
    second = run_night(corpus.root, db, rules=rules)
    return BadRun(corpus, more, db, first, second, shard, [r["id"] for r in nxt], after_first)


def expected_rejected(c: BadCorpus, m: MoreBad) -> set[str]:
    paths = {c.no_text, c.not_parquet, c.int_text, c.corrupt, m.truncated, m.no_id}
    return {str(p) for p in paths | ({m.noperm} if m.noperm else set())}


def test_bad_shards_are_rejected_with_a_reason_naming_file_and_problem(bad_run: BadRun) -> None:
    c, m = bad_run.corpus, bad_run.more
    rejected = bad_run.first.rejected
    assert set(rejected) == expected_rejected(c, m)
    assert rejected[str(c.no_text)].startswith(f"{c.no_text}: missing required text column 'text'")
    assert "(columns: id, body, source, timestamp, label)" in rejected[str(c.no_text)]
    assert rejected[str(c.not_parquet)].startswith("not a Parquet file")
    assert rejected[str(c.int_text)] == (f"{c.int_text}: text column 'text' has type int64, expected a string column "
                                         "(string, large_string, string_view, dictionary of strings, or binary holding UTF-8)")
    assert rejected[str(c.corrupt)].startswith(f"{c.corrupt}: unreadable data after row 0")
    assert rejected[str(m.truncated)].startswith("truncated Parquet file: it starts like Parquet but has no footer")
    assert rejected[str(m.no_id)].startswith(f"{m.no_id}: missing required id column 'id' (columns: text, source")
    assert "set [columns].id in the rules file" in rejected[str(m.no_id)]

    shards = {r[0]: r[1:] for r in query(bad_run.db, "SELECT path, status, n_docs, error FROM v_shards WHERE first_run = 1")}
    for path, reason in rejected.items():
        # the unreadable shard is readable on night 2: that version replaces the rejected one
        assert shards[path] == ("superseded" if path == str(m.noperm) else "rejected", None, reason)
    skipped = query(bad_run.db, 'SELECT path, reason FROM v_skipped WHERE "row" IS NULL AND run_id = 1 ORDER BY path')
    assert skipped == sorted(rejected.items())
    n_files = 6 + 8 + (1 if m.noperm else 0)
    unreadable_at_discovery = 2 + (1 if m.noperm else 0)  # CSV bytes, truncated, unreadable
    assert query(bad_run.db, "SELECT n_shards_seen, n_shards_new, n_shards_rejected FROM runs WHERE run_id = 1") == [
        (n_files, n_files - unreadable_at_discovery, len(rejected))]
    # nothing of a rejected shard is registered
    rejected_ids = [r[0] for r in query(bad_run.db, "SELECT shard_id FROM shards WHERE error IS NOT NULL AND first_run = 1")]
    assert len(rejected_ids) == len(rejected)
    assert query(bad_run.db, "SELECT count(*) FROM tag_files WHERE shard_id IN (SELECT unnest(?::VARCHAR[]))",
                 [rejected_ids]) == [(0,)]


def test_bad_rows_are_skipped_with_file_row_and_reason(bad_run: BadRun) -> None:
    c = bad_run.corpus
    ids = c.rows_ids
    expected = [
        (4, ids[4], "null text (column 'text')"),
        (5, ids[5], "empty text"),
        (7, c.dup_id, "duplicate id within shard (first at row 2)"),
        (8, c.good_ids[3], f"duplicate id: already in {c.good} row 3"),
    ]
    got = query(bad_run.db, 'SELECT "row", doc_id, reason FROM v_skipped WHERE run_id = 1 AND path = ? ORDER BY "row"',
                [str(c.rows)])
    assert got == expected
    outcome_rows = sorted((r["row"], r["doc_id"], r["reason"]) for r in bad_run.first.skipped.to_pylist()
                          if r["path"] == str(c.rows))
    assert outcome_rows == expected
    # 4 here, 2 in the binary shard, 2 in the bad-string shard, the 50 MB document
    assert bad_run.first.counts["skipped_rows"] == 4 + 2 + 2 + 1
    assert query(bad_run.db, "SELECT n_skipped_rows FROM runs WHERE run_id = 1") == [(9,)]


def test_text_that_is_not_utf8_is_skipped_per_row_and_the_rest_decoded(bad_run: BadRun) -> None:
    m = bad_run.more
    got = query(bad_run.db, 'SELECT "row", doc_id, reason FROM v_skipped WHERE path = ? ORDER BY "row"', [str(m.binary)])
    assert got == [
        (2, m.binary_ids[2], f"text is not valid UTF-8 (invalid continuation byte at byte {m.bad_utf8_at[2]})"),
        (5, m.binary_ids[5], f"text is not valid UTF-8 (invalid start byte at byte {m.bad_utf8_at[5]})"),
    ]
    docs = query(bad_run.db, 'SELECT doc_id, "row", text_hash, q_n_words FROM v_documents WHERE shard_path = ? '
                             'ORDER BY "row"', [str(m.binary)])
    assert [r[1] for r in docs] == [0, 1, 3, 4, 6, 7]
    # the binary column was decoded: the stored hash is that of the UTF-8 text
    want = hash_strings(normalize(pa.array([m.binary_texts[r] for r in (0, 1, 3, 4, 6, 7)]))).tolist()
    assert [r[2] for r in docs] == want
    assert all(r[3] and r[3] > 50 for r in docs)  # the quality tagger (Python strings) read them

    # A string column with invalid bytes: the text row and the id row are skipped, by reason.
    got = query(bad_run.db, 'SELECT "row", doc_id, reason FROM v_skipped WHERE path = ? ORDER BY "row"',
                [str(m.bad_string)])
    assert got == [(1, m.bad_string_ids[1], "text is not valid UTF-8 (invalid continuation byte at byte 20)"),
                   (3, None, "id is not valid UTF-8 (invalid start byte at byte 4)")]
    docs = query(bad_run.db, 'SELECT doc_id, "row" FROM v_documents WHERE shard_path = ? ORDER BY "row"',
                 [str(m.bad_string)])
    assert docs == [(m.bad_string_ids[r], r) for r in (0, 2, 4)]


def test_a_50mb_document_is_skipped_by_the_size_limit_and_its_neighbours_kept(bad_run: BadRun) -> None:
    m = bad_run.more
    limit = RunOptions().max_doc_bytes
    assert m.huge_bytes > limit
    got = query(bad_run.db, 'SELECT "row", doc_id, reason FROM v_skipped WHERE path = ?', [str(m.huge)])
    assert got == [(1, m.huge_ids[1], f"text of {m.huge_bytes:,} bytes, over [run].max_doc_bytes = {limit:,}")]
    docs = query(bad_run.db, 'SELECT doc_id, n_chars FROM v_documents WHERE shard_path = ? ORDER BY "row"', [str(m.huge)])
    assert [d for d, _ in docs] == [m.huge_ids[0], m.huge_ids[2]] and all(n < 10_000 for _, n in docs)


def test_size_limit_is_configurable_and_zero_turns_it_off(bad_run: BadRun) -> None:
    m = bad_run.more
    (shard,) = [s for s in discover(str(m.huge.parent)) if s.path == str(m.huge)]
    cfg = GliaConfig()
    for limit, kept in ((0, 3), (m.huge_bytes, 3), (m.huge_bytes - 1, 2)):
        skips: list[pa.Table] = []
        docs = list(read_documents(ReadSpec(shard, cfg.columns, 2, (), limit), skips))
        assert sum(b.num_rows for b in docs) == kept, limit
        assert sum(t.num_rows for t in skips) == 3 - kept
    rules = Path(m.huge.parent.parent / "limit.toml")
    rules.write_text("[run]\nmax_doc_bytes = 1000\n")
    assert load_config(rules).run.max_doc_bytes == 1000


def test_schema_change_between_nights_keeps_night_one_and_takes_the_new_version(bad_run: BadRun) -> None:
    m = bad_run.more
    # night 1: int64 label cast to the canonical string, int64 extra column kept as a number
    assert bad_run.after_first["drift"] == sorted((d, str(i), 100 + i) for i, d in enumerate(m.drift_ids))
    assert bad_run.after_first["lang_type"] == [("BIGINT",)]
    # night 2: the rewritten file is a new version; the old one is superseded, not lost
    versions = query(bad_run.db, "SELECT status, first_run, n_docs, error FROM v_shards WHERE path = ? ORDER BY first_run",
                     [str(m.drift)])
    assert versions == [("superseded", 1, 10, None), ("active", 2, 10, None)]
    rows = query(bad_run.db, "SELECT doc_id, label, lang, first_seen_run FROM v_documents WHERE shard_path = ? "
                             "ORDER BY doc_id", [str(m.drift)])
    labels = dict(zip(source_table()["id"].to_pylist(), source_table()["label"].to_pylist()))
    # the documents themselves were first seen in night 1, in the old version
    assert rows == sorted((d, labels[d], "en", 1) for d in m.drift_ids)
    # the int64 `lang` of a shard still active (binary) and the new strings share one column
    assert query(bad_run.db, "SELECT data_type FROM information_schema.columns "
                             "WHERE table_name = 'v_documents' AND column_name = 'lang'") == [("VARCHAR",)]
    assert query(bad_run.db, 'SELECT lang FROM v_documents WHERE shard_path = ? ORDER BY "row"',
                 [str(m.binary)]) == [(str(r),) for r in (0, 1, 3, 4, 6, 7)]
    # a rewrite that breaks the schema: the new version is rejected with the reason, the old
    # version is superseded (its rows are no longer in the file), its night-1 records remain
    broken = query(bad_run.db, "SELECT status, first_run, error FROM v_shards WHERE path = ? ORDER BY first_run",
                   [str(m.drift_broken)])
    assert broken == [("superseded", 1, None), ("rejected", 2, f"{m.drift_broken}: text column 'text' has type "
                                                                  "int64, expected a string column (string, large_string, string_view, dictionary of strings, or binary holding UTF-8)")]
    assert bad_run.second.rejected == {str(m.drift_broken): broken[1][2]}
    assert query(bad_run.db, "SELECT count(*) FROM v_documents WHERE shard_path = ?", [str(m.drift_broken)]) == [(0,)]
    old_files = query(bad_run.db, "SELECT f.path FROM tag_files f JOIN shards s USING (shard_id) "
                                  "WHERE s.path = ? AND s.first_run = 1", [str(m.drift_broken)])
    assert old_files and all(Path(p).exists() for (p,) in old_files)
    # night 1's records are untouched: its skips, its run row, its other documents
    assert query(bad_run.db, "SELECT * FROM skipped WHERE run_id = 1 ORDER BY ALL") == bad_run.after_first["skipped"]
    assert query(bad_run.db, "SELECT run_id, status, n_docs, n_skipped_rows FROM runs WHERE run_id = 1") == \
        bad_run.after_first["runs"]
    gone = {str(m.drift), str(m.drift_broken)}
    kept = [r for r in bad_run.after_first["docs"] if r[1] not in gone]
    now = set(query(bad_run.db, 'SELECT doc_id, shard_path, "row", first_seen_run FROM documents'))
    assert set(kept) <= now


def test_an_empty_shard_is_registered_with_no_documents(bad_run: BadRun) -> None:
    m = bad_run.more
    assert query(bad_run.db, "SELECT status, n_rows, n_docs, error FROM v_shards WHERE path = ?", [str(m.empty)]) == [
        ("active", 0, 0, None)]
    assert query(bad_run.db, "SELECT count(*) FROM v_skipped WHERE path = ?", [str(m.empty)]) == [(0,)]


def test_an_unreadable_shard_is_rejected_and_taken_once_readable(bad_run: BadRun) -> None:
    m = bad_run.more
    if m.noperm is None:
        pytest.skip("this user reads a chmod-000 file anyway (root or CAP_DAC_OVERRIDE), so permissions cannot be "
                    "tested; as root, run under `setpriv --bounding-set -dac_override,-dac_read_search` to test them")
    reason = bad_run.first.rejected[str(m.noperm)]
    assert reason.startswith("permission denied: the file is not readable by this user")
    assert query(bad_run.db, "SELECT status, first_run, error FROM v_shards WHERE path = ? ORDER BY first_run",
                 [str(m.noperm)]) == [("superseded", 1, reason), ("active", 2, None)]
    docs = query(bad_run.db, 'SELECT doc_id FROM v_documents WHERE shard_path = ? ORDER BY "row"', [str(m.noperm)])
    assert [d for (d,) in docs] == m.noperm_ids


def test_rest_of_the_night_is_processed(bad_run: BadRun) -> None:
    c, m = bad_run.corpus, bad_run.more
    assert bad_run.first.status == "completed" and bad_run.second.status == "completed"
    docs = query(bad_run.db, "SELECT doc_id, \"row\", shard_path FROM documents")
    good = {(d, r) for d, r, p in docs if p == str(c.good)}
    assert good == {(d, k) for k, d in enumerate(c.good_ids)}
    rows = {(d, r) for d, r, p in docs if p == str(c.rows)}
    assert {(c.rows_ids[k], k) for k in (0, 1, 2, 3, 6, 9)} <= rows
    assert not {(c.rows_ids[k], k) for k in (4, 5, 8)} & rows
    active = {c.good, c.rows, bad_run.second_shard, m.binary, m.bad_string, m.huge, m.drift}
    assert {p for _, _, p in docs} == {str(p) for p in active | ({m.noperm} if m.noperm else set())}
    # every tagger ran on the accepted documents, the one without words included
    no_words = query(bad_run.db, "SELECT text_hash IS NOT NULL, n_shingles FROM v_documents WHERE doc_id = ?",
                     [c.rows_ids[9]])
    assert no_words == [(True, 0)]
    assert query(bad_run.db, "SELECT count(*) FROM v_documents WHERE text_hash IS NULL OR n_shingles IS NULL "
                             "OR quality_pass IS NULL") == [(0,)]
    # no half-written file anywhere in the state folder
    assert [p for p in (bad_run.db.parent / "glia_data").rglob("*") if p.name.endswith(".tmp")] == []


def test_duplicate_id_within_a_shard_keeps_only_the_first_row(bad_run: BadRun) -> None:
    c = bad_run.corpus
    assert query(bad_run.db, 'SELECT "row" FROM documents WHERE doc_id = ?', [c.dup_id]) == [(2,)]
    assert query(bad_run.db, "SELECT count(*) = count(DISTINCT doc_id) FROM v_documents") == [(True,)]
    # good 30, rows 6, binary 6, bad string 3, huge 2, drift 10, drift_broken 6, empty 0
    assert bad_run.first.counts["docs"] == 30 + 6 + 6 + 3 + 2 + 10 + 6


def test_id_from_an_earlier_night_is_skipped_with_where_it_was_first_seen(bad_run: BadRun) -> None:
    c, m = bad_run.corpus, bad_run.more
    reused = c.good_ids[10]
    # g_next 5 (one id reused), the drift shard's new version 10, the unreadable shard once readable
    assert bad_run.second.counts["docs"] == 5 + 10 + (5 if m.noperm else 0)
    assert bad_run.second.counts["shards_new"] == 1
    assert bad_run.second.counts["shards_changed"] == 2 + (1 if m.noperm else 0)
    got = query(bad_run.db, 'SELECT path, "row", doc_id, reason FROM v_skipped WHERE run_id = 2 AND "row" IS NOT NULL')
    assert got == [(str(bad_run.second_shard), 4, reused, f"duplicate id: already in {c.good} row 10")]
    assert query(bad_run.db, "SELECT shard_path, first_seen_run FROM documents WHERE doc_id = ?", [reused]) == [
        (str(c.good), 1)
    ]
    # the shards rejected on night 1 are not re-reported on the next night (only the broken rewrite is new)
    assert set(bad_run.second.rejected) == {str(m.drift_broken)}


def test_strict_run_exits_3_and_names_file_and_row(tmp_path: Path) -> None:
    c = build_bad_corpus(tmp_path / "shards")
    res = glia(["run", str(c.root), "--db", str(tmp_path / "strict.duckdb"), "--strict"], tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 3, out
    assert f"rejected shard {c.not_parquet}: not a Parquet file" in out
    assert f"rejected shard {c.no_text}: {c.no_text}: missing required text column 'text'" in out
    assert f"skipped {c.rows} row 4 (id {c.rows_ids[4]}): null text (column 'text')" in out
    assert f"skipped {c.rows} row 7 (id {c.dup_id}): duplicate id within shard (first at row 2)" in out
    assert "--strict and some input was rejected or skipped" in out
    # the run itself completed and is visible
    assert query(tmp_path / "strict.duckdb", "SELECT status, n_shards_rejected, n_skipped_rows FROM runs") == [
        ("completed", 4, 4)
    ]


# -- UTF-8 checking, property-based ------------------------------------------------------------------

byte_values = st.one_of(
    st.none(),
    st.text(max_size=20).map(lambda s: s.encode("utf-8")),
    st.binary(max_size=20),
    st.tuples(st.text(max_size=8), st.binary(min_size=1, max_size=4), st.text(max_size=8)).map(
        lambda t: t[0].encode() + t[1] + t[2].encode()),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(byte_values, max_size=12), st.booleans())
def test_as_utf8_flags_exactly_the_values_python_cannot_decode(values: list[bytes | None], large: bool) -> None:
    arr = pa.array(values, pa.large_binary() if large else pa.binary())
    out, bad = as_utf8(arr)
    want_bad = []
    for i, v in enumerate(values):
        if v is None:
            continue
        try:
            v.decode("utf-8")
        except UnicodeDecodeError as exc:
            want_bad.append((i, exc.start))
    assert [(i, int(r.rsplit(" ", 1)[1].rstrip(")"))) for i, r in bad] == want_bad
    assert all(r.startswith("not valid UTF-8 (") for _, r in bad)
    assert pa.types.is_large_string(out.type) == large
    flagged = {i for i, _ in bad}
    for i, v in enumerate(values):
        expect = None if v is None or i in flagged else v.decode("utf-8")
        assert out[i].as_py() == expect
    out.validate(full=True)
    # a string array holding the same bytes is judged the same way
    as_string = arr.view(pa.large_string() if large else pa.string())
    assert as_utf8(as_string)[1] == bad


# -- rules file ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "must_name"),
    [
        ("[near_dup]\nbandz = 16\n", ["[near_dup]", "bandz"]),
        ("[run]\nbatch_size = \"big\"\n", ["[run].batch_size", "expected an integer", "'big'"]),
        ("[run]\ntaggers = \"exact\"\n", ["[run].taggers", "expected a list of strings"]),
        ("[columns]\ntext = 3\n", ["[columns].text", "expected a string"]),
        ("[column]\ntext = \"body\"\n", ["unknown section", "column"]),
        ("[near_dup]\nthreshold = 1.5\n", ["[near_dup]", "threshold"]),
        ("[run]\nbatch_size = 0\n", ["[run].batch_size"]),
        ("[run\ntaggers = []\n", ["not valid TOML"]),
    ],
)
def test_bad_rules_file_gives_config_error_naming_the_key(tmp_path: Path, body: str, must_name: list[str]) -> None:
    rules = tmp_path / "glia.toml"
    rules.write_text(body)
    with pytest.raises(ConfigError) as err:
        load_config(rules)
    msg = str(err.value)
    assert str(rules) in msg
    for part in must_name:
        assert part in msg, (part, msg)


def test_good_rules_file_is_applied(tmp_path: Path) -> None:
    rules = tmp_path / "glia.toml"
    rules.write_text('[columns]\ntext = "body"\nextra = ["lang"]\n[near_dup]\nthreshold = 1\nbands = 8\n'
                     '[run]\nbatch_size = 500\n')
    cfg = load_config(rules)
    assert cfg.columns.text == "body" and cfg.columns.extra == ("lang",)
    dedup = dedup_stage(cfg).params
    assert dedup.threshold == 1.0 and dedup.num_perm == 8 * NearDup().rows  # rows: the default
    assert cfg.run.batch_size == 500
    assert cfg.hash() != GliaConfig().hash()
    assert load_config(None) == GliaConfig()


def test_missing_rules_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="rules file not found"):
        load_config(tmp_path / "nope.toml")


def test_run_with_bad_rules_fails_before_touching_the_database(tmp_path: Path) -> None:
    rules = tmp_path / "glia.toml"
    rules.write_text("[near_dup]\nrowz = 7\n")
    db = tmp_path / "glia.duckdb"
    with pytest.raises(ConfigError, match="rowz"):
        run_night(NIGHTS[3], db, rules=rules)
    assert not db.exists()
    assert not Path(f"{db}.lock").exists()


def test_unknown_tagger_in_rules_file_is_a_config_error(tmp_path: Path) -> None:
    rules = tmp_path / "glia.toml"
    rules.write_text('[run]\ntaggers = ["exact", "minhahs"]\n')
    with pytest.raises(ConfigError, match=r"\[run\]\.taggers.*minhahs"):
        load_config(rules)


def test_near_dup_parameters_live_under_stages_dedup(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """[stages.dedup] holds the near-dup parameters; the old [near_dup] still reads, with a notice."""
    rules = tmp_path / "glia.toml"
    rules.write_text("[stages.dedup]\nthreshold = 0.6\nbands = 20\nrows = 5\n")
    new = load_config(rules)
    assert (dedup_stage(new).params.threshold, dedup_stage(new).params.num_perm) == (0.6, 100)
    # The dedup stage hands its signature shape to the MinHash tagger of the night.
    (minhash,) = [t for t in NightParts.build(new).taggers if t.name == "minhash"]
    assert minhash.config() == {"num_perm": 100, "ngram": 3, "seed": 1}
    # Runs record the stage's parameters, with their defaults, where every Glia so far has.
    assert new.to_dict()["near_dup"] == asdict(NearDup(threshold=0.6, bands=20, rows=5))
    assert "dedup" not in new.to_dict()["stage_params"]
    rules.write_text("[near_dup]\nthreshold = 0.6\nbands = 20\nrows = 5\n")
    with caplog.at_level("WARNING"):
        old = load_config(rules)
    assert old == new and old.hash() == new.hash()
    assert "[near_dup] is the old name of [stages.dedup]" in caplog.text
    rules.write_text("[near_dup]\nthreshold = 0.6\n[stages.dedup]\nthreshold = 0.6\n")
    with pytest.raises(ConfigError, match=r"\[near_dup\] and \[stages.dedup\] both set"):
        load_config(rules)
    rules.write_text("[stages.dedup]\nbandz = 20\n")
    with pytest.raises(ConfigError, match=r"\[stages.dedup\]: unknown key\(s\) bandz"):
        load_config(rules)
    # A MinHash table that contradicts the shape the dedup stage sets is refused, not overridden.
    rules.write_text("[stages.dedup]\nbands = 20\nrows = 5\n[taggers.minhash]\nnum_perm = 64\n")
    with pytest.raises(ConfigError, match=r"\[taggers.minhash\].num_perm = 64, but stage 'dedup' needs 100"):
        load_config(rules)


def test_a_tag_column_may_not_shadow_a_metadata_column(tmp_path: Path) -> None:
    """DuckDB would rename the tag to lang_1 in v_documents without a word: refused at load."""
    rules = tmp_path / "glia.toml"
    rules.write_text('[columns]\nextra = ["lang"]\n[run]\ntaggers = ["exact", "minhash", "lang"]\n')
    with pytest.raises(ConfigError, match=r"tagger 'lang' writes 'lang', which is also a metadata column"):
        load_config(rules)
