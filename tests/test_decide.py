"""The ``decide`` stage on real example documents: rule terms gathered from tonight's outputs,
protected strata (rarity, embedding clusters, the user's ids and SQL), the restore memory,
coverage, and the rules-file validation.

The stage runs for real (its ``load`` against a real, migrated DuckDB catalog, its ``run``
over Parquet tag files); the tags of taggers other than dedup are tables these tests write,
as their taggers are separate components. Embeddings for the cluster tests are LSA vectors
(TF-IDF + SVD, L2-normalised) of the real texts: cheap, deterministic, and real embeddings
of the corpus."""

from __future__ import annotations

import csv
import tomllib
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from conftest import COMMONS, NIGHTS, REPO
from glia.engine.config import ConfigError, GliaConfig, RunOptions, load_config
from glia.stages.decide import DecideStage
from glia.core.context import RunContext
from glia.engine.pipeline import NightParts, stages_for, view_sources
from glia.stages.base import StageInputs, StageOutput
from glia.storage.catalog import Catalog, TagFile


def night_docs(shards: list[Path]) -> tuple[pa.Table, dict[str, str]]:
    """Tonight's ``documents`` as the pipeline gives them to stages, and id -> text."""
    parts, texts = [], {}
    for i, f in enumerate(shards):
        t = pq.read_table(f)
        texts.update(zip(t["id"].to_pylist(), t["text"].to_pylist()))
        parts.append(pa.table({"doc_id": t["id"], "source": t["source"], "timestamp": t["timestamp"], "label": t["label"],
                               "shard_id": pa.array([f"s{i}"] * t.num_rows)}))
    return pa.concat_tables(parts), texts


def planted_near(ids: set[str]) -> dict[str, str]:
    """doc -> the earlier document it was planted from (or naturally duplicates), both in ``ids``."""
    out: dict[str, str] = {}
    with (COMMONS / "planted.csv").open() as fh:
        for r in csv.DictReader(fh):
            if r["doc_id"] in ids and r["duplicate_of"] in ids:
                out.setdefault(r["doc_id"], r["duplicate_of"])
    return out


def run_decide(tmp: Path, stage: DecideStage, docs: pa.Table, outputs: dict[str, pa.Table], run_id: int = 1,
               setup_sql: list[tuple[str, list]] | None = None) -> StageOutput:
    """Write ``outputs`` as per-shard tag files, load the stage's state from a real catalog,
    and run the stage."""
    files: dict[str, list[TagFile]] = {}
    for name, table in outputs.items():
        for shard in sorted(set(docs["shard_id"].to_pylist())):
            ids = docs.filter(pc.equal(docs["shard_id"], shard))["doc_id"]
            part = table.filter(pc.is_in(table["doc_id"], value_set=ids.combine_chunks()))
            path = tmp / "tags" / name / f"{shard}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(part, path)
            files.setdefault(name, []).append(TagFile(name, "1", shard, str(path), part.num_rows))
    db = tmp / "glia.duckdb"
    ctx = RunContext(str(tmp), db, tmp / "state", run_id, datetime(2025, 1, 1, tzinfo=timezone.utc))
    with Catalog(db) as cat:
        cat.migrate(view_sources(NightParts.build(GliaConfig())), {"decide": DecideStage.migrations})
        for sql, params in setup_sql or []:
            cat.con.execute(sql, params)
        state = stage.load(cat.con, ctx)
    return stage.run(ctx, state, StageInputs(docs, files, {}, history_active=[]))


def writes(out: StageOutput) -> dict[str, pa.Table]:
    return {w.table: w.rows for w in out.writes}


def decisions(out: StageOutput) -> dict[str, dict]:
    return {r["doc_id"]: r for r in out.tags["decision"].to_pylist()}


@pytest.fixture(scope="module")
def part0() -> tuple[pa.Table, dict[str, str]]:
    return night_docs([NIGHTS[1] / "part-00000.parquet"])


# -- every prune reason vs protection --------------------------------------------------------------


