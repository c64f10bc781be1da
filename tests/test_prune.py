"""Non-destructive pruning end to end: three nights of the example corpus through the real
flow with a rules file that enables ``decide``; the SQL views, the caps, the queue's lifecycle,
the clean manifest, and ``glia undo``."""

from __future__ import annotations

import math
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import NIGHTS, file_mtimes, query, run_night
from glia.curation import prune
from glia.storage import prune_queue
from glia.cli.main import EXIT_BUSY, EXIT_ERROR, EXIT_OK, main
from glia.storage.lock import RunInProgressError, RunLock

KEY_MEMORY = "austen-000332"  # a planted exact copy of austen-000070, both in night 1
RULES = f"""
[run]
stages = ["dedup", "decide"]
[stages.decide.cap]
night = 0.1
source = 0.3
[stages.decide.lifecycle]
quarantine_after = 1
apply_after = 2
[stages.decide.protect.explicit.key_memory]
ids = ["{KEY_MEMORY}"]
[stages.decide.protect.explicit.eval_set]
where = "label = 'satire'"
"""
QUEUE = "SELECT doc_id, queued_run, status FROM v_prune_queue ORDER BY doc_id"


class Nights:
    def __init__(self, base: Path) -> None:
        self.root, self.db, self.rules = base / "shards", base / "glia.duckdb", base / "glia.toml"
        self.queue: dict[int, list[tuple]] = {}
        self.manifest: dict[int, int] = {}


@pytest.fixture(scope="module")
def nights(tmp_path_factory: pytest.TempPathFactory) -> Nights:
    n = Nights(tmp_path_factory.mktemp("prune-nights"))
    n.root.mkdir()
    n.rules.write_text(RULES)
    for night in (1, 2, 3):
        shutil.copytree(NIGHTS[night], n.root / f"night{night}")
        assert run_night(n.root, n.db, n.rules).status == "completed"
        n.queue[night] = query(n.db, QUEUE)
        n.manifest[night] = query(n.db, "SELECT count(*) FROM v_manifest")[0][0]
    return n


def test_views_say_who_is_pruned_and_protected_and_why(nights: Nights) -> None:
    rows = query(nights.db, "SELECT doc_id, status, reasons, queued_run, shard_path, source FROM v_prune_queue")
    assert len(rows) == len({r[0] for r in rows}) > 200
    for doc_id, status, reasons, run, path, source in rows:
        assert reasons and all(r.split(":")[0] in ("exact_dup_of", "near_dup_of") for r in reasons), reasons
        assert path.endswith(".parquet") and f"night{run}" in path and doc_id.startswith(source)
    # The reasons are the document's own dedup tags: the ids it duplicates.
    tags = {d: (e, n) for d, e, n in query(nights.db, "SELECT doc_id, exact_dup_of, near_dup_of FROM v_documents")}
    for doc_id, _, reasons, *_ in rows:
        e, n = tags[doc_id]
        assert reasons == [f"exact_dup_of:{e}"] * (e is not None) + [f"near_dup_of:{n}"] * (n is not None)
    prot = query(nights.db, "SELECT doc_id, stratum, reason FROM v_protected")
    strata = {s for _, s, _ in prot}
    assert {"key_memory", "eval_set", "rare_source:jargon", "rare_source:devil", "rare_label:glossary"} <= strata
    assert (KEY_MEMORY, "key_memory", "id list") in prot
    assert all(reason for *_, reason in prot)
    satire = query(nights.db, "SELECT doc_id FROM v_documents WHERE label = 'satire'")
    assert {(d, "eval_set", "where label = 'satire'") for (d,) in satire} <= set(prot)


def test_protected_documents_are_never_queued_and_the_override_is_recorded(nights: Nights) -> None:
    assert query(nights.db, "SELECT count(*) FROM v_prune_queue JOIN v_protected USING (doc_id)") == [(0,)]
    (reasons, protected, strata), = query(nights.db, "SELECT reasons, protected, strata FROM decisions WHERE doc_id = ?",
                                          [KEY_MEMORY])
    assert protected and strata == ["key_memory"]
    assert "exact_dup_of:austen-000070" in reasons and "near_dup_of:austen-000070" in reasons
    assert "protected:key_memory overrode exact_dup_of:austen-000070" in reasons
    assert "protected:key_memory overrode near_dup_of:austen-000070" in reasons
    # Rarity protects too: night 2's near-duplicate jargon entries are kept, with the override.
    over = query(nights.db, """SELECT d.doc_id, d.action FROM decisions d JOIN documents USING (doc_id)
                               WHERE source = 'jargon' AND len(list_filter(reasons, lambda r: r LIKE '%overrode%')) > 0""")
    assert over and all(action == "keep" for _, action in over)


