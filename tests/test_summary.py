"""``glia run`` prints the night in a couple of dozen lines a person reads (documents, duplicates,
what each rule term fired for, pruned / protected / replayed, time); ``--verbose`` and
``glia status --run N`` print every count the night recorded."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import NIGHTS, cli_env, query

# Every tagger and stage that needs no model: the summary's groups all have something to say.
RULES = """[run]
taggers = ["exact", "minhash", "quality", "staleness", "pii"]
stages = ["dedup", "decide", "replay"]
[stages.replay]
size = 300
[stages.decide]
prune_if_any = ["exact_dup", "near_dup"]
"""


def _glia(args: list[str], cwd: Path, columns: int = 100) -> subprocess.CompletedProcess:
    env = {**cli_env(), "COLUMNS": str(columns)}  # a common terminal width: wrapped lines count too
    return subprocess.run([sys.executable, "-m", "glia.cli.main", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def two_nights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], list[str]]:
    """Nights 1 and 2 through the real CLI: the default and the --verbose printouts of night 2."""
    base = tmp_path_factory.mktemp("summary")
    (base / "rules.toml").write_text(RULES)
    shards = base / "shards"
    shards.mkdir()
    outs = []
    for n, extra in ((1, []), (2, ["--verbose"])):
        shutil.copytree(NIGHTS[n], shards / f"night{n}")
        res = _glia(["run", str(shards), "--db", "glia.duckdb", "--rules", "rules.toml", "-q", *extra], base)
        assert res.returncode == 0, res.stdout + res.stderr
        outs.append(res.stdout.splitlines())
    return base, outs[0], outs[1]


def test_the_default_summary_fits_in_25_lines_with_every_group(two_nights: tuple[Path, list[str], list[str]]) -> None:
    base, night1, _ = two_nights
    assert len(night1) <= 25, "\n".join(night1)
    text = "\n".join(night1)
    for group in ("documents", "shards", "duplicates", "rule terms fired", "pruned", "protected", "replayed", "time"):
        assert any(line.split("  ")[0].strip() == group for line in night1), (group, text)
    docs, exact, near = query(base / "glia.duckdb", "SELECT n_docs, n_exact_dups, n_near_dups FROM v_runs WHERE run_id = 1")[0]
    assert f"{docs:,} new tonight" in text and f"{exact:,} exact · {near:,} near" in text
    fired = dict(query(base / "glia.duckdb", "SELECT metric, value FROM run_metrics WHERE run_id = 1 AND metric LIKE 'decide.fired.%'"))
    assert fired and all(f"{m.removeprefix('decide.fired.')} {int(v):,}" in text for m, v in fired.items())
    assert "Every count: glia run --verbose, or glia status --run 1" in text
    assert "failed" not in text and "docs_with_pii" not in text  # taggers' own counts wait for --verbose


def test_verbose_prints_every_recorded_count(two_nights: tuple[Path, list[str], list[str]]) -> None:
    base, _, night2 = two_nights
    rows = query(base / "glia.duckdb", "SELECT metric, value FROM run_metrics WHERE run_id = 2 "
                                       "AND split_part(metric, '.', 1) NOT IN ('seconds', 'summary')")
    assert len(rows) > 25
    cells = [" ".join(line.replace("│", " ").split()) for line in night2]
    for metric, _ in rows:
        owner, _, what = metric.partition(".")
        assert owner in cells and any(c.startswith(what + " ") for c in cells), metric


def test_status_run_n_shows_the_summary_and_every_count_again(two_nights: tuple[Path, list[str], list[str]]) -> None:
    base, _, night2 = two_nights
    res = _glia(["status", "--run", "2", "--db", "glia.duckdb"], base)
    assert res.returncode == 0, res.stderr
    shown = res.stdout.splitlines()
    # Everything but the wall time and the closing notes of the run itself.
    same = [line for line in night2 if line.strip() and not line.lstrip().startswith("time")]
    assert [line for line in shown if line.strip() and not line.lstrip().startswith("time")] == same
    missing = _glia(["status", "--run", "7", "--db", "glia.duckdb"], base)
    assert missing.returncode == 1 and "has no run 7 (runs 1 to 2)" in " ".join(missing.stdout.split())