def test_a_protected_document_with_every_prune_reason_is_never_queued(tmp_path: Path, part0) -> None:
    docs, texts = part0
    ids = docs["doc_id"].to_pylist()
    near = planted_near(set(ids))
    target, control = sorted(near)[:2]  # two planted copies: one a key memory, one not
    n = len(ids)
    length_rank = np.argsort(np.argsort([len(texts[i]) for i in ids])) / n
    fire = np.isin(ids, [target, control])
    outputs = {
        "novelty": pa.table({"doc_id": ids, "novelty": pa.array(np.where(fire, 0.0, 0.2 + 0.8 * length_rank), pa.float32())}),
        "lm": pa.table({"doc_id": ids, "utility": pa.array(np.where(fire, 0.0, 1.0 - length_rank), pa.float32()),
                        "lm_scored": pa.array(np.ones(n, bool))}),
        "risk": pa.table({"doc_id": ids, "risk": pa.array(np.where(fire, 0.97, 0.05), pa.float32())}),
        "quality": pa.table({"doc_id": ids, "quality_pass": pa.array(~fire)}),
        "staleness": pa.table({"doc_id": ids, "stale": pa.array(fire)}),
        "exact_dup": pa.table({"doc_id": ids, "exact_dup_of": pa.array([near[i] if i in (target, control) else None
                                                                        for i in ids], pa.string())}),
        "near_dup": pa.table({"doc_id": ids, "near_dup_of": pa.array([near.get(i) for i in ids], pa.string())}),
    }
    id_file = tmp_path / "key_memories.txt"
    id_file.write_text(f"# documents the model must keep\n{target}\n")
    # Both value terms (utility left the default list in issue 21; the test is about every reason).
    stage = DecideStage(keep_if_any=["novelty", "utility"], prune_if_any=["exact_dup", "near_dup", "risk", "quality", "stale"],
                        cap={"night": 1.0, "source": 1.0},
                        protect={"explicit": {"key_memory": {"ids_file": str(id_file)},
                                              "safety_critical": {"where": f"risk > 0.9 AND doc_id = '{target}'"}}})
    out = run_decide(tmp_path, stage, docs, outputs)
    d = decisions(out)
    fired = ["low_novelty", "low_utility", f"exact_dup_of:{near[target]}", f"near_dup_of:{near[target]}",
             "risk>0.69", "quality_failed", "stale"]
    t = d[target]
    assert t["action"] == "keep" and t["protected"]
    assert {"key_memory", "safety_critical"} <= set(t["strata"])
    for reason in fired:
        assert reason in t["reasons"]
        assert any(r.startswith("protected:") and r.endswith(f" overrode {reason}") for r in t["reasons"]), reason
    w = writes(out)
    queued = set(w["prune_queue"]["doc_id"].to_pylist())
    assert target not in queued
    # The same tags without protection (no id list names it, the SQL stratum names only the
    # target): pruned, with every reason.
    c = d[control]
    assert not c["protected"] and not c["strata"]
    assert c["action"] == "prune" and control in queued
    assert [r for r in c["reasons"] if not r.startswith("no_")] == [
        "low_novelty", "low_utility", f"exact_dup_of:{near[control]}", f"near_dup_of:{near[control]}",
        "risk>0.69", "quality_failed", "stale"]
    prot = w["protected"].to_pylist()
    assert {"run_id": 1, "doc_id": target, "stratum": "key_memory", "reason": f"id file {id_file}"} in prot
    assert {r["doc_id"] for r in prot} == {i for i, r in d.items() if r["protected"]}
    # Nothing protected is ever queued; every queued document has a reason.
    assert not queued & {i for i, r in d.items() if r["protected"]}
    assert all(r for r in w["prune_queue"]["reasons"].to_pylist())
    # Rare sources of the corpus (one devil entry, six jargon entries of 500) are protected.
    assert {s for r in d.values() for s in r["strata"]} >= {"rare_source:devil", "rare_source:jargon", "rare_label:satire"}


def test_absent_taggers_are_skipped_and_recorded_or_fail_when_required(tmp_path: Path, part0) -> None:
    docs, _ = part0
    ids = docs["doc_id"].to_pylist()
    near = planted_near(set(ids))
    nd = pa.table({"doc_id": ids, "near_dup_of": pa.array([near.get(i) for i in ids], pa.string())})
    out = run_decide(tmp_path / "a", DecideStage(), docs, {"near_dup": nd})
    d = decisions(out)
    notes = ["no_novelty_tag", "no_exact_dup_tag", "no_risk_tag", "no_contaminated_tag"]  # the default rule's absent terms
    assert all(r["reasons"][:4] == notes for r in d.values())
    pruned = {i for i, r in d.items() if r["action"] == "prune"}
    assert pruned and all(d[i]["reasons"][4].startswith("near_dup_of:") for i in pruned)
    cov = writes(out)["coverage"].to_pylist()[0]
    assert cov["notes"][:4] == notes and "no_embedding_tag: no embedding clusters" in cov["notes"]
    assert cov["n_docs"] == len(ids) and cov["n_pruned"] == len(pruned) and cov["clusters_total"] is None
    with pytest.raises(ValueError, match=r"enable the `embedding` tagger and the `novelty` stage"):
        run_decide(tmp_path / "b", DecideStage(terms={"novelty": {"missing": "error"}}), docs, {"near_dup": nd})
    # Listed before a stage it reads, decide still runs after it (stages.base.build orders by reads).
    early = GliaConfig(run=RunOptions(stages=("decide", "replay", "dedup")))
    assert [s.name for s in stages_for(early)] == ["dedup", "decide", "replay"]