def test_caps_hold_per_night_and_per_source(nights: Nights) -> None:
    per_run = query(nights.db, "SELECT run_id, count(*), count(*) FILTER (action = 'prune') FROM decisions GROUP BY 1 ORDER BY 1")
    assert [r[0] for r in per_run] == [1, 2, 3]
    for run, n, pruned in per_run:
        assert 0 < pruned <= math.floor(0.1 * n)
    for run, source, n, pruned in query(nights.db, """
            SELECT run_id, source, count(*), count(*) FILTER (action = 'prune')
            FROM decisions JOIN documents USING (doc_id) GROUP BY ALL"""):
        assert pruned <= math.floor(0.3 * n), (run, source)
    held = dict(query(nights.db, "SELECT run_id, value FROM run_metrics WHERE metric = 'decide.held_by_cap'"))
    assert held[2] > 0 and held[3] > 0  # nights 2 and 3 have more duplicates than the caps allow
    cov = query(nights.db, "SELECT run_id, n_held_night + n_held_source FROM coverage ORDER BY run_id")
    assert cov == [(r, held[r]) for r in (1, 2, 3)]
    # Beyond the night cap the candidates most worth keeping stay.
    for run in (2, 3):
        worst_kept = query(nights.db, """SELECT min(priority) FROM decisions WHERE run_id = ?
                                         AND list_contains(reasons, 'held_by_cap:night')""", [run])[0][0]
        best_pruned = query(nights.db, "SELECT max(priority) FROM decisions WHERE run_id = ? AND action = 'prune'", [run])[0][0]
        assert worst_kept is None or worst_kept >= best_pruned
    n_held = query(nights.db, "SELECT count(*) FROM decisions WHERE list_contains(reasons, 'held_by_cap:night') "
                              "OR list_contains(reasons, 'held_by_cap:source')")[0][0]
    assert n_held == sum(held.values())


def test_the_queue_advances_queued_quarantined_applied_over_nights(nights: Nights) -> None:
    def by_run(night: int) -> dict[tuple[int, str], int]:
        out: dict[tuple[int, str], int] = {}
        for _, run, status in nights.queue[night]:
            out[(run, status)] = out.get((run, status), 0) + 1
        return out

    n1 = by_run(1)
    assert list(n1) == [(1, "queued")]
    n2 = by_run(2)
    assert set(n2) == {(1, "quarantined"), (2, "queued")} and n2[(1, "quarantined")] == n1[(1, "queued")]
    n3 = by_run(3)
    assert set(n3) == {(1, "applied"), (2, "quarantined"), (3, "queued")}
    assert n3[(1, "applied")] == n1[(1, "queued")] and n3[(2, "quarantined")] == n2[(2, "queued")]
    events = query(nights.db, "SELECT run_id, from_status, to_status, count(*) FROM prune_events GROUP BY ALL ORDER BY ALL")
    assert set(events) == {(1, None, "queued", n1[(1, "queued")]), (2, None, "queued", n2[(2, "queued")]),
                           (2, "queued", "quarantined", n1[(1, "queued")]), (3, None, "queued", n3[(3, "queued")]),
                           (3, "queued", "quarantined", n2[(2, "queued")]), (3, "quarantined", "applied", n1[(1, "queued")])}
    # Applied documents leave the manifest, and so does evaluation text (the eval_set stratum).
    n_eval = [query(nights.db, "SELECT count(DISTINCT doc_id) FROM protected WHERE stratum = 'eval_set' AND run_id <= ?",
                    [n])[0][0] for n in (1, 2, 3)]
    assert all(n_eval)
    assert [nights.manifest[n] for n in (1, 2, 3)] == [1500 - n_eval[0], 2300 - n_eval[1],
                                                       3100 - n1[(1, "queued")] - n_eval[2]]
    assert not query(nights.db, "SELECT * FROM v_manifest WHERE doc_id IN "
                                "(SELECT doc_id FROM protected WHERE stratum = 'eval_set')")


