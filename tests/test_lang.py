"""The ``lang`` tagger on real text in seven languages (Debian fortunes and The Devil's Dictionary,
``tests/data/lang_sample.parquet``, built by ``bench/lang_corpus.py --per-lang 30``), its
expected-language rule term, bad input, and a minority language protected by rarity in a real night."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from conftest import query, run_night
from glia.core.params import ConfigError
from glia.taggers.lang import UNDETERMINED, LangTagger

SAMPLE = Path(__file__).resolve().parent / "data" / "lang_sample.parquet"


@pytest.fixture(scope="module")
def sample() -> pa.Table:
    return pq.read_table(SAMPLE)


def _accuracy(tagger: LangTagger, sample: pa.Table) -> dict[str, float]:
    tags = tagger.tag(sample.select(["doc_id", "text"]))
    assert tags["doc_id"].to_pylist() == sample["doc_id"].to_pylist()
    pred, gold = np.array(tags["lang"].to_pylist()), np.array(sample["lang"].to_pylist())
    return {lang: float(np.mean(pred[gold == lang] == lang)) for lang in sorted(set(gold))}


@pytest.mark.parametrize("backend, floor", [("cld2", 0.7), ("lingua", 0.8)])
def test_identifies_each_language_of_real_text(sample: pa.Table, backend: str, floor: float) -> None:
    per = _accuracy(LangTagger(backend=backend), sample)
    assert len(per) == 7
    assert min(per.values()) >= floor, per  # every language, not only the average
    assert float(np.mean(list(per.values()))) >= floor + 0.1, per


def test_scores_are_confidences_and_unexpected_follows_the_list(sample: pa.Table) -> None:
    tags = LangTagger(expected=["en", "de"]).tag(sample.select(["doc_id", "text"]))
    score = tags["lang_score"].to_numpy()
    assert np.all((score >= 0) & (score <= 1)) and np.median(score) > 0.5
    lang = np.array(tags["lang"].to_pylist())
    assert tags["lang_unexpected"].to_pylist() == [x not in ("en", "de") for x in lang]
    # Without a list there is no judgement: the column is null, so the rule term cannot fire.
    assert LangTagger().tag(sample.slice(0, 5).select(["doc_id", "text"]))["lang_unexpected"].null_count == 5


def test_bad_input_is_undetermined_not_an_error() -> None:
    texts = ["", "   ", "12345 67890 !!!", "\x00\x01\x02 \ufffd\ufffd", "\u200b" * 50, "a" * 100_000]
    tags = LangTagger().tag(pa.table({"doc_id": [str(i) for i in range(len(texts))], "text": texts}))
    assert tags.num_rows == len(texts)
    assert tags["lang"].to_pylist()[:4] == [UNDETERMINED] * 4
    assert pc.all(pc.is_valid(tags["lang_score"])).as_py()


@pytest.mark.parametrize("params, key", [({"backend": "fasttext"}, "backend"), ({"expected": ["English"]}, "expected"),
                                         ({"max_chars": 0}, "max_chars"), ({"expexted": ["en"]}, "expexted")])
def test_bad_parameters_name_the_key(params: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        LangTagger(**params)


def _night_shard(sample: pa.Table, root: Path, n_minority: int) -> None:
    """English, Italian and German documents (30 each) and a few Spanish ones."""
    lang = sample["lang"]
    keep = pc.or_(pc.is_in(lang, value_set=pa.array(["en", "it", "de"])),
                  pc.and_(pc.equal(lang, "es"), pc.less(pc.utf8_slice_codeunits(sample["doc_id"], 3, 8), f"{n_minority:05d}")))
    t = sample.filter(keep)
    root.mkdir(parents=True)
    pq.write_table(pa.table({"id": t["doc_id"], "text": t["text"], "source": pa.array(["fortunes"] * t.num_rows),
                             "label": t["lang"]}), root / "part-00000.parquet")


@pytest.mark.parametrize("rarity_columns", [["source", "lang"], ["source"]])
def test_a_minority_language_is_protected_by_rarity(sample: pa.Table, tmp_path: Path, rarity_columns: list[str]) -> None:
    _night_shard(sample, tmp_path / "shards", n_minority=3)
    rules = tmp_path / "glia.toml"
    cols = ", ".join(f'"{c}"' for c in rarity_columns)
    rules.write_text('[run]\ntaggers = ["exact", "lang"]\nstages = ["decide"]\n'
                     '[taggers.lang]\nexpected = ["en", "it", "de"]\n'
                     '[stages.decide]\nprune_if_any = ["lang_not_in"]\n'
                     f'[stages.decide.protect.rarity]\ncolumns = [{cols}]\n'
                     '[stages.decide.protect.clusters]\nenabled = false\n')
    db = tmp_path / "glia.duckdb"
    assert run_night(tmp_path / "shards", db, rules).status == "completed"
    rows = query(db, "SELECT d.label, d.lang, d.lang_unexpected, q.doc_id IS NOT NULL, p.reasons, p.strata "
                     "FROM v_documents d LEFT JOIN prune_queue q USING (doc_id) LEFT JOIN decisions p USING (doc_id) "
                     "WHERE d.lang_unexpected")
    spanish = [r for r in rows if r[0] == "es" and r[1] == "es"]
    assert len(spanish) >= 2  # the planted minority is identified (one short fortune may be undetermined)
    if "lang" in rarity_columns:
        for label, lang, _, queued, reasons, strata in spanish:
            assert not queued and f"rare_lang:{lang}" in strata
            assert any(r.startswith("protected:") and "lang_not_in_expected" in r for r in reasons), reasons
    else:  # the control: without language in the strata the same documents are queued
        assert all(r[3] for r in spanish)
        assert any("lang_not_in_expected" in r for r in spanish[0][4])
