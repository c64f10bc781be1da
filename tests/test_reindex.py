"""The near-dup signature scheme: an old database keeps working, ``glia reindex`` moves it to the
current defaults, and the candidate probability curve the docs state is the one the code has.

Real example shards, real DuckDB catalogs, the real night engine and the real CLI entry point.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import NIGHTS, REPO, query, run_night
from glia.cli import main as cli
from glia.curation.dedup import NearDup
from glia.engine.config import GliaConfig
from glia.curation.dedup import band_keys
from glia.engine.reindex import LEGACY_NEAR_DUP, SchemeMismatch, dedup_stage
from glia.taggers.minhash import MinHashTagger
from glia.core.text import shingle_hashes, word_hashes

LEGACY_RULES = "[near_dup]\nngram = 5\nbands = 16\nrows = 7\nthreshold = 0.75\n"


def segment_params(db: Path) -> list[tuple]:
    return query(db, "SELECT DISTINCT kind, params FROM index_segments WHERE kind <> 'exact' ORDER BY ALL")


def history_rows(db: Path, kind: str, order: str) -> list[tuple]:
    paths = [p for (p,) in query(db, "SELECT path FROM index_segments WHERE kind = ? ORDER BY run_id", [kind])]
    # shard ids name the shard's path, which differs between the databases compared
    cols = "* EXCLUDE (shard_id)" if kind != "merges" else "*"
    return query(db, f"SELECT {cols} FROM read_parquet({paths!r}) ORDER BY {order}") if paths else []


def deliver(root: Path, night: int) -> None:
    shutil.copytree(NIGHTS[night], root / f"night{night}")


def edited_copies(tmp: Path, n: int = 40) -> tuple[Path, dict[str, str]]:
    """A fourth night: ``n`` night-1 documents with 4 % of their words dropped, under new ids."""
    t = pq.read_table(sorted(NIGHTS[1].glob("*.parquet"))[0])
    rng = random.Random(4)
    rows = [i for i in range(t.num_rows) if len(t["text"][i].as_py().split()) >= 120][:n]
    ids, texts, orig = [], [], {}
    for i in rows:
        words = t["text"][i].as_py().split()
        keep = sorted(rng.sample(range(len(words)), len(words) - round(0.04 * len(words))))
        ids.append(f"night4-copy-{i}")
        texts.append(" ".join(words[k] for k in keep))
        orig[ids[-1]] = t["id"][i].as_py()
    folder = tmp / "night4"
    folder.mkdir()
    pq.write_table(pa.table({"id": ids, "text": texts}), folder / "part-00000.parquet")
    return folder, orig


def test_an_old_default_database_keeps_its_scheme_and_reindex_moves_it(tmp_path: Path) -> None:
    legacy_rules = tmp_path / "legacy.toml"
    legacy_rules.write_text(LEGACY_RULES)
    legacy_params = dedup_stage(load(legacy_rules)).scheme()
    new_params = dedup_stage(GliaConfig()).scheme()
    assert legacy_params != new_params

    # An "old" database: nights 1-2 with the previous defaults; a reference run all legacy.
    root, db = tmp_path / "shards", tmp_path / "old" / "glia.duckdb"
    ref_root, ref_db = tmp_path / "ref-shards", tmp_path / "ref" / "glia.duckdb"
    root.mkdir(); ref_root.mkdir()
    for night in (1, 2):
        deliver(root, night)
        run_night(root, db, legacy_rules)
    for night in (1, 2, 3):
        deliver(ref_root, night)
        run_night(ref_root, ref_db, legacy_rules)

    # Night 3 with no rules file (the new defaults): runs, with the scheme the database has,
    # and decides exactly as a database that always ran the old defaults.
    deliver(root, 3)
    out = run_night(root, db)
    assert out.status == "completed"
    assert {p for _, p in segment_params(db)} == {json.dumps(legacy_params)}
    dup_sql = "SELECT doc_id, exact_dup_of, near_dup_of, near_dup_cluster FROM v_documents ORDER BY doc_id"
    assert query(db, dup_sql) == query(ref_db, dup_sql)
    assert query(db, "SELECT count(near_dup_of) FROM v_documents")[0][0] > 0

    # A rules file that asks for yet another scheme is refused before anything is tagged.
    other = tmp_path / "other.toml"
    other.write_text("[near_dup]\nngram = 4\nbands = 20\nrows = 5\nthreshold = 0.6\n")
    runs_before = query(db, "SELECT count(*) FROM runs")
    with pytest.raises(SchemeMismatch, match="glia reindex"):
        run_night(root, db, other)
    assert query(db, "SELECT count(*) FROM runs") == runs_before

    # glia reindex (the CLI entry point): the history is now exactly what three nights with the
    # new defaults build from scratch.
    assert cli.main(["reindex", "--db", str(db)]) == 0
    assert {p for _, p in segment_params(db)} == {json.dumps(new_params)}
    assert query(db, "SELECT status FROM runs ORDER BY run_id DESC LIMIT 1") == [("reindex",)]
    fresh_root, fresh_db = tmp_path / "fresh-shards", tmp_path / "fresh" / "glia.duckdb"
    fresh_root.mkdir()
    for night in (1, 2, 3):
        deliver(fresh_root, night)
        run_night(fresh_root, fresh_db)
    for kind, order in (("signatures", "doc_id"), ("lsh", "band, key, doc_id"), ("merges", "ALL")):
        got, want = history_rows(db, kind, order), history_rows(fresh_db, kind, order)
        assert got == want, kind
    assert len(history_rows(db, "signatures", "doc_id")) > 3000
    # The minhash view now holds the new signatures (128 values), the old files are gone.
    assert query(db, "SELECT DISTINCT len(_minhash) FROM tags_minhash WHERE _minhash IS NOT NULL") == [(128,)]
    assert not list((db.parent / "glia_data" / "tags").glob("minhash@*/*.parquet"))

    # The next night runs with the new defaults and matches edited copies against the rebuilt history.
    folder, orig = edited_copies(tmp_path)
    shutil.copytree(folder, root / "night4")
    out = run_night(root, db)
    assert out.status == "completed"
    flagged = dict(query(db, "SELECT doc_id, coalesce(exact_dup_of, near_dup_of) FROM v_documents "
                             "WHERE doc_id LIKE 'night4-%'"))
    found = sum(flagged.get(d) is not None for d in orig)
    assert found >= 0.9 * len(orig), (found, len(orig))
    # ... and a rerun of the reindex is idempotent on what it builds.
    before = history_rows(db, "signatures", "doc_id")
    assert cli.main(["reindex", "--db", str(db)]) == 0
    assert history_rows(db, "signatures", "doc_id") == before


def load(rules: Path) -> GliaConfig:
    from glia.engine.config import load_config

    return load_config(rules)


def test_legacy_scheme_constant_is_the_previous_default() -> None:
    """The pinned scheme is what every earlier release wrote: word 5-grams, 16 x 7, 0.75."""
    assert (LEGACY_NEAR_DUP.ngram, LEGACY_NEAR_DUP.bands, LEGACY_NEAR_DUP.rows, LEGACY_NEAR_DUP.seed,
            LEGACY_NEAR_DUP.threshold) == (5, 16, 7, 1, 0.75)
    assert NearDup() != LEGACY_NEAR_DUP


# -- the candidate probability curve ------------------------------------------------------


def test_documented_curve_numbers_are_the_codes() -> None:
    """The numbers config.py's docstring and docs/reference.md state for the default come from its formula."""
    nd = NearDup()
    doc = " ".join((NearDup.__doc__ or "").split())
    stated = {float(s): float(p) for s, p in re.findall(r"Jaccard (0\.\d) becomes a candidate with probability (0\.\d+)", doc)}
    stated.update({float(s): float(p) for s, p in re.findall(r"at (0\.\d) with (0\.\d+)", doc)})
    assert len(stated) >= 4, doc
    for s, p in stated.items():
        assert nd.candidate_probability(s) == pytest.approx(p, abs=6e-4), s
    reference = (REPO / "docs" / "reference.md").read_text()
    table = re.findall(r"\| (0\.\d+) \| (0\.\d+) \|", reference.split("Candidate probability")[1][:2000])
    assert len(table) >= 5
    for s, p in table:
        assert nd.candidate_probability(float(s)) == pytest.approx(float(p), abs=6e-4), s
    # And the formula is the banding's: 1 - (1 - s^r)^b.
    assert nd.candidate_probability(0.5) == pytest.approx(1 - (1 - 0.5**nd.rows) ** nd.bands)


