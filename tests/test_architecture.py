"""The worked examples of docs/ARCHITECTURE.md run: a tagger and a stage added exactly as the
page shows take part in a real night, and the command example is the real ``glia status``."""

from __future__ import annotations

import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import NIGHTS, query, run_night
from glia.cli.main import EXIT_OK, main
from glia.core import progress
from glia.stages import registry as stage_registry
from glia.taggers import registry

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "ARCHITECTURE.md"


def _examples() -> dict[str, str]:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    out = {}
    for block in blocks:
        first = block.splitlines()[0]
        m = re.match(r"# example: (\w+)", first)
        if m:
            out[m.group(1)] = block
    return out


def _load(code: str, name: str) -> dict[str, object]:
    """The example as a module of its own, as if it were the file the page names."""
    module = types.ModuleType(f"architecture_example_{name}")
    sys.modules[module.__name__] = module  # dataclasses and get_type_hints look the module up
    exec(compile(code, f"{DOC}:{name}", "exec", dont_inherit=True), module.__dict__)
    return module.__dict__


@pytest.fixture
def registered() -> Iterator[None]:
    examples = _examples()
    tagger = _load(examples["tagger"], "tagger")["WordCountTagger"]
    stage = _load(examples["stage"], "stage")["SourceShareStage"]
    registry.register("word_count", tagger)
    stage_registry.register("source_share", stage)
    try:
        yield
    finally:  # the registries are process-wide: leave them as other tests expect
        registry.TAGGERS.unregister("word_count")
        stage_registry.STAGES.unregister("source_share")


class StepOrder:
    """A progress reporter (core.progress) that records the order in which a night's steps finish."""

    def __init__(self) -> None:
        self.finished: list[str] = []

    def start(self, stage: str, total: int) -> None:
        pass

    def advance(self, stage: str, n: int = 1) -> None:
        self.finished.append(stage)


def test_the_tagger_and_stage_examples_run_in_a_night(registered: None, tmp_path: Path) -> None:
    rules = tmp_path / "glia.toml"
    rules.write_text('[run]\ntaggers = ["exact", "minhash", "word_count"]\nstages = ["source_share", "dedup"]\n'
                     '[taggers.word_count]\nmin_words = 120\n')
    db = tmp_path / "glia.duckdb"
    order = StepOrder()
    progress.install(order)
    try:
        out = run_night(NIGHTS[1], db, rules)
    finally:
        progress.install(None)
    assert out.status == "completed"
    rows = query(db, "SELECT count(*), count(n_words), sum(short::INT), count(source_share), max(abs(source_share - "
                     "want)) FROM (SELECT *, count(*) OVER (PARTITION BY coalesce(source, '(none)')) / count(*) OVER () "
                     "AS want FROM v_documents)")[0]
    n, n_words, n_short, n_share, worst = rows
    assert n == n_words == n_share and 0 < n_short < n
    assert worst < 1e-6  # each document carries its source's share of the night
    n_sources = query(db, "SELECT count(DISTINCT coalesce(source, '(none)')) FROM v_documents")[0][0]
    metrics = dict(query(db, "SELECT metric, value FROM run_metrics WHERE run_id = 1"))
    assert metrics["word_count.short"] == n_short and metrics["word_count.docs"] == n
    assert metrics["source_share.sources"] == n_sources
    # Listed first, the stage still ran after dedup, which it reads (stages run one at a time).
    stages_done = [s for s in order.finished if s in ("dedup", "source_share")]
    assert stages_done == ["dedup", "source_share"]


def test_glia_run_prints_a_new_taggers_and_stages_counts(registered: None, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """``glia run --verbose`` lists every <tagger>.* and <stage>.* metric without knowing their names."""
    rules = tmp_path / "glia.toml"
    rules.write_text('[run]\ntaggers = ["exact", "minhash", "word_count"]\nstages = ["dedup", "source_share"]\n')
    assert main(["run", str(NIGHTS[1]), "--db", str(tmp_path / "glia.duckdb"), "--rules", str(rules), "-q",
                 "--verbose"]) == EXIT_OK
    out = capsys.readouterr().out
    lines = [" ".join(line.replace("│", " ").split()) for line in out.splitlines()]
    for owner, count in (("word_count", "short"), ("word_count", "docs 1500"), ("source_share", "sources"),
                         ("dedup", "near_dups")):
        assert owner in lines and any(line.startswith(count) for line in lines), (owner, count, out)
    assert not any(line.startswith("summary") for line in lines)


def test_a_bad_parameter_of_the_example_tagger_names_the_key(registered: None, tmp_path: Path) -> None:
    from glia.engine.config import ConfigError, load_config

    rules = tmp_path / "glia.toml"
    rules.write_text('[run]\ntaggers = ["exact", "minhash", "word_count"]\n[taggers.word_count]\nmin_words = "many"\n')
    with pytest.raises(ConfigError, match=r"\[taggers.word_count\].min_words: expected an integer, got 'many'"):
        load_config(rules)
    rules.write_text('[run]\ntaggers = ["exact", "minhash", "word_count"]\n[taggers.word_count]\nmin_words = 0\n')
    with pytest.raises(ConfigError, match=r"\[taggers.word_count\]: min_words must be >= 1"):
        load_config(rules)


def test_the_command_example_is_glia_status(tmp_path: Path) -> None:
    code = _examples()["command"]
    source = (ROOT / "cli" / "status.py").read_text()
    body = [line for line in code.splitlines()[1:] if line.strip()]
    assert all(line in source for line in body), "docs/ARCHITECTURE.md's command example drifted from cli/status.py"
    db = tmp_path / "glia.duckdb"
    run_night(NIGHTS[1], db)
    assert main(["status", "--db", str(db)]) == EXIT_OK
