"""Eval-set decontamination on real text: Debian fortunes as the eval set, planted verbatim and
lightly edited into Debian copyright texts, with near misses that must not match; then a real
night with the ``contaminated`` prune term, and the eval documents kept out of the manifest."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import query, run_night
from glia.core.params import ConfigError
from examples.decon_pii import build, fortunes, light_edit, near_miss, plant
from examples.sources import debian_copyright
from glia.taggers.decontaminate import DecontaminateTagger


@pytest.fixture(scope="module")
def texts() -> tuple[list[tuple[str, str]], list[str]]:
    return fortunes(), [d.text for d in debian_copyright()]


def _batch(texts: list[str]) -> pa.Table:
    return pa.table({"doc_id": [f"d{i}" for i in range(len(texts))], "text": texts})


def test_planted_items_are_found_and_near_misses_are_not(texts, tmp_path: Path) -> None:
    items, hosts = texts
    rng = random.Random(7)
    eval_items = rng.sample(items, 120)
    held_out = [it for it in items if it not in eval_items]  # fortunes not in the eval set
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps({"id": i, "question": t}) + "\n" for i, t in eval_items))
    tagger = DecontaminateTagger(sets={"fortunes": {"path": str(path), "fields": ["question"]}},
                                 index_dir=str(tmp_path / "idx"))
    verbatim = [plant(hosts[k], eval_items[k][1]) for k in range(20)]
    edited = [plant(hosts[20 + k], light_edit(eval_items[20 + k][1])) for k in range(20)]
    misses = [plant(hosts[40 + k], near_miss(eval_items[40 + k][1])) for k in range(20)]
    # The first 12 words only (one short of an n-gram), and fortunes that are not in the set.
    prefix = [plant(hosts[60 + k], " ".join(re.findall(r"\w+", eval_items[60 + k][1])[:12])) for k in range(20)]
    other = [plant(hosts[80 + k], held_out[k][1]) for k in range(20)]
    clean = hosts[100:300]
    tags = tagger.tag(_batch(verbatim + edited + misses + prefix + other + clean)).to_pylist()
    got = [t["contaminated_by"] for t in tags]
    want = [f"fortunes:{eval_items[k][0]}" for k in range(40)]
    assert got[:40] == want  # verbatim and lightly edited: found, with the right item
    assert got[40:] == [None] * (len(got) - 40)  # near misses, prefixes, other fortunes, plain text
    assert all(t["contam_ngrams"] >= 1 and 0 < t["contam_share"] < 1 for t in tags[:40])
    assert all(t["contam_ngrams"] == 0 for t in tags[40:])


def test_a_whole_eval_item_has_share_one_and_min_matches_raises_the_bar(texts, tmp_path: Path) -> None:
    items, _ = texts
    path = tmp_path / "eval.txt"
    path.write_text("\n\n".join(t for _, t in items[:50]))
    kw = {"sets": {"f": {"path": str(path)}}, "index_dir": str(tmp_path / "idx")}
    item = items[5][1]
    whole = DecontaminateTagger(**kw).tag(_batch([item])).to_pylist()[0]
    assert whole["contaminated_by"] == "f:6" and whole["contam_share"] == 1.0  # text ids count from 1
    n = whole["contam_ngrams"]
    strict = DecontaminateTagger(**kw, min_matches=n + 1).tag(_batch([item])).to_pylist()[0]
    assert strict["contaminated_by"] is None and strict["contam_ngrams"] == n
    # A smaller n catches a shorter overlap the default misses.
    part = " ".join(item.split()[:10])
    assert DecontaminateTagger(**kw).tag(_batch([part])).to_pylist()[0]["contaminated_by"] is None
    assert DecontaminateTagger(**{**kw, "n": 8}).tag(_batch([part])).to_pylist()[0]["contaminated_by"] == "f:6"


def test_the_index_is_built_once_and_rebuilt_when_the_file_changes(texts, tmp_path: Path) -> None:
    items, _ = texts
    path = tmp_path / "eval.parquet"
    pq.write_table(pa.table({"id": [i for i, _ in items[:30]], "text": [t for _, t in items[:30]]}), path)
    kw = {"sets": {"f": {"path": str(path)}}, "index_dir": str(tmp_path / "idx")}
    first = DecontaminateTagger(**kw).config()
    assert DecontaminateTagger(**kw).config() == first
    assert len(list((tmp_path / "idx").iterdir())) == 1
    pq.write_table(pa.table({"id": ["x"], "text": [items[40][1]]}), path)
    assert DecontaminateTagger(**kw).config() != first  # the cache key follows the file's bytes
    assert DecontaminateTagger(**kw).tag(_batch([items[40][1]])).to_pylist()[0]["contaminated_by"] == "f:x"


@pytest.mark.parametrize("table, message", [
    ({"sets": {"f": {"path": "no/such/file.parquet"}}}, "not found"),
    ({"sets": {"f": {}}}, "path"),
    ({"n": 0}, "n must be >= 1"),
    ({"sets": {"f": {"path": "x", "colour": 1}}}, "unknown key"),
])
def test_bad_parameters_name_the_key(table: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DecontaminateTagger(**table)


def test_a_corrupt_or_wrong_eval_file_fails_at_config_load_naming_the_set(tmp_path: Path) -> None:
    bad = tmp_path / "eval.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ConfigError, match=r"sets\.mmlu.*eval\.parquet"):
        DecontaminateTagger(sets={"mmlu": {"path": str(bad)}}, index_dir=str(tmp_path / "idx"))
    pq.write_table(pa.table({"question": ["q"]}), bad)
    with pytest.raises(ConfigError, match="no column.*text.*question"):
        DecontaminateTagger(sets={"mmlu": {"path": str(bad)}}, index_dir=str(tmp_path / "idx"))
    assert not list((tmp_path / "idx").glob("mmlu-*"))  # nothing half-built is left to be reused


def test_a_night_prunes_contamination_and_keeps_the_eval_documents_out_of_the_manifest(tmp_path: Path) -> None:
    from glia.cli.main import EXIT_OK, main

    eval_path, shard = build(tmp_path / "extra")
    # The eval set's own items are also in the corpus, as a protected eval_set stratum.
    items = pq.read_table(eval_path)
    pq.write_table(pa.table({"id": [f"eval-{i}" for i in items["id"].to_pylist()[:3]], "text": items["text"][:3],
                             "source": ["eval"] * 3, "timestamp": pq.read_table(shard)["timestamp"][:3],
                             "label": ["eval"] * 3}), shard.parent / "part-00001.parquet")
    rules = tmp_path / "glia.toml"
    rules.write_text(f"""[run]