def test_restored_documents_are_not_requeued_for_the_same_kind_of_reason(tmp_path: Path, part0) -> None:
    docs, _ = part0
    ids = docs["doc_id"].to_pylist()
    near = planted_near(set(ids))
    a, b = sorted(near)[:2]
    outputs = {"near_dup": pa.table({"doc_id": ids, "near_dup_of": pa.array([near.get(i) for i in ids], pa.string())}),
               "risk": pa.table({"doc_id": ids, "risk": pa.array([0.9 if i == b else 0.1 for i in ids], pa.float32())})}
    restored = [("INSERT INTO prune_queue VALUES (?, 1, ['near_dup_of:' || ?], 0.0, 'restored', NULL, NULL, 'undo run 1')",
                 [d, near[d]]) for d in (a, b)]
    cap = {"night": 1.0, "source": 1.0}
    d = decisions(run_decide(tmp_path / "1", DecideStage(cap=cap), docs, outputs, run_id=2, setup_sql=restored))
    assert d[a]["action"] == "keep" and f"restored overrode near_dup_of:{near[a]}" in d[a]["reasons"]
    assert d[b]["action"] == "prune" and "risk>0.69" in d[b]["reasons"]  # a new kind of reason queues it again
    d = decisions(run_decide(tmp_path / "2", DecideStage(cap=cap, requeue_restored=True), docs, outputs, run_id=2,
                             setup_sql=restored))
    assert d[a]["action"] == "prune"


# -- embedding clusters and coverage ---------------------------------------------------------------


def lsa(texts: list[str], dim: int = 64) -> np.ndarray:
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    x = TfidfVectorizer(sublinear_tf=True, min_df=2).fit_transform(texts)
    e = TruncatedSVD(dim, random_state=0).fit_transform(x).astype(np.float32)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


