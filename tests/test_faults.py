"""Crash at any point, rerun finishes: fault injection with a real SIGKILL.

Each scenario restores a saved state (nothing run yet, or night 1 committed), runs ``glia run``
with ``GLIA_FAULT`` naming a point of the nightly flow (``core.faults``), checks that the
process died by SIGKILL and that the database still shows exactly the last committed state,
then reruns without the fault and checks that the catalog (every table and view, and the
contents of every file a row points to) and the state folder equal those of an uninterrupted
run on the same input: no row lost, doubled or half-written.

The scenarios run through the Prefect flow (tasks, result cache, retries around the engine's
steps); ``GLIA_FAULTS_ORCHESTRATOR=plain`` runs them through the plain-Python engine that
``glia run`` uses when Prefect adds nothing (``glia run --orchestrator``). Speed: a Prefect
``glia run`` subprocess pays ~5 s of imports and ~6-15 s of Prefect server start. Runs are
therefore forked from a *launcher* process that imported Glia and started one Prefect server
once; each fork runs the real ``cli.main.main(["run", ...])`` and is killed for real.
``test_plain_cli_subprocess_killed`` runs ``python -m cli.main`` as a plain subprocess,
the way cron would: as plain Python (the default without a Prefect server), and through the
flow with Prefect's embedded server, which must not outlive the killed run.

``GLIA_FAULTS_RULES=<rules.toml>`` runs every scenario with that rules file (e.g. with the
model taggers and every night stage enabled); the comparison is generic, so new tables,
views and files are covered without changes here. ``GLIA_FAULTS_REPORT=<file.json>`` writes
what happened at every injected fault.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import COMMONS, NIGHTS, REPO, cli_env, open_db

RULES_OVERRIDE = os.environ.get("GLIA_FAULTS_RULES")
REPORT_PATH = os.environ.get("GLIA_FAULTS_REPORT")
ORCHESTRATOR = os.environ.get("GLIA_FAULTS_ORCHESTRATOR", "prefect")
# Small batches, so a shard's attribute file is written in several pieces and a kill
# "mid-tagger" lands between two of them.
DEFAULT_RULES = "[run]\nbatch_size = 24\n"
ROWS_PER_SHARD = 50
PLANTED_PER_NIGHT = 20
KILLED = -signal.SIGKILL

# -- the launcher: pays imports and the Prefect server start once ---------------------------

LAUNCHER = r"""
import json, os, sys, time, traceback

proto = os.fdopen(os.dup(1), "w")  # replies go here; fd 1/2 go to a log (the server writes there)
log = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
os.dup2(log, 1)
os.dup2(log, 2)

import glia.flows.nightly  # noqa: F401  the expensive import, paid once
import prefect.context
from glia.cli import main as cli
from prefect.server.api.server import SubprocessASGIServer

server = SubprocessASGIServer()
server.start(timeout=180)
os.environ["PREFECT_API_URL"] = server.api_url
prefect.context.refresh_global_settings_context()
proto.write(json.dumps({"ready": server.api_url}) + "\n")
proto.flush()
for line in sys.stdin:
    req = json.loads(line)
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.environ.update(req["env"])
            prefect.context.refresh_global_settings_context()
            code = cli.main(req["args"])
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    proto.write(json.dumps({"rc": os.waitstatus_to_exitcode(status), "seconds": time.monotonic() - t0}) + "\n")
    proto.flush()