taggers = ["exact", "minhash", "decontaminate", "pii"]
stages = ["dedup", "decide"]
[taggers.decontaminate]
index_dir = "{tmp_path / 'idx'}"
[taggers.decontaminate.sets.fortunes]
path = "{eval_path}"
[stages.decide]
prune_if_any = ["exact_dup", "near_dup", "contaminated"]
[stages.decide.protect.explicit.eval_set]
where = "source = 'eval'"
""")
    db = tmp_path / "glia.duckdb"
    assert run_night(shard.parent, db, rules).status == "completed"
    rows = dict(query(db, "SELECT doc_id, contaminated_by FROM v_documents"))
    assert rows["extra-contaminated"].startswith("fortunes:") and rows["extra-edited"].startswith("fortunes:")
    assert rows["extra-near-miss"] is None and rows["extra-clean"] is None
    assert all(rows[f"eval-{i}"] == f"fortunes:{i}" for i in items["id"].to_pylist()[:3])
    queued = dict(query(db, "SELECT doc_id, reasons FROM v_prune_queue"))
    assert queued["extra-contaminated"] == [rows["extra-contaminated"].replace("fortunes:", "contaminated:fortunes:", 1)]
    assert not any(d.startswith("eval-") for d in queued)  # protected: never pruned by it
    out = tmp_path / "manifest.parquet"
    assert main(["manifest", "export", "--out", str(out), "--db", str(db), "--exclude-stratum", "eval_set"]) == EXIT_OK
    ids = set(pq.read_table(out)["doc_id"].to_pylist())
    assert "extra-clean" in ids and not any(d.startswith("eval-") for d in ids)
    metrics = dict(query(db, "SELECT metric, value FROM run_metrics"))
    assert metrics["decontaminate.contaminated"] == 5  # two planted + three eval documents