@pytest.fixture(scope="module")
def night1_embedded() -> tuple[pa.Table, dict[str, pa.Table]]:
    docs, texts = night_docs(sorted(NIGHTS[1].glob("*.parquet")))
    ids = docs["doc_id"].to_pylist()
    emb = lsa([texts[i] for i in ids])
    near = planted_near(set(ids))
    return docs, {
        "embedding": pa.table({"doc_id": ids, "_embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), 64)}),
        "near_dup": pa.table({"doc_id": ids, "near_dup_of": pa.array([near.get(i) for i in ids], pa.string())}),
    }


def test_rarest_embedding_clusters_are_protected_and_coverage_is_measured(tmp_path: Path, night1_embedded) -> None:
    docs, outputs = night1_embedded
    stage = DecideStage(cap={"night": 1.0, "source": 1.0}, protect={"clusters": {"k": 12, "rare": 2, "max_share": 0.2}})
    out = run_decide(tmp_path / "a", stage, docs, outputs)
    d = decisions(out)
    in_rare = {i for i, r in d.items() if any(s.startswith("rare_cluster:") for s in r["strata"])}
    rare_ids = {s for r in d.values() for s in r["strata"] if s.startswith("rare_cluster:")}
    assert 1 <= len(rare_ids) <= 2 and 0 < len(in_rare) < 0.2 * 2 * len(d)
    assert all(d[i]["action"] == "keep" for i in in_rare)
    cov = writes(out)["coverage"].to_pylist()[0]
    pruned = [i for i, r in d.items() if r["action"] == "prune"]
    assert cov["n_pruned"] == len(pruned) > 40
    assert cov["clusters_total"] == 12 and cov["clusters_covered"] == 12 and cov["cluster_coverage"] == 1.0
    # Pruned near-duplicates sit next to a kept document: far closer than two random documents.
    emb = outputs["embedding"]["_embedding"].combine_chunks().flatten().to_numpy().reshape(-1, 64)
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, len(emb), 2000), rng.integers(0, len(emb), 2000)
    random_dist = float(np.mean(1 - (emb[a] * emb[b]).sum(1)))
    assert 0 <= cov["mean_pruned_to_kept"] < 0.5 * random_dist
    assert out.counts["cluster_coverage"] == 1.0 and out.counts["pruned"] == len(pruned)
    # Seeded and order-free: the same strata again from the shards in another order.
    again = decisions(run_decide(tmp_path / "b", stage, docs.take(pa.array(np.arange(docs.num_rows)[::-1])), outputs))
    assert {i: r["strata"] for i, r in again.items()} == {i: r["strata"] for i, r in d.items()}


# -- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize("body, message", [
    ("[stages.decide]\nfoo = 1", r"unknown key\(s\) foo"),
    ("[stages.decide]\nkeep_if_any = [\"novelty\", \"nonsense\"]", "unknown term 'nonsense'"),
    ("[stages.decide]\nkeep_if_any = [\"risk\"]", "in both keep_if_any and prune_if_any"),
    ("[stages.decide.terms.risk]\nthreshold = \"q1.5\"", r"terms.risk.threshold: 'q1.5' is not a quantile"),
    ("[stages.decide.terms.risk]\nop = \"~\"", r"terms.risk.op: '~' is not one of"),
    ("[stages.decide.terms.mine]\noutput = \"lm\"\ncolumn = \"loss\"\nop = \">\"\nthreshold = 1\n"
     "[stages.decide]\nprune_if_any = [\"mine\", \"near_dup\"]\nkeep_if_any = []", None),
    ("[stages.decide.cap]\nnight = 2", r"cap.night: expected a fraction"),
    ("[stages.decide.lifecycle]\nquarantine_after = 3\napply_after = 1", "must not exceed apply_after"),
    ("[stages.decide.protect.explicit.key_memory]\nwhere = \"label = = 'x'\"", "not a valid SQL predicate"),
    ("[stages.decide.protect.explicit.key_memory]\nwhere = \"true; DROP TABLE runs\"", "one predicate"),
    ("[stages.decide.protect.explicit.eval_set]\nids_file = \"no/such/file.txt\"", "is not a file"),
    ("[stages.decide.protect.clusters]\nk = 4\nrare = 4", "must be smaller than k"),
])
def test_rules_file_errors_name_the_key(tmp_path: Path, body: str, message: str | None) -> None:
    rules = tmp_path / "glia.toml"
    rules.write_text("[run]\nstages = [\"dedup\", \"decide\"]\n" + body + "\n")
    if message is None:  # a custom term, and an empty keep list, are fine
        assert load_config(rules).stage_params["decide"]["prune_if_any"] == ["mine", "near_dup"]
        return
    with pytest.raises(ConfigError, match=r"\[stages\.decide[\].]") as err:
        load_config(rules)
    assert err.match(message)


def test_the_documented_example_block_is_valid_and_shows_the_defaults() -> None:
    text = (REPO / "examples" / "glia.toml").read_text()
    lines = text[text.index("# [stages.decide]\n"):].splitlines()
    block = lines[:next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))]
    toml = "\n".join(line[2:] if line.startswith("# ") and not line.startswith("# #") else "" for line in block)
    params = tomllib.loads(toml)["stages"]["decide"]
    assert DecideStage(**params).config() == DecideStage().config()
    assert set(params) == {"keep_if_any", "prune_if_any", "missing", "requeue_restored", "terms", "cap", "lifecycle",
                           "protect"}


def test_queued_documents_that_become_protected_are_restored_before_they_are_applied(tmp_path: Path, part0) -> None:
    """A key memory named after its document was queued (night 1) is restored on the next night,
    with the stratum recorded; the other queued document moves on to quarantine."""
    docs, _ = part0
    earlier = [("INSERT INTO prune_queue VALUES (?, 1, ['near_dup_of:austen-000001'], 0.0, 'queued', 1, NULL, NULL)", [d])
               for d in ("kjv-900001", "kjv-900002")]
    stage = DecideStage(protect={"explicit": {"key_memory": {"ids": ["kjv-900001"]}}})
    out = run_decide(tmp_path, stage, docs, {}, run_id=2, setup_sql=earlier)
    w = writes(out)
    rows = {r["doc_id"]: (r["status"], r["run_id"], r["changed_run"], r["note"]) for r in w["prune_queue"].to_pylist()}
    assert rows == {"kjv-900001": ("restored", 1, 2, "protected:key_memory"),
                    "kjv-900002": ("quarantined", 1, 2, "quarantined after 1 night(s)")}
    assert {"run_id": 2, "doc_id": "kjv-900001", "stratum": "key_memory", "reason": "id list"} in w["protected"].to_pylist()
    assert out.counts["restored"] == 1 and out.counts["quarantined"] == 1