def test_measured_candidate_rate_follows_the_curve(corpus_texts: dict[str, str]) -> None:
    """Real texts and word-dropped copies of them over a range of true Jaccard: the share of
    pairs that share an LSH band under the default scheme agrees with the curve, per Jaccard bin."""
    nd = NearDup()
    tagger = MinHashTagger(num_perm=nd.num_perm, ngram=nd.ngram, seed=nd.seed)
    rng = random.Random(7)
    texts = [t for _, t in sorted(corpus_texts.items()) if len(t.split()) >= 150][:700]
    rates = [rng.uniform(0.03, 0.35) for _ in texts]
    copies = []
    for t, r in zip(texts, rates, strict=True):
        words = t.split()
        keep = sorted(rng.sample(range(len(words)), len(words) - round(r * len(words))))
        copies.append(" ".join(words[k] for k in keep))
    both = pa.array(texts + copies)
    sig, _ = tagger.signatures(both)
    keys = band_keys(sig, nd.bands, nd.rows)
    n = len(texts)
    candidate = (keys[:n] == keys[n:]).any(axis=1)
    # True Jaccard of the exact shingle-hash sets the signatures are computed from.
    words, offsets = word_hashes(both)
    sh, so = shingle_hashes(words, offsets, nd.ngram)
    sets = [set(sh[so[i]:so[i + 1]].tolist()) for i in range(2 * n)]
    true_j = np.array([len(sets[i] & sets[n + i]) / len(sets[i] | sets[n + i]) for i in range(n)])
    expected = np.array([nd.candidate_probability(j) for j in true_j])
    checked = 0
    for lo in np.arange(0.2, 0.8, 0.1):
        sel = (true_j >= lo) & (true_j < lo + 0.1)
        if sel.sum() < 40:
            continue
        p = expected[sel].mean()
        tol = 3 * np.sqrt(p * (1 - p) / sel.sum()) + 0.02
        assert abs(candidate[sel].mean() - p) <= tol, (lo, int(sel.sum()), candidate[sel].mean(), p)
        checked += 1
    assert checked >= 3