def test_manifest_export_points_at_the_documents_in_the_untouched_shards(nights: Nights, tmp_path: Path) -> None:
    before = file_mtimes(nights.root)
    out = tmp_path / "manifest.parquet"
    assert main(["manifest", "export", "--out", str(out), "--db", str(nights.db)]) == EXIT_OK
    m = pq.read_table(out)
    assert m.num_rows == nights.manifest[3]
    assert set(m["doc_id"].to_pylist()) == {r[0] for r in query(nights.db, "SELECT doc_id FROM v_manifest")}
    applied = {d for d, _, s in nights.queue[3] if s == "applied"}
    assert applied and not applied & set(m["doc_id"].to_pylist())
    # shard_path + row lead to the document: read every row of one shard back from the source.
    path = m["shard_path"][0].as_py()
    part = m.filter(pa.compute.equal(m["shard_path"], path))
    ids = pq.read_table(path, columns=["id"])["id"].to_numpy(zero_copy_only=False)
    assert (ids[part["row"].to_numpy()] == np.asarray(part["doc_id"].to_pylist(), dtype=object)).all()
    assert file_mtimes(nights.root) == before  # shards never touched


def test_undo_restores_exactly_what_was_queued(nights: Nights, tmp_path: Path) -> None:
    db = tmp_path / "copy.duckdb"
    shutil.copy(nights.db, db)  # tag files and shards are read where they are; only the catalog changes
    queue = {d: (run, status) for d, run, status in nights.queue[3]}
    run2 = sorted(d for d, (run, _) in queue.items() if run == 2)
    n_applied = sum(1 for run, s in queue.values() if s == "applied")

    res = prune_queue.undo(db, run_id=1)
    assert sorted(res.restored) == sorted(d for d, (run, _) in queue.items() if run == 1)
    after = {d: (run, s) for d, run, s in query(db, QUEUE)}
    assert {d for d, v in after.items() if v != queue[d]} == set(res.restored)
    assert all(after[d][1] == "restored" for d in res.restored)
    n_eval = query(db, "SELECT count(DISTINCT doc_id) FROM protected WHERE stratum = 'eval_set'")[0][0]
    assert query(db, "SELECT count(*) FROM v_manifest")[0][0] == 3100 - n_eval  # the applied ones are back

    assert main(["undo", "--doc", run2[0], "--doc", run2[1], "--db", str(db)]) == EXIT_OK
    after2 = {d: (run, s) for d, run, s in query(db, QUEUE)}
    assert {d for d, v in after2.items() if v != after[d]} == set(run2[:2])

    reasons = dict(query(db, "SELECT doc_id, reasons FROM prune_queue"))
    exact = {d for d, (_, s) in after2.items() if s != "restored" and any(r.startswith("exact_dup_of:") for r in reasons[d])}
    assert any(after2[d][0] == 3 for d in exact)
    res = prune_queue.undo(db, reason="exact_dup_of")
    assert set(res.restored) == exact
    assert query(db, "SELECT count(*) FROM prune_queue WHERE status <> 'restored' AND "
                     "len(list_filter(reasons, lambda r: r LIKE 'exact_dup_of:%')) > 0") == [(0,)]
    # Every restore is logged, without a run; nothing left to undo is an error.
    assert query(db, "SELECT count(*) FROM prune_events WHERE run_id IS NULL")[0][0] == n_restored(db)
    assert main(["undo", "1", "--db", str(db)]) == EXIT_ERROR
    assert n_applied > 0


def n_restored(db: Path) -> int:
    return query(db, "SELECT count(*) FROM prune_queue WHERE status = 'restored'")[0][0]


def test_undo_waits_for_a_running_night(nights: Nights, tmp_path: Path) -> None:
    db = tmp_path / "copy.duckdb"
    shutil.copy(nights.db, db)
    with RunLock(db):
        with pytest.raises(RunInProgressError):
            prune_queue.undo(db, run_id=2)
        assert main(["undo", "2", "--db", str(db)]) == EXIT_BUSY
    assert query(db, "SELECT count(*) FROM prune_queue WHERE status = 'restored'") == [(0,)]
    with pytest.raises(ValueError, match="exactly one of"):
        prune_queue.undo(db, run_id=2, reason="near_dup_of")