"""


class Launcher:
    """A long-lived process that forks one real ``glia run`` per request."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(log)], cwd=REPO, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()  # EOF, not a hang, if it dies
        assert line.startswith('{"ready"'), f"launcher did not start: {log.read_text() if log.exists() else ''}"

    def run(self, args: list[str], env: dict[str, str], log: Path) -> tuple[int, float, str]:
        self.proc.stdin.write(json.dumps({"args": args, "env": env, "log": str(log)}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"launcher died: {self.log.read_text()}"
        reply = json.loads(line)
        return reply["rc"], reply["seconds"], log.read_text()

    def close(self) -> None:
        self.proc.stdin.close()  # the launcher exits; its atexit stops the Prefect server
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.proc.stdout.close()


# -- the input: a few hundred real documents over two nights, with bad input on night 2 -----


def _planted_ids(night: int) -> set[str]:
    """Both ends of the first planted pairs whose duplicate arrives on ``night``."""
    with (COMMONS / "planted.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if int(r["night_of_doc"]) == night and int(r["night_of_original"]) <= night]
    ids: set[str] = set()
    for r in rows[:PLANTED_PER_NIGHT]:
        ids |= {r["doc_id"], r["duplicate_of"]}
    return ids


def build_inputs(out: Path) -> dict[int, Path]:
    """Night 1 and night 2 shards cut from the example corpus (first rows of each shard plus
    planted duplicate pairs within and across nights). Night 2 also gets a shard with a
    blank text and an id already used on night 1, and a file that is not Parquet."""
    keep = _planted_ids(1) | _planted_ids(2)
    dirs = {}
    for night in (1, 2):
        d = out / f"night{night}"
        d.mkdir(parents=True)
        for f in sorted(NIGHTS[night].glob("*.parquet")):
            t = pq.read_table(f)
            ids = t["id"].to_pylist()
            mask = [i < ROWS_PER_SHARD or doc in keep for i, doc in enumerate(ids)]
            pq.write_table(t.filter(pa.array(mask)), d / f.name)
        dirs[night] = d
    first = pq.read_table(dirs[1] / "part-00000.parquet").slice(0, 1)
    extra = pq.read_table(NIGHTS[2] / "part-00001.parquet").slice(300, 10)
    blank = extra.slice(0, 1).set_column(1, "text", pa.array(["   "]))
    blank = blank.set_column(0, "id", pa.array(["fault-test-blank"]))
    pq.write_table(pa.concat_tables([extra.slice(1), first, blank]), dirs[2] / "part-extra.parquet")
    (dirs[2] / "notes.parquet").write_text("id,text\nthis is CSV, not Parquet\n")
    return dirs


# -- canonical dump of a database and its state folder ----------------------------------------

VOLATILE_COLUMNS = re.compile(r"^(seconds|.*_seconds)$")
VOLATILE_METRIC = re.compile(r"(^|\.)seconds($|\.)")
RUN_TABLES = ("runs", "v_runs", "run_metrics")


@dataclass
class Dump:
    """What a run leaves behind, normalised for comparison between two runs."""

    db: dict[str, list[tuple]]  # table/view name -> sorted rows; "files:" -> registered file digests
    disk: dict[str, str]  # state folder, relative path -> content digest (hidden temp files aside)
    leftovers: list[str]  # hidden temp files and spill files left in the state folder
    nothing_new_runs: list[int] = field(default_factory=list)


def parquet_digest(path: Path) -> str:
    """Digest of a Parquet file's rows (order-free) and its Glia footer metadata."""
    t = pq.read_table(path)
    # Timings (the lm tagger's `_lm_seconds`) are measurements, not results: like the run's
    # `seconds.*` metrics they differ between any two runs, so only their presence counts.
    t = t.drop_columns([c for c in t.column_names if VOLATILE_COLUMNS.match(c.lstrip("_"))])
    rows = sorted(repr(tuple(r.values())) for r in t.to_pylist())
    meta = (t.schema.metadata or {}).get(b"glia", b"")
    h = hashlib.sha256(meta + repr(t.schema.remove_metadata()).encode())
    for r in rows:
        h.update(r.encode())
    return f"{t.num_rows} rows {h.hexdigest()[:16]}"


def file_digest(path: Path) -> str:
    if path.suffix == ".parquet":
        return parquet_digest(path)
    return "sha256 " + hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _norm(value: Any, col: str, since: datetime) -> Any:
    if isinstance(value, datetime):
        v = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        if v >= since:
            return "<time of the run>"
    if VOLATILE_COLUMNS.match(col) and isinstance(value, (int, float)):
        return "<seconds>"
    if isinstance(value, float):
        # DuckDB sums in parallel, so an aggregate (a mean in run_metrics) may differ in the
        # last bits between two identical runs; a lost or doubled row moves it far more.
        return float(f"{value:.12g}")
    return value


def dump(db: Path, state: Path, since: datetime) -> Dump:
    """Every table and view (sorted rows), the digest of every file that a table row names,
    and the state folder's files. Normalised: timestamps taken during the test, durations,
    and the rows of ``nothing_new`` runs (a rerun after a kill that came after the commit)."""
    with open_db(db) as con:
        objects = con.execute(
            "SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = 'main' ORDER BY 1"
        ).fetchall()
        names = {n for n, _ in objects}
        nothing_new = []
        if "runs" in names:
            nothing_new = [r[0] for r in con.execute("SELECT run_id FROM runs WHERE status = 'nothing_new'").fetchall()]
        out: dict[str, list[tuple]] = {}
        files: dict[str, str] = {}
        for name, kind in objects:
            rel = con.sql(f'SELECT * FROM "{name}"')
            cols = rel.columns
            rows = []
            for row in rel.fetchall():
                rec = dict(zip(cols, row))
                if name in RUN_TABLES and rec.get("run_id") in nothing_new:
                    continue
                if "metric" in rec and "value" in rec and VOLATILE_METRIC.search(str(rec["metric"])):
                    rec["value"] = "<seconds>"
                rows.append(tuple(_norm(v, c, since) for c, v in rec.items()))
                if kind == "BASE TABLE":
                    for v in row:
                        if isinstance(v, str) and v.startswith(str(state)) and v not in files:
                            p = Path(v)
                            files[v] = file_digest(p) if p.is_file() else "MISSING"
            out[f"{kind.lower()} {name}"] = sorted(rows, key=repr)
        out["view definitions"] = sorted(con.execute(
            "SELECT view_name, sql FROM duckdb_views() WHERE NOT internal AND schema_name = 'main'").fetchall())
        out["files named in tables"] = sorted(files.items())
    disk, leftovers = {}, []
    if state.exists():
        for p in sorted(state.rglob("*")):
            if not p.is_file():
                continue
            rel_path = str(p.relative_to(state))
            if p.name.startswith(".") or rel_path.startswith("tmp/"):
                leftovers.append(rel_path)
            else:
                disk[rel_path] = file_digest(p)
    return Dump(out, disk, leftovers, nothing_new)


def differences(got: dict, want: dict) -> list[str]:
    """Per table: rows lost and rows extra (a doubled row counts as extra)."""
    problems = []
    for key in sorted(set(got) | set(want)):
        a, b = got.get(key), want.get(key)
        if a == b:
            continue
        if a is None or b is None:
            problems.append(f"{key}: only in the {'reference' if a is None else 'crashed-and-rerun'} database")
            continue
        if isinstance(a, str) or isinstance(b, str):
            problems.append(f"{key}: {a!r} != {b!r}")
            continue
        ca, cb = Counter(map(repr, a)), Counter(map(repr, b))
        lost, extra = cb - ca, ca - cb
        problems.append(f"{key}: {sum(lost.values())} row(s) lost, {sum(extra.values())} extra; "
                        f"lost e.g. {list(lost)[:2]}, extra e.g. {list(extra)[:2]}")
    return problems


# -- the lab: saved states, reference runs, scenarios -----------------------------------------


@dataclass
class Lab:
    base: Path
    work: Path  # every run happens here, so paths in the catalog are the same in all of them
    inputs: dict[int, Path]
    rules: Path
    launcher: Launcher
    since: datetime
    saved: dict[int, Path] = field(default_factory=dict)  # nights committed -> saved copy of work/
    reference: dict[int, Dump] = field(default_factory=dict)
    traces: dict[int, list[str]] = field(default_factory=dict)
    report: list[dict[str, Any]] = field(default_factory=list)
    n_runs: int = 0

    @property
    def db(self) -> Path:
        return self.work / "glia.duckdb"

    @property
    def state(self) -> Path:
        return self.work / "glia_data"

    def restore(self, committed: int) -> None:
        """Put work/ back as it was with ``committed`` nights committed, and deliver the next
        night's shards (copied with their mtimes, so the registry sees identical files)."""
        shutil.rmtree(self.work, ignore_errors=True)
        shutil.copytree(self.saved[committed], self.work, symlinks=True)
        night = committed + 1
        if night in self.inputs:
            shutil.copytree(self.inputs[night], self.work / "shards" / f"night{night}")

    def glia_run(self, tag: str, fault: str | None = None, trace: Path | None = None,
                 results: Path | None = None) -> tuple[int, float, str]:
        env = {"GLIA_FAULT": fault or "", "GLIA_FAULT_TRACE": str(trace or ""),
               "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(results or self.base / "results" / tag)}
        self.n_runs += 1
        log = self.base / "logs" / f"{self.n_runs:03d}-{tag}.log"
        log.parent.mkdir(exist_ok=True)
        args = ["run", str(self.work / "shards"), "--db", str(self.db), "--rules", str(self.rules), "-q",
                "--orchestrator", ORCHESTRATOR]
        return self.launcher.run(args, env, log)

    def dump(self) -> Dump:
        return dump(self.db, self.state, self.since)


# Every tagger and stage, with the fast settings of each (static embeddings, a 4-document LM
# sample of 32 tokens, the numpy LSTM for risk): the tables and files that only they write (bank, surprise traces,
# decisions, queue, protected strata, replay sets) must come back identical too.
FULL_RULES = """[run]
batch_size = 24
taggers = ["exact", "minhash", "embedding", "lm", "risk", "quality", "staleness", "decontaminate", "pii", "lang"]
stages = ["dedup", "novelty", "semantic_dedup", "surprise", "decide", "replay"]
[taggers.decontaminate.sets.fortunes]
path = "%s"
[taggers.embedding]
model = "static"
[taggers.risk]
backend = "lstm"
[taggers.lang]
expected = ["en"]
[taggers.lm]
max_docs_per_night = 4
max_tokens = 32
batch_size = 4
[stages.replay]
size = 64
[stages.decide]
prune_if_any = ["exact_dup", "near_dup", "risk", "semantic_dup", "lang_not_in"]
[stages.decide.protect.clusters]
k = 4
""" % (REPO / "examples" / "eval" / "fortunes.parquet")


def make_lab(tmp_path_factory: pytest.TempPathFactory, rules_text: str, name: str) -> Iterator[Lab]:
    base = tmp_path_factory.mktemp(name)
    inputs = build_inputs(base / "inputs")
    rules = base / "rules.toml"
    rules.write_text(rules_text)
    env = cli_env()
    env.setdefault("GLIA_MODEL_CACHE", str(REPO / ".glia" / "models"))
    launcher = Launcher(env, base / "launcher.log")
    lab = Lab(base, base / "work", inputs, rules, launcher, datetime.now(timezone.utc) - timedelta(minutes=1))
    try:
        lab.saved[0] = base / "saved-0"
        (lab.saved[0] / "shards").mkdir(parents=True)
        for night in (1, 2):
            lab.restore(night - 1)
            trace = base / f"trace-{night}.txt"
            rc, secs, out = lab.glia_run(f"reference-{night}", trace=trace)
            assert rc == 0, out
            lab.traces[night] = trace.read_text().split()
            lab.reference[night] = lab.dump()
            lab.report.append({"night": night, "fault": None, "reference_seconds": round(secs, 2)})
            lab.saved[night] = base / f"saved-{night}"
            shutil.copytree(lab.work, lab.saved[night], symlinks=True)
        yield lab
    finally:
        launcher.close()
        if REPORT_PATH:
            Path(REPORT_PATH).with_suffix(f".{name}.json").write_text(json.dumps(lab.report, indent=1, default=str))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The dedup night (or ``GLIA_FAULTS_RULES``), killed at every point."""
    yield from make_lab(tmp_path_factory, Path(RULES_OVERRIDE).read_text() if RULES_OVERRIDE else DEFAULT_RULES,
                        "faults")


@pytest.fixture(scope="module")
def full_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """Every tagger and stage on, killed at a few points (each run loads the models: ~25 s)."""
    yield from make_lab(tmp_path_factory, FULL_RULES, "faults-full")


# Where to kill. Each slot expands, from the reference run's trace of fault points, into one
# or more ``name@N`` kills (one per tagger or stage that ran).
def kills_for(slot: str, trace: list[str]) -> list[str]:
    seen = list(dict.fromkeys(trace))
    taggers = [n.removeprefix("tag.batch.") for n in seen if n.startswith("tag.batch.")]
    stages = [n.removeprefix("stage.before.") for n in seen if n.startswith("stage.before.")]
    if slot == "discover":
        return [f"discover@{min(2, trace.count('discover'))}"]
    if slot == "ingest-done":
        return ["ingest.done@1"]
    if slot == "mid-tagger":  # the tagger's file has batches written, no footer, not renamed
        return [f"tag.batch.{t}@1" for t in taggers]
    if slot == "between-taggers":  # one tagger's file for a shard is whole, the next ones' are not
        return [f"tag.done.{t}@1" for t in (taggers[:-1] or taggers)]
    if slot == "before-stage":
        return [f"stage.before.{s}@1" for s in stages]
    if slot == "mid-stage":  # the first file a stage writes (index segment, bank, tags), half-written
        out = []
        for s in stages:
            start, end = trace.index(f"stage.before.{s}"), trace.index(f"stage.after.{s}")
            if "write_atomic.batch" in trace[start:end]:
                out.append(f"write_atomic.batch@{trace[:start].count('write_atomic.batch') + 1}")
        return out
    if slot == "after-stage":
        return [f"stage.after.{s}@1" for s in stages]
    if slot in ("commit.mid", "commit.end", "finalize.after_commit"):
        return [f"{slot}@1"]
    raise ValueError(slot)


NIGHT2_SLOTS = ["discover", "ingest-done", "mid-tagger", "between-taggers", "before-stage", "mid-stage",
                "after-stage", "commit.mid", "commit.end", "finalize.after_commit"]
# Night 1 starts from no database: a kill right after it is created, and one just before its first
# commit. Every other point is exercised on night 2, against a committed history.
NIGHT1_SLOTS = ["discover", "commit.end"]
KNOWN = re.compile(r"^(discover|ingest\.done|tag\.(batch|done)\.\w+|stage\.(before|after)\.\w+|write_atomic\.batch|"
                   r"commit\.(mid|end)|finalize\.after_commit)$")


def crash_and_rerun(lab: Lab, night: int, kill: str) -> None:
    lab.restore(night - 1)
    results = lab.base / "results" / f"n{night}-{kill}"  # the crashed run and its rerun share a cache
    rc, secs_killed, out = lab.glia_run(f"n{night}-{kill}", fault=kill, results=results)
    assert rc == KILLED, f"GLIA_FAULT={kill}: expected death by SIGKILL, got exit {rc}\n{out}"
    entry: dict[str, Any] = {"night": night, "fault": kill, "killed_after_seconds": round(secs_killed, 2)}

    # A crash shows nothing of the crashed run: the catalog is the last committed state.
    after_kill = lab.dump()
    committed_by_kill = kill.startswith("finalize.after_commit")
    if committed_by_kill:
        expected = lab.reference[night].db
    elif night > 1:
        expected = lab.reference[night - 1].db
    else:
        expected = None
    if expected is not None:
        assert differences(after_kill.db, expected) == [], f"after the kill at {kill}"
    else:
        leaked = {k: len(v) for k, v in after_kill.db.items()
                  if k.startswith("base table") and k != "base table schema_version" and v}
        assert leaked == {}, f"night 1 killed at {kill}: rows visible before any commit"
    entry["visible_after_kill"] = "night committed" if committed_by_kill else "last committed state only"
    entry["leftovers_after_kill"] = after_kill.leftovers

    rc, secs_rerun, out = lab.glia_run(f"n{night}-{kill}-rerun", results=results)
    assert rc == 0, f"rerun after GLIA_FAULT={kill} failed:\n{out}"
    got, want = lab.dump(), lab.reference[night]
    assert differences(got.db, want.db) == [], f"catalog after crash at {kill} + rerun differs from an uninterrupted run"
    assert differences(got.disk, want.disk) == [], f"state folder after crash at {kill} + rerun differs"
    # A kill after the commit leaves a committed night: the rerun finds nothing new.
    assert len(got.nothing_new_runs) == (1 if committed_by_kill else 0), out
    # A killed writer's temp file never becomes a real file, and what the rerun's garbage
    # collection cannot tell apart from a live run (hidden temp files) is all that may remain.
    assert all(Path(p).name.startswith(".") and p.endswith(".tmp") for p in got.leftovers), got.leftovers
    entry.update(rerun_seconds=round(secs_rerun, 2), rerun_status="nothing_new" if committed_by_kill else "completed",
                 identical_to_uninterrupted=True, leftovers_after_rerun=got.leftovers)
    lab.report.append(entry)


@pytest.mark.parametrize("night, slot", [(1, s) for s in NIGHT1_SLOTS] + [(2, s) for s in NIGHT2_SLOTS])
def test_crash_on_a_night(lab: Lab, night: int, slot: str) -> None:
    kills = kills_for(slot, lab.traces[night])
    assert kills, f"the reference run of night {night} never reached a {slot} point"
    for kill in kills:
        crash_and_rerun(lab, night, kill)


# In the LM tagger mid-shard; after the novelty stage wrote tonight's bank snapshot (not yet
# committed); in the middle of the commit; in the decontaminate tagger mid-shard (its n-gram index
# was built at config load); after the semantic_dedup stage. `GLIA_FAULTS_RULES` runs every slot above
# with any rules.
FULL_KILLS = ["tag.batch.lm@1", "stage.after.novelty@1", "commit.mid@1", "tag.batch.decontaminate@1",
              "stage.after.semantic_dedup@1"]


@pytest.mark.parametrize("kill", FULL_KILLS)
def test_crash_with_every_tagger_and_stage(full_lab: Lab, kill: str) -> None:
    assert kill.split("@")[0] in full_lab.traces[2], f"the reference run never reached {kill}"
    crash_and_rerun(full_lab, 2, kill)


def test_every_fault_point_has_a_scenario(lab: Lab) -> None:
    """A fault point added to the code (or reached by a newly enabled tagger or stage) that no
    slot above kills at must get a scenario; and the flow must pass every kind of point."""
    reached = set(lab.traces[2])
    unknown = sorted(n for n in reached if not KNOWN.match(n))
    assert unknown == [], f"fault points without a crash scenario: {unknown}; add them to kills_for()"
    for kind in ("discover", "ingest.done", "tag.batch.", "tag.done.", "stage.before.", "stage.after.",
                 "write_atomic.batch", "commit.mid", "commit.end", "finalize.after_commit"):
        assert any(n.startswith(kind) for n in reached), f"the nightly flow no longer passes a {kind} point"


def test_uninterrupted_runs_are_reproducible(lab: Lab) -> None:
    """The comparison's baseline: the same night run twice without a fault dumps identically
    (so a difference after a crash is the crash's doing, not noise)."""
    lab.restore(1)
    rc, _, out = lab.glia_run("n2-again")
    assert rc == 0, out
    got = lab.dump()
    assert differences(got.db, lab.reference[2].db) == []
    assert differences(got.disk, lab.reference[2].disk) == []


def test_comparison_sees_lost_doubled_and_changed_rows(lab: Lab, tmp_path: Path) -> None:
    """The dump catches a lost row, a doubled row and a changed attribute file."""
    lab.restore(2)
    want = lab.reference[2]
    with duckdb.connect(str(lab.db)) as con:
        con.execute("DELETE FROM skipped WHERE rowid = (SELECT min(rowid) FROM skipped)")
    assert any(p.startswith("base table skipped: 1 row(s) lost") for p in differences(lab.dump().db, want.db))
    lab.restore(2)
    with duckdb.connect(str(lab.db)) as con:
        con.execute("INSERT INTO shards SELECT * REPLACE (shard_id || 'x' AS shard_id) FROM shards LIMIT 1")
    assert any(p.startswith("base table shards: 0 row(s) lost, 1 extra") for p in differences(lab.dump().db, want.db))
    lab.restore(2)
    victim = next(lab.state.glob("tags/exact@*/*.parquet"))
    t = pq.read_table(victim)
    pq.write_table(t.slice(1).replace_schema_metadata(t.schema.metadata), victim)
    problems = differences(lab.dump().db, want.db)
    assert any(p.startswith("files named in tables") for p in problems), problems
    assert any(p.startswith("view tags_exact") for p in problems), problems


def test_fault_point_kills_only_the_named_occurrence(tmp_path: Path) -> None:
    """``name@N`` kills at the Nth time, not before; other names pass; the trace lists all."""
    script = ("from glia.core import faults\n"
              "for i in range(5):\n"
              "    faults.point('other')\n"
              "    print(i, flush=True)\n"
              "    faults.point('step')\n")
    trace = tmp_path / "trace.txt"
    env = {**os.environ, "GLIA_FAULT": "step@3", "GLIA_FAULT_TRACE": str(trace)}
    res = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == KILLED, res.stderr
    assert res.stdout.split() == ["0", "1", "2"]
    assert trace.read_text().split() == ["other", "step"] * 3
    env["GLIA_FAULT"] = "step@x"
    res = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "NAME@N" in res.stderr


# -- the real command line, as cron runs it ---------------------------------------------------


def _processes_with(token: str) -> list[int]:
    """Processes whose environment carries ``token`` (ours: the token is fresh per test)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if token.encode() in (d / "environ").read_bytes():
                pids.append(int(d.name))
        except OSError:
            continue
    return pids


def _outliving(token: str, grace: float) -> list[int]:
    """Processes carrying ``token`` that are still alive ``grace`` seconds after their parent
    was killed. The embedded server gets SIGTERM at once (flows.deathsig) but uvicorn's
    graceful shutdown can take seconds on a loaded machine: wait for the exit, not a fixed
    sleep, and return as soon as none is left."""
    deadline = time.monotonic() + grace
    while True:
        left = [p for p in _processes_with(token) if p != os.getpid()]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def _killed_cli(cwd: Path, shards: Path, db: Path, rules: Path | None, orchestrator: str,
                log: Path, **env_vars: str) -> tuple[int, float, list[int]]:
    """``python -m glia.cli.main run`` as a plain subprocess, the way cron would run it, killed
    in the middle of its commit: its exit status, the seconds it ran, and the processes it
    started that are still alive a minute later (killed here: they are this test's)."""
    token = uuid.uuid4().hex
    env = {**cli_env(), **env_vars, "GLIA_FAULT": "commit.mid", "GLIA_FAULT_TEST_TOKEN": token}
    env.setdefault("GLIA_MODEL_CACHE", str(REPO / ".glia" / "models"))
    args = [sys.executable, "-m", "glia.cli.main", "run", str(shards), "--db", str(db), "-q",
            "--orchestrator", orchestrator, *(["--rules", str(rules)] if rules else [])]
    t0 = time.monotonic()
    # Output to a file, not a pipe: a process that outlives the killed run (Prefect's server)
    # would hold a pipe open and keep us waiting for its end.
    with log.open("w") as fh:
        res = subprocess.run(args, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=240)
    secs = time.monotonic() - t0
    orphans = _outliving(f"GLIA_FAULT_TEST_TOKEN={token}", grace=60.0)
    for pid in orphans:  # started by the killed run, so by this test: ours to stop
        os.kill(pid, signal.SIGKILL)
    return res.returncode, secs, orphans


@pytest.mark.parametrize("orchestrator", ["plain", "prefect"])
def test_plain_cli_subprocess_killed(lab: Lab, orchestrator: str) -> None:
    """``python -m glia.cli.main run`` (as plain Python, or through the flow with Prefect's
    default embedded server), killed in the middle of its commit: exit -9, nothing visible, and
    the rerun completes identically."""
    lab.restore(1)
    log = lab.base / "logs" / f"plain-cli-{orchestrator}.log"
    rc, secs, orphans = _killed_cli(lab.base, lab.work / "shards", lab.db, lab.rules, orchestrator, log)
    assert rc == KILLED, log.read_text()
    assert differences(lab.dump().db, lab.reference[1].db) == []
    rc, secs_rerun, out = lab.glia_run(f"n2-plain-cli-{orchestrator}-rerun")
    assert rc == 0, out
    got = lab.dump()
    assert differences(got.db, lab.reference[2].db) == []
    assert differences(got.disk, lab.reference[2].disk) == []
    lab.report.append({"night": 2, "fault": f"commit.mid@1 (plain `python -m glia.cli.main run --orchestrator {orchestrator}`)",
                       "killed_after_seconds": round(secs, 2), "rerun_seconds": round(secs_rerun, 2),
                       "identical_to_uninterrupted": True, "processes_left_running_by_the_killed_run": len(orphans)})


@pytest.mark.parametrize("orchestrator", ["plain", "prefect"])
def test_killed_cli_leaves_no_process_behind(tmp_path: Path, orchestrator: str) -> None:
    """Nothing a ``glia run`` starts outlives it when it is killed: through the flow, Prefect's
    embedded server gets SIGTERM from the kernel when its parent dies (flows.deathsig)."""
    shard = sorted(NIGHTS[1].glob("*.parquet"))[0]
    (tmp_path / "shards").mkdir()
    pq.write_table(pq.read_table(shard).slice(0, ROWS_PER_SHARD), tmp_path / "shards" / shard.name)
    log, prefect_home = tmp_path / "glia-run.log", tmp_path / "prefect"
    rc, _, orphans = _killed_cli(tmp_path, tmp_path / "shards", tmp_path / "glia.duckdb", None, orchestrator, log,
                                 PREFECT_HOME=str(prefect_home))
    assert rc == KILLED, log.read_text()  # it reached its commit
    # Through the flow, Prefect's embedded server ran (it made its database in this fresh home).
    assert (prefect_home / "prefect.db").exists() == (orchestrator == "prefect")
    assert orphans == [], f"processes left running by the killed glia run: {orphans}"
