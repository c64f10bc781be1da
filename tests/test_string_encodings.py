"""Every Arrow encoding of a string column that a mature Parquet reader accepts is read as the
same documents: dictionary (pandas and Polars categoricals), ``string_view``, ``large_string``,
and binary holding UTF-8, for the ``id`` and the ``text`` column alike."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import NIGHTS, query, run_night
from glia.core.strings import as_utf8, id_strings, plain_strings
from glia.engine.config import GliaConfig
from glia.engine.ingest import ReadSpec, read_documents, scan_ids
from glia.storage.shards import discover

SOURCE = NIGHTS[1] / "part-00000.parquet"

ENCODINGS: dict[str, Callable[[pa.Array], pa.Array]] = {
    "string": lambda a: a,
    "large_string": lambda a: a.cast(pa.large_string()),
    "string_view": lambda a: a.cast(pa.string_view()),
    "dictionary": lambda a: a.dictionary_encode(),
    "binary": lambda a: a.cast(pa.binary()),
    "large_binary": lambda a: a.cast(pa.large_binary()),
    "binary_view": lambda a: a.cast(pa.binary_view()),
}


def _plain() -> pa.Table:
    return pq.read_table(SOURCE).slice(0, 120)


def _encoded(tmp: Path, id_enc: str, text_enc: str, name: str = "part-00000.parquet") -> Path:
    t = _plain()
    t = t.set_column(t.schema.get_field_index("id"), "id", ENCODINGS[id_enc](t["id"].combine_chunks()))
    t = t.set_column(t.schema.get_field_index("text"), "text", ENCODINGS[text_enc](t["text"].combine_chunks()))
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(t, path)
    return path


def _read(path: Path) -> tuple[list[str], list[str], list[int]]:
    (shard,) = discover(str(path.parent))
    cols = GliaConfig().columns
    ids, skipped = scan_ids(shard, cols)
    assert skipped.num_rows == 0
    batches = list(read_documents(ReadSpec(shard, cols, 50)))
    docs = pa.concat_tables(batches)
    assert docs["doc_id"].type == pa.string() and ids["doc_id"].type == pa.string()
    assert ids["doc_id"].to_pylist() == docs["doc_id"].to_pylist()
    return docs["doc_id"].to_pylist(), [str(t) for t in docs["text"].to_pylist()], docs["row"].to_pylist()


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_text_in_every_string_encoding_reads_the_same_documents(encoding: str, tmp_path: Path) -> None:
    path = _encoded(tmp_path / encoding, "string", encoding)
    assert pq.read_schema(path).field("text").type == ENCODINGS[encoding](pa.array(["x"])).type  # written as asked
    plain = _plain()
    assert _read(path) == (plain["id"].to_pylist(), plain["text"].to_pylist(), list(range(plain.num_rows)))


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_ids_in_every_string_encoding_read_the_same_documents(encoding: str, tmp_path: Path) -> None:
    path = _encoded(tmp_path / encoding, encoding, "string")
    plain = _plain()
    assert _read(path)[0] == plain["id"].to_pylist()


def test_dictionary_encoded_integer_ids_read_as_decimal_strings(tmp_path: Path) -> None:
    t = _plain()
    t = t.set_column(t.schema.get_field_index("id"), "id", pa.array(range(1000, 1000 + t.num_rows)).dictionary_encode())
    (tmp_path / "s").mkdir()
    pq.write_table(t, tmp_path / "s" / "part.parquet")
    assert _read(tmp_path / "s" / "part.parquet")[0] == [str(i) for i in range(1000, 1000 + t.num_rows)]


def test_binary_text_that_is_not_utf8_is_skipped_with_its_row(tmp_path: Path) -> None:
    t = _plain().slice(0, 4)
    raw = [s.encode() for s in t["text"].to_pylist()]
    raw[2] = b"caf\xe9 au lait"  # Latin-1, not UTF-8
    t = t.set_column(t.schema.get_field_index("text"), "text", pa.array(raw, pa.binary()).dictionary_encode())
    (tmp_path / "s").mkdir()
    pq.write_table(t, tmp_path / "s" / "part.parquet")
    (shard,) = discover(str(tmp_path / "s"))
    skips: list[pa.Table] = []
    docs = pa.concat_tables(list(read_documents(ReadSpec(shard, GliaConfig().columns, 10), skips)))
    assert docs["row"].to_pylist() == [0, 1, 3]
    (skip,) = [s for s in skips if s.num_rows]
    assert skip["row"].to_pylist() == [2] and "not valid UTF-8" in skip["reason"][0].as_py()
    assert skip["path"][0].as_py() == str(tmp_path / "s" / "part.parquet")


def test_plain_strings_decodes_nulls_in_dictionaries_and_views() -> None:
    values = pa.array(["a", None, "b", "a"])
    for enc in ENCODINGS.values():
        got = plain_strings(enc(values))
        assert [None if v is None else (v.decode() if isinstance(v, bytes) else v) for v in got.to_pylist()] == \
            ["a", None, "b", "a"]
    # Arrow (not Parquet) also has dictionaries of views.
    dict_view = pa.DictionaryArray.from_arrays(pa.array([0, None, 1, 0], pa.int32()), pa.array(["a", "b"], pa.string_view()))
    assert plain_strings(dict_view).to_pylist() == ["a", None, "b", "a"]
    assert as_utf8(pa.chunked_array([values.dictionary_encode()]))[0].to_pylist() == ["a", None, "b", "a"]
    assert id_strings(pa.array([7, None]).dictionary_encode())[0].to_pylist() == ["7", None]


def test_a_night_on_categorical_and_view_shards_equals_the_plain_night(tmp_path: Path) -> None:
    """Dedup results, metadata and the replay dataloader's texts do not depend on the encoding."""
    rules = tmp_path / "rules.toml"
    rules.write_text('[run]\nstages = ["dedup", "replay"]\n[stages.replay]\nsize = 60\nseed = 2\n')
    plain_dir = tmp_path / "plain" / "night1"
    shutil.copytree(NIGHTS[1], plain_dir)
    encoded_dir = tmp_path / "encoded" / "night1"
    for i, src in enumerate(sorted(NIGHTS[1].glob("*.parquet"))):
        t = pq.read_table(src)
        cols = {"id": ENCODINGS["dictionary"], "text": ENCODINGS[("string_view", "large_string", "binary")[i % 3]],
                "source": ENCODINGS["dictionary"]}
        for name, enc in cols.items():
            t = t.set_column(t.schema.get_field_index(name), name, enc(t[name].combine_chunks()))
        encoded_dir.mkdir(parents=True, exist_ok=True)
        pq.write_table(t, encoded_dir / src.name)
    sql = ("SELECT doc_id, source, label, exact_dup_of, near_dup_of, near_dup_cluster_size, n_chars FROM v_documents "
           "ORDER BY doc_id")
    got = {}
    for name, root in (("plain", plain_dir), ("encoded", encoded_dir)):
        db = tmp_path / f"{name}.duckdb"
        assert run_night(root, db, rules).status == "completed"
        got[name] = query(db, sql)
        from glia import ReplayPlan, iter_replay

        got[f"{name}-replay"] = sorted((d["doc_id"], d["text"]) for d in iter_replay(ReplayPlan.from_db(db)))
    assert len(got["plain"]) == 1500 and got["encoded"] == got["plain"]
    assert got["encoded-replay"] == got["plain-replay"] and len(got["plain-replay"]) == 60
