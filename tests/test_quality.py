"""Quality and staleness taggers: datatrove's filters as tags on real text and on crafted
boilerplate, the scores behind every verdict, parameters, and both taggers in a real night."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from datatrove.data import Document

from conftest import NIGHTS, query, run_night
from glia.engine.config import ConfigError, load_config
from glia.taggers import registry
from glia.taggers.base import NightInfo
from glia.taggers.quality import FAMILIES, SCORES, QualityTagger, RegexWordTokenizer
from glia.taggers.staleness import StalenessTagger

# -- crafted boilerplate (the kind of page furniture the heuristics exist for) ---------------------

COOKIE_BANNER = (
    "We use cookies to improve your experience on our site. By continuing to browse, you agree to "
    "our Cookie Policy and Privacy Policy.\nAccept all\nReject all\nManage preferences"
)
NAV_MENU = "\n".join(["Home", "About us", "Products", "Services", "Blog", "Careers", "Contact", "Log in",
                      "Sign up", "Help centre", "Terms of use", "Privacy policy"])
BULLETS = "\n".join(f"- item number {i} of the shopping list for the week" for i in range(20))
HASHTAGS = " ".join(f"#tag{i} word" for i in range(40))
TEMPLATE = ("Use the {name} placeholder wherever the reader's name should appear in the letter.\n"
            "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.")


def real_docs(per_source: int = 25) -> pa.Table:
    """Up to ``per_source`` documents of each source of the example corpus (all nights)."""
    t = pa.concat_tables([pq.read_table(f) for n in (1, 2, 3) for f in sorted(NIGHTS[n].glob("*.parquet"))])
    keep = []
    for src in sorted(set(t["source"].to_pylist())):
        idx = pc.indices_nonzero(pc.equal(t["source"], src)).to_pylist()[:per_source]
        keep += idx
    t = t.take(pa.array(keep))
    return pa.table({"doc_id": t["id"], "text": t["text"], "source": t["source"], "timestamp": t["timestamp"]})


# Every family: the tests of the tagger's mechanics run all four (two are on by default).
ALL_FAMILIES = tuple(FAMILIES)


@pytest.fixture(scope="module")
def tagged() -> tuple[pa.Table, dict[str, dict]]:
    batch = real_docs()
    out = QualityTagger(families=ALL_FAMILIES).tag(batch)
    return batch, {r["doc_id"]: r for r in out.to_pylist()}


def tag_texts(tagger: QualityTagger, texts: dict[str, str]) -> dict[str, dict]:
    out = tagger.tag(pa.table({"doc_id": list(texts), "text": list(texts.values())}))
    assert out.schema.equals(tagger.schema())
    return {r["doc_id"]: r for r in out.to_pylist()}


# -- verdicts and scores on real text ----------------------------------------------------------------

# (rule as recorded, score column, comparison that fires, datatrove threshold parameter)
SCORED_RULES = [
    ("gopher_quality:gopher_short_doc", "q_n_words", "<", ("gopher_quality", "min_doc_words")),
    ("gopher_quality:gopher_below_avg_threshold", "q_mean_word_len", "<", ("gopher_quality", "min_avg_word_length")),
    ("gopher_quality:gopher_above_avg_threshold", "q_mean_word_len", ">", ("gopher_quality", "max_avg_word_length")),
    ("gopher_quality:gopher_too_many_hashes", "q_hash_word_ratio", ">", ("gopher_quality", "max_symbol_word_ratio")),
    ("gopher_quality:gopher_too_many_bullets", "q_bullet_lines_frac", ">", ("gopher_quality", "max_bullet_lines_ratio")),
    ("gopher_quality:gopher_too_many_end_ellipsis", "q_ellipsis_lines_frac", ">",
     ("gopher_quality", "max_ellipsis_lines_ratio")),
    ("gopher_quality:gopher_below_alpha_threshold", "q_alpha_words_frac", "<", ("gopher_quality", "max_non_alpha_words_ratio")),
    ("gopher_quality:gopher_enough_stop_words", "q_stop_words", "<", ("gopher_quality", "min_stop_words")),
    ("gopher_repetition:dup_para_frac", "q_dup_para_frac", ">", ("gopher_repetition", "dup_para_frac")),
    ("gopher_repetition:dup_para_char_frac", "q_dup_para_char_frac", ">", ("gopher_repetition", "dup_para_char_frac")),
    ("gopher_repetition:dup_line_frac", "q_dup_line_frac", ">", ("gopher_repetition", "dup_line_frac")),
    ("gopher_repetition:dup_line_char_frac", "q_dup_line_char_frac", ">", ("gopher_repetition", "dup_line_char_frac")),
    ("fineweb:line_punct_ratio", "q_line_punct_frac", "<", ("fineweb", "line_punct_thr")),
    ("fineweb:short_line_ratio", "q_short_line_frac", ">", ("fineweb", "short_line_thr")),
    ("fineweb:char_dup_ratio", "q_char_dup_frac", ">", ("fineweb", "char_duplicates_ratio")),
    ("fineweb:list_ratio", "q_newline_word_ratio", ">", ("fineweb", "new_line_ratio")),
]


def test_every_scored_rule_fires_exactly_when_its_score_crosses_datatroves_threshold(tagged) -> None:
    """The verdicts come from datatrove's filter classes, the scores from the tagger's own
    expressions: they must tell the same story, rule by rule, on real text."""
    _, rows = tagged
    params = QualityTagger(families=ALL_FAMILIES).filter_params
    rep = params["gopher_repetition"]
    rules = SCORED_RULES + [
        ("gopher_repetition:top_2_gram", "q_top_2gram_char_frac", ">", dict(rep["top_n_grams"])[2]),
        ("gopher_repetition:duplicated_5_n_grams", "q_dup_5gram_char_frac", ">", dict(rep["dup_n_grams"])[5]),
    ]
    fired_somewhere = {}
    for rule, col, op, thr in rules:
        threshold = params[thr[0]][thr[1]] if isinstance(thr, tuple) else thr
        fired_somewhere[rule] = 0
        for doc_id, r in rows.items():
            score = r[col]
            assert score is not None, (doc_id, col)
            if abs(score - threshold) < 1e-6:  # float32 rounding at the threshold decides nothing
                continue
            crosses = score < threshold if op == "<" else score > threshold
            assert (rule in r["quality_failed"]) == crosses, (doc_id, rule, col, score, threshold, r["quality_failed"])
            fired_somewhere[rule] += crosses
    # the sample exercises the common rules both ways (the real corpus has dialogue, verse, licences)
    for rule in ("gopher_quality:gopher_below_alpha_threshold", "fineweb:char_dup_ratio", "fineweb:line_punct_ratio",
                 "gopher_repetition:duplicated_5_n_grams"):
        assert 0 < fired_somewhere[rule] < len(rows), (rule, fired_somewhere[rule])


def test_first_rule_per_family_is_datatroves_own_verdict_and_pass_means_no_rule(tagged) -> None:
    batch, rows = tagged
    tok = RegexWordTokenizer()
    params = QualityTagger(families=ALL_FAMILIES).filter_params  # datatrove's defaults but GLIA_DEFAULTS
    filters = {fam: cls(**params[fam], language=tok) for fam, cls in FAMILIES.items()}
    for doc_id, text in zip(batch["doc_id"].to_pylist(), batch["text"].to_pylist()):
        r = rows[doc_id]
        assert r["quality_pass"] == (r["quality_failed"] == [])
        for fam, f in filters.items():
            verdict = f.filter(Document(text, doc_id))
            ours = [x.split(":", 1)[1] for x in r["quality_failed"] if x.startswith(fam + ":")]
            if verdict is True:
                assert ours == [], (doc_id, fam, ours)
            else:
                assert ours and ours[0] == verdict[1], (doc_id, fam, ours, verdict)
    assert 0 < sum(r["quality_pass"] for r in rows.values()) < len(rows)


def test_word_count_matches_an_independent_count_on_plain_prose(tagged) -> None:
    batch, rows = tagged
    for doc_id, text, src in zip(batch["doc_id"].to_pylist(), batch["text"].to_pylist(), batch["source"].to_pylist()):
        if src in ("kjv", "austen"):  # letters, digits and ordinary punctuation only
            assert rows[doc_id]["q_n_words"] == len(re.findall(r"\w+(?:['’]\w+)*", text)), doc_id


# -- crafted boilerplate -----------------------------------------------------------------------------


def test_boilerplate_fires_the_rules_made_for_it() -> None:
    real = pq.read_table(NIGHTS[1] / "part-00000.parquet").filter(pc.equal(pc.field("source"), "austen"))
    prose = real["text"][0].as_py()
    repeated = prose + "\n" + "\n".join(["Share this page on Facebook"] * 8)
    rows = tag_texts(QualityTagger(families=ALL_FAMILIES), {"cookie": COOKIE_BANNER, "nav": NAV_MENU, "bullets": BULLETS,
                                        "hashtags": HASHTAGS, "template": TEMPLATE, "repeated": repeated,
                                        "prose": prose})

    cookie = rows["cookie"]
    assert {"gopher_quality:gopher_short_doc", "c4:too_few_sentences", "fineweb:short_line_ratio"} <= set(
        cookie["quality_failed"])
    assert cookie["q_short_line_frac"] == pytest.approx(3 / 4)
    # C4 drops the policy sentence ("use cookies") and the three buttons (no end punctuation)
    assert cookie["q_c4_lines_kept_frac"] == 0.0
    assert cookie["q_c4_lines_no_punct_frac"] == pytest.approx(3 / 4)

    nav = rows["nav"]
    assert {"gopher_quality:gopher_enough_stop_words", "fineweb:line_punct_ratio", "fineweb:short_line_ratio",
            "fineweb:list_ratio", "c4:too_few_sentences"} <= set(nav["quality_failed"])
    assert nav["q_line_punct_frac"] == 0.0 and nav["q_short_line_frac"] == 1.0
    assert nav["q_newline_word_ratio"] == pytest.approx(11 / len(RegexWordTokenizer().word_tokenize(NAV_MENU)))

    assert "gopher_quality:gopher_too_many_bullets" in rows["bullets"]["quality_failed"]
    assert rows["bullets"]["q_bullet_lines_frac"] == 1.0

    tokens = RegexWordTokenizer().word_tokenize(HASHTAGS)
    assert "gopher_quality:gopher_too_many_hashes" in rows["hashtags"]["quality_failed"]
    assert rows["hashtags"]["q_hash_word_ratio"] == pytest.approx(40 / len(tokens))

    # C4 reads lines in order: the curly bracket, then (asked again) lorem ipsum, then too few sentences
    assert [x for x in rows["template"]["quality_failed"] if x.startswith("c4:")] == [
        "c4:curly_bracket", "c4:lorem_ipsum", "c4:too_few_sentences"]

    lines = re.split(r"\n+", repeated)
    dup = len(lines) - len(set(lines))
    assert dup == 7
    assert rows["repeated"]["q_dup_line_frac"] == pytest.approx(dup / len(lines))
    assert {"gopher_repetition:dup_line_frac", "fineweb:char_dup_ratio"} <= set(rows["repeated"]["quality_failed"])
    assert "gopher_repetition:dup_line_frac" not in rows["prose"]["quality_failed"]
    assert rows["prose"]["q_dup_line_frac"] == 0.0


def test_tokenizer_is_offline_regex_with_punctuation_tokens_and_datatrove_sentences() -> None:
    tok = RegexWordTokenizer()
    assert tok.word_tokenize("Don't stop... #now, O'Brien!") == ["Don't", "stop", "...", "#", "now", ",", "O'Brien", "!"]
    assert tok.sent_tokenize("It is done. Is it? Yes!\nNext") == ["It is done.", "Is it?", "Yes!"]
    q = QualityTagger()
    assert all(f.language is q.tokenizer for f in q.filters.values())


def test_tagging_from_two_threads_gives_the_same_tags(tagged) -> None:
    batch, rows = tagged
    q = QualityTagger(families=ALL_FAMILIES)
    halves = [batch.slice(0, batch.num_rows // 2), batch.slice(batch.num_rows // 2)]
    with ThreadPoolExecutor(2) as pool:
        outs = list(pool.map(q.tag, halves + halves))
    got = {r["doc_id"]: r for o in outs for r in o.to_pylist()}
    assert got == rows


def test_default_rules_pass_clean_prose_verse_and_glossaries() -> None:
    """The defaults (Gopher's two families, the alpha-token threshold at 0.7; taggers/quality.py)
    pass the example corpus's clean sources, where datatrove's defaults with every family failed
    86 % of the Shakespeare documents and 98 % of the Jargon File; both still catch boilerplate."""
    q = QualityTagger()
    assert q.families == ("gopher_quality", "gopher_repetition")
    assert q.filter_params["gopher_quality"]["max_non_alpha_words_ratio"] == 0.7
    t = pa.concat_tables([pq.read_table(f, columns=["id", "text", "source"]) for f in sorted(NIGHTS[1].glob("*.parquet"))])
    out = q.tag(pa.table({"doc_id": t["id"], "text": t["text"]}))
    failed = pc.invert(out["quality_pass"]).to_numpy(zero_copy_only=False)
    src = t["source"].to_numpy(zero_copy_only=False)
    share = {s: float(failed[src == s].mean()) for s in set(src.tolist())}
    assert max(share["austen"], share["kjv"], share["shakespeare"], share["devil"]) < 0.08, share
    assert share["jargon"] < 0.25, share
    old = QualityTagger(families=ALL_FAMILIES, gopher_quality={"max_non_alpha_words_ratio": 0.8})
    old_failed = pc.invert(old.tag(pa.table({"doc_id": t["id"], "text": t["text"]}))["quality_pass"])
    assert float(old_failed.to_numpy(zero_copy_only=False)[src == "shakespeare"].mean()) > 0.8  # what it fixes
    crafted = tag_texts(q, {"nav": NAV_MENU, "hashtags": HASHTAGS, "bullets": BULLETS})
    assert not any(r["quality_pass"] for r in crafted.values())


# -- parameters -----------------------------------------------------------------------------------


def test_disabled_families_leave_their_scores_null_and_fire_nothing() -> None:
    rows = tag_texts(QualityTagger(families=["fineweb"]), {"nav": NAV_MENU, "cookie": COOKIE_BANNER})
    for r in rows.values():
        assert all(x.startswith("fineweb:") for x in r["quality_failed"])
        for col, _, fam in SCORES:
            assert (r[col] is None) == (fam != "fineweb"), col
    assert rows["nav"]["quality_failed"] == ["fineweb:line_punct_ratio", "fineweb:short_line_ratio", "fineweb:list_ratio"]


def test_thresholds_are_datatroves_keyword_arguments() -> None:
    default = tag_texts(QualityTagger(families=ALL_FAMILIES), {"cookie": COOKIE_BANNER, "nav": NAV_MENU})
    tuned = QualityTagger(families=ALL_FAMILIES, gopher_quality={"min_doc_words": 10},
                          fineweb={"line_punct_thr": 0.0, "short_line_thr": 1.0})
    rows = tag_texts(tuned, {"cookie": COOKIE_BANNER, "nav": NAV_MENU})
    assert "gopher_quality:gopher_short_doc" in default["cookie"]["quality_failed"]
    assert "gopher_quality:gopher_short_doc" not in rows["cookie"]["quality_failed"]  # 29 words >= 10
    assert "fineweb:line_punct_ratio" not in rows["nav"]["quality_failed"]
    assert "fineweb:short_line_ratio" not in rows["nav"]["quality_failed"]
    assert rows["nav"]["q_short_line_frac"] == default["nav"]["q_short_line_frac"]  # scores do not move
    assert tuned.config() != QualityTagger(families=ALL_FAMILIES).config()
    assert json.loads(json.dumps(tuned.config()))["params"]["fineweb"]["line_punct_thr"] == 0.0


def test_rules_file_configures_quality_and_staleness(tmp_path: Path) -> None:
    rules = tmp_path / "glia.toml"
    rules.write_text('[run]\ntaggers = ["exact", "quality", "staleness"]\n'
                     '[taggers.quality]\nfamilies = ["gopher_quality", "fineweb"]\n'
                     '[taggers.quality.gopher_repetition]\ndup_n_grams = [[5, 0.2], [6, 0.2]]\n'
                     '[taggers.quality.fineweb]\nshort_line_thr = 0.9\nstop_chars = [".", "!"]\n'
                     '[taggers.staleness]\nmax_age_days = 30\n')
    cfg = load_config(rules)
    tagger_list = registry.build(cfg.run.taggers, {n: cfg.params_for(n) for n in cfg.run.taggers})
    q = next(t for t in tagger_list if t.name == "quality")
    assert q.families == ("gopher_quality", "fineweb")
    assert q.filters["fineweb"].short_line_threshold == 0.9 and q.filters["fineweb"].stop_chars == (".", "!")
    assert q.filter_params["gopher_repetition"]["dup_n_grams"] == ((5, 0.2), (6, 0.2))
    assert next(t for t in tagger_list if t.name == "staleness").max_age_days == 30.0


@pytest.mark.parametrize(
    ("body", "must_name"),
    [
        ('[taggers.quality.fineweb]\nshort_line_thresh = 0.9\n', ["[taggers.quality.fineweb]", "short_line_thresh",
                                                                    "short_line_thr"]),
        ('[taggers.quality]\nfamilies = ["gopher", "c4"]\n', ["families", "gopher", "gopher_quality"]),
        ('[taggers.quality.c4]\nlanguage = "fr"\n', ["[taggers.quality.c4]", "language"]),
        ('[taggers.staleness]\nmax_age_days = -1\n', ["[taggers.staleness]", "max_age_days"]),
    ],
)
def test_bad_quality_or_staleness_parameters_are_config_errors(tmp_path: Path, body: str, must_name: list[str]) -> None:
    rules = tmp_path / "glia.toml"
    rules.write_text('[run]\ntaggers = ["exact", "minhash", "quality", "staleness"]\n' + body)
    with pytest.raises(ConfigError) as err:
        load_config(rules)
    for part in must_name:
        assert part in str(err.value), (part, str(err.value))


# -- staleness ------------------------------------------------------------------------------------

NIGHT = NightInfo(run_id=7, started_at=datetime(2025, 7, 1, tzinfo=timezone.utc), n_docs=4)


def test_age_is_days_from_timestamp_to_the_nights_start() -> None:
    start = NIGHT.started_at
    stamps = [start - timedelta(days=400), start - timedelta(days=365, hours=12), start - timedelta(hours=6),
              None, start + timedelta(days=2)]
    batch = pa.table({"doc_id": ["old", "edge", "fresh", "none", "future"],
                      "timestamp": pa.array(stamps, pa.timestamp("us", tz="UTC"))})
    t = StalenessTagger().for_night(NIGHT)
    out = {r["doc_id"]: r for r in t.tag(batch).to_pylist()}
    assert out["old"]["age_days"] == 400.0 and out["old"]["stale"] is True
    assert out["edge"]["age_days"] == 365.5 and out["edge"]["stale"] is True  # > 365
    assert out["fresh"]["age_days"] == 0.25 and out["fresh"]["stale"] is False
    assert out["none"] == {"doc_id": "none", "age_days": None, "stale": None}
    assert out["future"]["age_days"] == -2.0 and out["future"]["stale"] is False
    strict = StalenessTagger(max_age_days=365.5).for_night(NIGHT).tag(batch)
    assert strict["stale"].to_pylist()[:2] == [True, False]


def test_staleness_without_a_timestamp_column_is_null_and_binding_shows_in_config() -> None:
    t = StalenessTagger().for_night(NIGHT)
    out = t.tag(pa.table({"doc_id": ["a", "b"], "text": ["x", "y"]}))
    assert out.schema.equals(t.schema())
    assert out["age_days"].null_count == 2 and out["stale"].null_count == 2
    nxt = StalenessTagger().for_night(NightInfo(8, NIGHT.started_at + timedelta(days=1), 4))
    assert t.config()["as_of"] == "2025-07-01T00:00:00+00:00"
    # A rerun of the night hours later (after a crash) tags the same ages.
    rerun = StalenessTagger().for_night(NightInfo(7, NIGHT.started_at + timedelta(hours=5, seconds=7), 4))
    assert rerun.config() == t.config()
    assert nxt.config() != t.config()  # the task cache key differs from night to night
    naive = StalenessTagger().for_night(NightInfo(9, datetime(2025, 7, 1), 0))
    assert naive.config() == t.config()  # a naive start is UTC, like shard timestamps


def test_reference_is_the_corpus_newest_day_unless_later_than_the_run() -> None:
    # A backfill (newest document 2024-03-05 14:00, run 2025-07-01): ages count from 2024-03-05.
    backfill = NightInfo(7, NIGHT.started_at, 4, newest=datetime(2024, 3, 5, 14, tzinfo=timezone.utc))
    t = StalenessTagger().for_night(backfill)
    assert t.config()["as_of"] == "2024-03-05T00:00:00+00:00"
    stamps = [datetime(2024, 3, 4, tzinfo=timezone.utc), datetime(2023, 3, 1, tzinfo=timezone.utc)]
    out = t.tag(pa.table({"doc_id": ["a", "b"], "timestamp": pa.array(stamps, pa.timestamp("us", tz="UTC"))}))
    assert out["age_days"].to_pylist() == [1.0, 370.0] and out["stale"].to_pylist() == [False, True]
    # A document from the future does not move the reference past the run's day.
    future = NightInfo(7, NIGHT.started_at, 4, newest=NIGHT.started_at + timedelta(days=30))
    assert StalenessTagger().for_night(future).config()["as_of"] == "2025-07-01T00:00:00+00:00"
    # reference = "run" is the run's day whatever the corpus holds (tagger version 1's behaviour).
    assert StalenessTagger(reference="run").for_night(backfill).config()["as_of"] == "2025-07-01T00:00:00+00:00"
    with pytest.raises(ValueError, match="reference"):
        StalenessTagger(reference="wall")


# -- both taggers in a real night -----------------------------------------------------------------


def test_quality_and_staleness_in_a_nightly_run(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    src = pq.read_table(NIGHTS[1] / "part-00000.parquet").slice(0, 40)
    crafted = pa.table({"id": ["web-cookie", "web-nav"], "text": [COOKIE_BANNER, NAV_MENU],
                        "source": ["web", "web"], "timestamp": pa.array([None, None], src.schema.field("timestamp").type),
                        "label": ["boilerplate", "boilerplate"]})
    pq.write_table(pa.concat_tables([src, crafted.cast(src.schema)]), shards / "part-0.parquet")
    # Ages are from the corpus's newest document's day (reference = "corpus", the default): a
    # limit halfway between two neighbouring ages, so some documents are stale and some not.
    newest = max(src["timestamp"].to_pylist()).replace(hour=0, minute=0, second=0, microsecond=0)
    ages = sorted((newest - ts).total_seconds() / 86400 for ts in src["timestamp"].to_pylist())
    gap = max(range(10, 30), key=lambda i: ages[i + 1] - ages[i])
    limit = (ages[gap] + ages[gap + 1]) / 2
    rules = tmp_path / "glia.toml"
    rules.write_text('[run]\ntaggers = ["exact", "minhash", "quality", "staleness"]\n'
                     f'[taggers.staleness]\nmax_age_days = {limit}\n')
    db = tmp_path / "glia.duckdb"
    outcome = run_night(shards, db, rules=rules)
    assert outcome.status == "completed" and outcome.counts["docs"] == 42

    started = newest  # earlier than the run's day, so the reference
    rows = query(db, "SELECT doc_id, timestamp, age_days, stale, quality_pass, quality_failed, q_n_words "
                     "FROM v_documents ORDER BY doc_id")
    assert len(rows) == 42
    for doc_id, ts, age, stale, passed, failed, n_words in rows:
        assert n_words is not None and passed == (failed == [])
        if ts is None:
            assert age is None and stale is None, doc_id
        else:
            want = (started - ts).total_seconds() / 86400
            assert age == pytest.approx(want, abs=1e-3 * max(1.0, want) + 1e-3), doc_id
            assert stale == (want > limit), doc_id
    by_id = {r[0]: r for r in rows}
    assert "gopher_quality:gopher_enough_stop_words" in by_id["web-nav"][5]
    assert "gopher_quality:gopher_short_doc" in by_id["web-cookie"][5]
    assert sum(r[3] for r in rows if r[1] is not None) == 40 - (gap + 1)
    # the staleness file was tagged against the newest document's day, which its metadata records
    (path,) = query(db, "SELECT path FROM tag_files WHERE tagger = 'staleness'")[0]
    meta = json.loads(pq.read_schema(path).metadata[b"glia"])
    assert datetime.fromisoformat(meta["config"]["as_of"]) == started