def test_restored_documents_stay_restored_when_their_shard_comes_back(tmp_path: Path) -> None:
    """A night-1 shard is rewritten after ``glia undo``: its documents are decided again, and
    the ones the user restored are not queued again for the same kind of reason."""
    root, db, rules = tmp_path / "shards", tmp_path / "glia.duckdb", tmp_path / "glia.toml"
    root.mkdir()
    shutil.copy(NIGHTS[1] / "part-00001.parquet", root)  # one shard is enough: it has duplicates inside
    rules.write_text("[run]\nstages = [\"dedup\", \"decide\"]\n[stages.decide.cap]\nnight = 1.0\nsource = 1.0\n")
    run_night(root, db, rules)
    shard = str(root / "part-00001.parquet")
    queued = {d for (d,) in query(db, "SELECT doc_id FROM v_prune_queue WHERE shard_path = ?", [shard])}
    assert queued
    prune_queue.undo(db, run_id=1)
    table = pq.read_table(shard)
    pq.write_table(table, shard, row_group_size=100)  # same rows, new bytes: a changed shard
    assert run_night(root, db, rules).status == "completed"
    again = dict(query(db, "SELECT doc_id, reasons FROM decisions WHERE run_id = 2 AND action = 'keep' AND "
                           "len(list_filter(reasons, lambda r: r LIKE 'restored overrode %')) > 0"))
    assert set(again) == queued
    assert query(db, "SELECT DISTINCT status FROM prune_queue WHERE doc_id IN (SELECT unnest(?))", [sorted(queued)]) \
        == [("restored",)]


# -- the lifecycle as a function ------------------------------------------------------------------


def test_advance_moves_forward_restores_protected_and_kept_documents() -> None:
    t0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
    queue = pa.table({
        "doc_id": ["a", "b", "c", "d", "e"], "run_id": pa.array([1, 2, 3, 1, 1], pa.int32()),
        "reasons": [["near_dup_of:x"]] * 5, "priority": pa.array([0.0] * 5, pa.float32()),
        "status": ["quarantined", "queued", "queued", "applied", "restored"],
        "changed_run": pa.array([2, 2, 3, 3, 2], pa.int32()), "changed_at": pa.array([t0] * 5, pa.timestamp("us", tz="UTC")),
        "note": [None] * 5,
    })
    tonight = pa.table({"doc_id": ["c", "f", "g", "e"], "action": ["keep", "prune", "keep", "prune"],
                        "prune_reasons": [[], ["risk>0.8"], [], ["risk>0.8"]], "priority": pa.array([0.1] * 4, pa.float32())})
    protected = pa.table({"doc_id": ["b"], "strata": ["key_memory"]})
    lc = prune.Lifecycle(quarantine_after=1, apply_after=3)
    # Runs 1..3 completed; tonight is run 4: a (queued by 1) has 3 nights, b (by 2) is protected.
    ch = prune.advance(queue, tonight, protected, [1, 2, 3], lc, run_id=4, now=t0)
    got = {r["doc_id"]: (r["status"], r["run_id"], r["note"]) for r in ch.rows.to_pylist()}
    assert got == {
        "a": ("applied", 1, "applied after 3 night(s)"),
        "b": ("restored", 2, "protected:key_memory"),
        "c": ("restored", 3, "kept by run 4"),
        "f": ("queued", 4, "queued by run 4"),
        "e": ("queued", 4, "queued by run 4"),  # restored before, queued again for a new kind of reason
    }
    assert ch.counts == {"queued": 2, "quarantined": 0, "applied": 1, "restored": 2, "restored_protected": 1}
    ev = {(r["doc_id"], r["from_status"], r["to_status"]) for r in ch.events.to_pylist()}
    assert ev == {("a", "quarantined", "applied"), ("b", "queued", "restored"), ("c", "queued", "restored"),
                  ("f", None, "queued"), ("e", None, "queued")}
    # apply_after = 0 applies at once (no grace period); statuses never move backwards.
    ch0 = prune.advance(queue.slice(0, 0), tonight, protected.slice(0, 0), [], prune.Lifecycle(0, 0), run_id=1, now=t0)
    assert set(ch0.rows["status"].to_pylist()) == {"applied"}
    assert prune.nights_since(np.array([1, 3, 4]), np.array([1, 2, 3])).tolist() == [3, 1, 1]
