"""Nothing destructive: no code path deletes, rewrites or writes beside a source shard.

The real check is on the bytes: every file under the shard folder is hashed (sha256) and
stat-ed (size, mtime, inode) before three nights, a rerun, a manifest export and an undo, all
with the decide stage applying prunes, and again after; nothing may differ and nothing may
appear or vanish. While those run, a Python audit hook records every open-for-writing,
remove, rename, truncate, chmod, utime, mkdir and rmtree anywhere under the shard folder and
fails on any (pyarrow's and DuckDB's own C++ writes raise no audit event: the hashes cover
them). A last, weaker tripwire scans the code for write or delete calls aimed at a shard's
path.
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
import shutil
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from conftest import NIGHTS, REPO, query, run_night

# Pruning applied within the three nights: every duplicate is queued for pruning, quarantined
# at once and applied one night later (the cap is off, so nothing is held back).
PRUNE_RULES = """
[run]
stages = ["dedup", "decide"]

[stages.decide]
keep_if_any = []
prune_if_any = ["exact_dup", "near_dup"]

[stages.decide.cap]
night = 1.0
source = 1.0

[stages.decide.lifecycle]
quarantine_after = 0
apply_after = 1
"""

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
# Audit events that change a file or folder; the first argument is the path.
CHANGING_EVENTS = {"os.remove", "os.rename", "os.rmdir", "os.truncate", "os.chmod", "os.chown", "os.utime",
                   "os.link", "os.symlink", "os.mkdir", "shutil.rmtree", "shutil.move", "shutil.copyfile",
                   "shutil.copytree"}


class WriteWatch:
    """A process-wide audit hook (hooks cannot be removed: it is armed and disarmed instead)
    that records changes under one folder, from any thread."""

    _installed: WriteWatch | None = None

    def __init__(self) -> None:
        self.root: str | None = None
        self.hits: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    @classmethod
    def get(cls) -> WriteWatch:
        if cls._installed is None:
            cls._installed = WriteWatch()
            sys.addaudithook(cls._installed._hook)
        return cls._installed

    def _under(self, p: Any) -> str | None:
        if isinstance(p, int) or p is None:
            return None
        try:
            path = os.path.abspath(os.fsdecode(p))
        except TypeError:
            return None
        root = self.root
        return path if root and (path == root or path.startswith(root + os.sep)) else None

    def _hook(self, event: str, args: tuple) -> None:
        if self.root is None:
            return
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None))[:3]
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & WRITE_FLAGS)
            targets = [path] if writes else []
        elif event in CHANGING_EVENTS:
            targets = list(args[:2]) if event in ("os.rename", "shutil.move", "shutil.copyfile", "shutil.copytree") \
                else [args[0]] if args else []
            if event in ("shutil.copyfile", "shutil.copytree"):
                targets = targets[1:]  # reading a shard to copy it elsewhere is fine
        else:
            return
        for t in targets:
            hit = self._under(t)
            if hit:
                with self._lock:
                    self.hits.append((event, hit))


def fingerprint(root: Path) -> dict[str, tuple]:
    """relative path -> (sha256, size, mtime_ns, inode) of every file, (dir) for folders."""
    out: dict[str, tuple] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        st = p.stat()
        if p.is_dir():
            out[rel] = ("dir",)
        else:
            out[rel] = (hashlib.sha256(p.read_bytes()).hexdigest(), st.st_size, st.st_mtime_ns, st.st_ino)
    return out


def test_runs_with_pruning_never_touch_a_source_shard(tmp_path: Path) -> None:
    root = tmp_path / "shards"
    root.mkdir()
    db = tmp_path / "db" / "glia.duckdb"
    rules = tmp_path / "rules.toml"
    rules.write_text(PRUNE_RULES)
    watch = WriteWatch.get()
    watch.hits.clear()
    expected: dict[str, tuple] = {}
    outcomes = []

    def watched(fn, *args, **kwargs):
        watch.root = str(root.resolve())
        try:
            return fn(*args, **kwargs)
        finally:
            watch.root = None

    for n in (1, 2, 3, 3):  # the folder grows by a night at a time; then a rerun with nothing new
        if not (root / f"night{n}").exists():
            shutil.copytree(NIGHTS[n], root / f"night{n}")
            expected = fingerprint(root) | expected  # what was there keeps its first fingerprint
        outcomes.append(watched(run_night, root, db, rules=rules))
    from glia.storage.prune_queue import export_manifest, undo

    watched(export_manifest, db, tmp_path / "export" / "manifest.parquet")
    watched(undo, db, reason="exact_dup_of")
    assert [o.status for o in outcomes] == ["completed", "completed", "completed", "nothing_new"]
    assert watch.hits == [], f"writes, deletes or renames under the shard folder: {watch.hits[:10]}"
    assert len([v for v in expected.values() if v[0] != "dir"]) == 7
    assert fingerprint(root) == expected
    # Pruning really was applied (and partly undone), so those code paths ran.
    statuses = dict(query(db, "SELECT to_status, count(*) FROM prune_events GROUP BY 1"))
    assert statuses.get("applied", 0) > 0 and statuses.get("restored", 0) > 0, statuses


def test_the_watch_sees_writes_under_the_folder(tmp_path: Path) -> None:
    """The audit hook is not blind: writing, renaming and deleting under the folder are seen,
    reading is not, and nothing outside the folder is."""
    (tmp_path / "in").mkdir()
    shard = tmp_path / "in" / "a.parquet"
    shard.write_bytes(b"x")
    watch = WriteWatch.get()
    watch.hits.clear()
    watch.root = str((tmp_path / "in").resolve())
    try:
        shard.read_bytes()
        (tmp_path / "out.txt").write_text("fine")
        with shard.open("ab") as fh:
            fh.write(b"y")
        os.replace(shard, tmp_path / "in" / "b.parquet")
        (tmp_path / "in" / "b.parquet").unlink()
    finally:
        watch.root = None
    assert [e for e, _ in watch.hits] == ["open", "os.rename", "os.rename", "os.remove"], watch.hits


# -- the tripwire over the code ---------------------------------------------------------------

PACKAGES = ("curation", "flows", "storage", "taggers")
WRITE_CALLS = {"write_table", "ParquetWriter", "write_atomic", "unlink", "remove", "rmtree", "replace", "rename",
               "write_text", "write_bytes", "rm", "touch", "truncate", "chmod", "utime", "move", "copyfile", "copy",
               "copy2", "write_dataset", "to_parquet"}
SHARD_PATH = re.compile(r"\bshards_root\b|\bshard\.path\b|\bshard_path\b|\bspec\.shard\b|\bShardFile\b")


def _call_name(node: ast.Call) -> str:
    f = node.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def _writes(node: ast.Call) -> bool:
    name = _call_name(node)
    if name == "open":
        mode = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "mode"), None)
        return isinstance(mode, ast.Constant) and isinstance(mode.value, str) and any(c in mode.value for c in "wax+")
    return name in WRITE_CALLS


def _aimed_at_a_shard(node: ast.AST) -> bool:
    """A write or delete call whose receiver or arguments name a source shard's path."""
    if not (isinstance(node, ast.Call) and _writes(node)):
        return False
    target = ast.unparse(node.func.value) if isinstance(node.func, ast.Attribute) else ""
    args = " ".join(ast.unparse(a) for a in [*node.args, *(k.value for k in node.keywords)])
    return bool(SHARD_PATH.search(f"{target} {args}"))


def test_no_write_or_delete_call_is_aimed_at_a_shard_path() -> None:
    offenders = []
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if _aimed_at_a_shard(node):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)[:120]}")
    assert offenders == [], "write/delete calls that name a source shard's path:\n" + "\n".join(offenders)


@pytest.mark.parametrize("snippet", ["open(shard.path, 'wb')", "Path(spec.shard.path).unlink()",
                                     "pq.write_table(t, shard_path)", "os.replace(tmp, shards_root)"])
def test_tripwire_catches_a_planted_offender(snippet: str) -> None:
    assert _aimed_at_a_shard(ast.parse(snippet).body[0].value)
