"""Bad inputs: every problem is a clear rejection or a recorded skip naming the file (and
row), and the rest of the night is processed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import NIGHTS, glia, query, run_night
from curation.config import ConfigError, GliaConfig, load_config

NO_WORDS = "!!! ... --- ???"


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


def build_bad_corpus(root: Path) -> BadCorpus:
    """Small shards cut from the example corpus's real documents, each with one problem."""
    root.mkdir(parents=True)
    src = pq.read_table(NIGHTS[1] / "part-00000.parquet")
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
class BadRun:
    corpus: BadCorpus
    db: Path
    first: object  # NightOutcome of the bad night
    second: object  # NightOutcome of the next night
    second_shard: Path
    second_ids: list[str]


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory: pytest.TempPathFactory) -> BadRun:
    base = tmp_path_factory.mktemp("bad-inputs")
    corpus = build_bad_corpus(base / "shards")
    db = base / "glia.duckdb"
    first = run_night(corpus.root, db)
    # Next night: a new shard reusing an id first delivered last night.
    nxt = pq.read_table(NIGHTS[1] / "part-00001.parquet").slice(0, 6).to_pylist()
    nxt[4]["id"] = corpus.good_ids[10]
    shard = corpus.root / "g_next.parquet"
    pq.write_table(pa.Table.from_pylist(nxt, schema=pq.read_schema(NIGHTS[1] / "part-00001.parquet")), shard)
    second = run_night(corpus.root, db)
    return BadRun(corpus, db, first, second, shard, [r["id"] for r in nxt])


def test_bad_shards_are_rejected_with_a_reason_naming_file_and_problem(bad_run: BadRun) -> None:
    c = bad_run.corpus
    rejected = bad_run.first.rejected
    assert set(rejected) == {str(c.no_text), str(c.not_parquet), str(c.int_text), str(c.corrupt)}
    assert rejected[str(c.no_text)].startswith(f"{c.no_text}: missing required text column 'text'")
    assert "(columns: id, body, source, timestamp, label)" in rejected[str(c.no_text)]
    assert rejected[str(c.not_parquet)].startswith("not a Parquet file")
    assert rejected[str(c.int_text)] == f"{c.int_text}: text column 'text' has type int64, expected a string column"
    assert rejected[str(c.corrupt)].startswith(f"{c.corrupt}: unreadable data after row 0")

    shards = {r[0]: r[1:] for r in query(bad_run.db, "SELECT path, status, n_docs, error FROM v_shards")}
    for path, reason in rejected.items():
        assert shards[path] == ("rejected", None, reason)
    skipped = query(bad_run.db, 'SELECT path, reason FROM v_skipped WHERE "row" IS NULL AND run_id = 1 ORDER BY path')
    assert skipped == sorted(rejected.items())
    assert query(bad_run.db, "SELECT n_shards_seen, n_shards_new, n_shards_rejected FROM runs WHERE run_id = 1") == [(6, 5, 4)]
    # nothing of a rejected shard is registered
    rejected_ids = [r[0] for r in query(bad_run.db, "SELECT shard_id FROM shards WHERE status = 'rejected'")]
    assert len(rejected_ids) == 4
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
    assert bad_run.first.counts["skipped_rows"] == 4
    assert query(bad_run.db, "SELECT n_skipped_rows FROM runs WHERE run_id = 1") == [(4,)]


def test_rest_of_the_night_is_processed(bad_run: BadRun) -> None:
    c = bad_run.corpus
    assert bad_run.first.status == "completed"
    docs = query(bad_run.db, "SELECT doc_id, \"row\", shard_path FROM documents")
    good = {(d, r) for d, r, p in docs if p == str(c.good)}
    assert good == {(d, k) for k, d in enumerate(c.good_ids)}
    rows = {(d, r) for d, r, p in docs if p == str(c.rows)}
    assert {(c.rows_ids[k], k) for k in (0, 1, 2, 3, 6, 9)} <= rows
    assert not {(c.rows_ids[k], k) for k in (4, 5, 8)} & rows
    assert {p for _, _, p in docs} == {str(c.good), str(c.rows), str(bad_run.second_shard)}
    # every tagger ran on the accepted documents, the one without words included
    no_words = query(bad_run.db, "SELECT text_hash IS NOT NULL, n_shingles FROM v_documents WHERE doc_id = ?",
                     [c.rows_ids[9]])
    assert no_words == [(True, 0)]
    assert query(bad_run.db, "SELECT count(*) FROM v_documents WHERE text_hash IS NULL OR n_shingles IS NULL") == [(0,)]
    # no half-written file anywhere in the state folder
    assert [p for p in (bad_run.db.parent / "glia_data").rglob("*") if p.name.endswith(".tmp")] == []


def test_duplicate_id_within_a_shard_keeps_only_the_first_row(bad_run: BadRun) -> None:
    c = bad_run.corpus
    assert query(bad_run.db, 'SELECT "row" FROM documents WHERE doc_id = ?', [c.dup_id]) == [(2,)]
    assert query(bad_run.db, "SELECT count(*) = count(DISTINCT doc_id) FROM v_documents") == [(True,)]
    assert bad_run.first.counts["docs"] == 30 + 6


def test_id_from_an_earlier_night_is_skipped_with_where_it_was_first_seen(bad_run: BadRun) -> None:
    c = bad_run.corpus
    reused = c.good_ids[10]
    assert bad_run.second.counts["docs"] == 5
    assert bad_run.second.counts["shards_new"] == 1
    got = query(bad_run.db, 'SELECT path, "row", doc_id, reason FROM v_skipped WHERE run_id = 2')
    assert got == [(str(bad_run.second_shard), 4, reused, f"duplicate id: already in {c.good} row 10")]
    assert query(bad_run.db, "SELECT shard_path, first_seen_run FROM documents WHERE doc_id = ?", [reused]) == [
        (str(c.good), 1)
    ]
    # the rejected shards are not re-reported on the next night
    assert bad_run.second.rejected == {}


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


# -- rules file ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "must_name"),
    [
        ("[near_dup]\nbandz = 16\n", ["[near_dup]", "bandz"]),
        ("[run]\nbatch_size = \"big\"\n", ["[run].batch_size", "expected int", "'big'"]),
        ("[run]\ntaggers = \"exact\"\n", ["[run].taggers", "expected a list of strings"]),
        ("[columns]\ntext = 3\n", ["[columns].text", "expected str"]),
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
    assert cfg.near_dup.threshold == 1.0 and cfg.near_dup.num_perm == 8 * 7
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
